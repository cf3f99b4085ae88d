"""SCCAN model package: backbone, SCCA transformer, ASPP, loss, meta learner and builders."""
from model.builder import (build_model, build_optimizers, count_parameters,  # noqa: F401
                           poly_learning_rate)
from model.checkpoint import CheckpointError, load_model_weights  # noqa: F401
from model.sccan import SCCAN  # noqa: F401
