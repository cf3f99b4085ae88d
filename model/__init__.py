"""SCCAN's networks: the frozen backbone, the SCCA transformer, ASPP, the loss, the meta learner,
BAM's base learner and ensemble, and the checks of weight files. Every module takes explicit
constructor arguments; nothing here reads a config or imports from the rest of the project
(docs/ARCHITECTURE.md). Configs become models in experiment/models.py."""
from model.checkpoint import CheckpointError, load_model_weights  # noqa: F401
from model.parameters import count_parameters  # noqa: F401
from model.sccan import SCCAN  # noqa: F401

# Names that code written for earlier versions imports from here, and the modules that hold them
# now: they read configs (experiment/) or belong to training (engine/), which sit above this
# package, so they are looked up on first use instead of imported here.
_MOVED = {"build_model": "experiment.models", "build_optimizers": "engine.optimization",
          "poly_learning_rate": "engine.optimization"}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
