"""Speed benchmarks and probes, each run as a module from the repository root (``python -m
benchmarks.<name> --help``); BENCHMARKS.md records what they measured:

* ``bench_model``: seconds per episode (eval forward) of each forward variant, parameter counts.
* ``bench_train``: seconds per training iteration of each variant.
* ``bench_eval``: a toy evaluation with and without the backbone-feature cache.
* ``bench_amp``: bf16 against fp32 on a trained checkpoint.
* ``bench_data``: episodes per second of the data pipeline.
* ``probe_features``: training-free support matching on each backbone level and SCCAN's prior.

``benchmarking`` holds what they share.
"""
