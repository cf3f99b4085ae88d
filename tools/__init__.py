"""Command-line tools around the library, each run as a module from the repository root
(``python -m tools.<name> --help``):

* ``toy_demo``: the README's default run (toy data, training, testing, baselines).
* ``predict``: a trained checkpoint on your own images: masks, probabilities, overlays.
* ``make_toy_dataset``: the seeded toy dataset in the PASCAL layout.
* ``prepare_pascal``: VOC2012 + SBD -> SegmentationClassAug labels and the PASCAL base lists.
* ``prepare_coco``: COCO 2014 instance annotations -> label PNGs and the COCO base lists.
* ``prepare_deepglobe``, ``prepare_isic``, ``prepare_lung``: the published Deepglobe, ISIC2018 and Chest
  X-ray data -> the layouts of PATNet's cross-domain benchmark (``cross_domain_preparation``: what
  they share).
* ``make_configs``: (re)writes or checks the 32 paper configs from one template.
* ``gpu_check``: every check that needs a GPU, in one command and one report.
* ``check_data``: one's own data (class folders or semantic labels) checked before a run, every problem
  at once (``data_checks``: the checks).
* ``results_table``: the paper's tables of the result files under a folder, beside the published figures.
* ``run_grid``: every fold, shot and backbone of a dataset tested (and trained) here, on several GPUs or
  on Slurm, then its table; ``grid`` plans its cells, ``grid_jobs`` runs them (the executors).

The speed benchmarks and the feature probe are in ``benchmarks/``. ``_as_module`` is the guard
every tool imports when it is run as a file instead of as a module. Helpers of the two prepare tools: ``preparation`` (their error type, input lists, base-list
writing, reference counts), ``label_files`` (label PNG writing and validation) and ``parallel``
(one conversion over many files, with a progress bar and worker processes).
"""
