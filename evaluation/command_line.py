"""The command line of the test script (test_sccan.py): which checkpoint, how many seeds and
episodes, which outputs, which predictor."""
from __future__ import annotations

from evaluation.baselines import add_predictor_arguments
from util.cli import positive_int
from util.config import config_argparser

__all__ = ["evaluation_argument_parser"]


def evaluation_argument_parser():
    """The command line of test_sccan.py: the shared config options (``--config``, ``--opts``,
    ``--debug``) and the test's own."""
    parser = config_argparser("Test SCCAN (few-shot evaluation protocol)")
    add = parser.add_argument
    add("--weight", help="checkpoint (released training checkpoint or bare state_dict); default "
        "exp/<dataset>/SCCAN/split<i>/resnet<L>/snapshot/<config weight>")
    add("--seeds", type=positive_int, default=1, help="N runs with seeds 321, 322, ...: rows, mean and std")
    add("--episodes", type=positive_int, help="override test_num")
    add("--viz", action="store_true", help="TensorBoard event files in <exp>/tensorboard_<K>shot/test/")
    add("--save-vis", metavar="DIR", help="one PNG panel per episode of the first seed's run (named by "
        "episode, class and IoU) and DIR/index.html, the episodes sorted by IoU, worst first")
    add("--dump-episodes", metavar="FILE", help="write the first run's exact episodes as JSON")
    add("--episodes-from", metavar="FILE", help="evaluate exactly the episodes of FILE")
    add("--hsnet-resize", action="store_true", help="HSNet-style test: inputs resized to val_size squared, "
        "logits to the original label (the paper's double-dagger rows)")
    add("--output", metavar="JSON", help="result file (default <exp>/result/test_<weight>_<K>shot.json)")
    add("--gfss", action="store_true", help="BAM's generalised few-shot test (needs base_learner: True): every "
        "val image as a query, its base classes and one novel class; merge and merge_tau from the config")
    add_predictor_arguments(parser)
    return parser
