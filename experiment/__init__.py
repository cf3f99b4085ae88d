"""From a config to the objects of a run: the model (``models``), the datasets, loaders and
output folders (``build``), and the training state a checkpoint carries besides its weights
(``checkpoints``). The one place that reads config keys to construct things; it sits above
``model`` and ``util`` and below ``evaluation`` and ``engine`` (docs/ARCHITECTURE.md)."""
