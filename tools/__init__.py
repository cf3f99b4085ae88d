"""Command-line tools around the library, each run as a module from the repository root
(``python -m tools.<name> --help``):

* ``toy_demo``: the README's default run (toy data, training, testing, baselines).
* ``predict``: a trained checkpoint on your own images: masks, probabilities, overlays.
* ``make_toy_dataset``: the seeded toy dataset in the PASCAL layout.
* ``probe_features``: training-free support matching on each backbone level and SCCAN's prior.
* ``prepare_pascal``: VOC2012 + SBD -> SegmentationClassAug labels and the PASCAL base lists.
* ``prepare_coco``: COCO 2014 instance annotations -> label PNGs and the COCO base lists.
* ``make_configs``: (re)writes or checks the 32 paper configs from one template.
* ``bench_model``: seconds per episode (eval forward) of each forward variant, parameter counts.
* ``bench_train``: seconds per training iteration of each variant.
* ``bench_eval``: a toy evaluation with and without the backbone-feature cache.
* ``bench_amp``: bf16 against fp32 on a trained checkpoint.
* ``bench_data``: episodes per second of the data pipeline.

``benchmarking`` holds what the speed benchmarks share. Helpers of the two prepare tools: ``preparation`` (their error type, input lists, base-list
writing, reference counts), ``label_files`` (label PNG writing and validation) and ``parallel``
(one conversion over many files, with a progress bar and worker processes).
"""
