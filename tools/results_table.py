"""The paper's tables from test_sccan.py's result files, beside the published figures.

    python -m tools.results_table [FOLDER (default exp/)] [--format terminal|markdown|latex|csv]
                                  [--output FILE] [--figures YAML]

Gathers every result JSON under FOLDER (recursively) and prints, per dataset, the layout of the
paper's Tables 1 and 2: rows backbone x shot, columns folds 0..3, their mean and the FB-IoU mean
(mIoU of several seeds as mean ± std), with the mIoU in the released checkpoints' names, the
paper's figures and the difference. A result of another protocol than the paper's (episode count,
toy data, bbox supports, worker count, a baseline, ...) gets a section of its own, marked and
explained in a note. Missing cells are shown as missing, never as zero. The logic is
evaluation/paper_table.py; the published figures and their sources are
evaluation/published/sccan.yaml. With --format csv the notes go to stderr.
"""
from __future__ import annotations

import argparse
import sys

if not __package__:  # run as a file: the project's packages are not importable that way
    import _as_module  # noqa: F401  (tools/_as_module.py: says how to run it, exits)

from evaluation.paper_table import FORMATS, build_report, collect_results, render
from evaluation.published_figures import PUBLISHED_FIGURES, load_published_figures
from util.cli import add_debug_argument, run_entry_point
from util.io import atomic_write_text, check_output_path


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.results_table", description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="exp",
                        help="the folder holding test_sccan.py's result files, searched recursively (default exp)")
    parser.add_argument("--format", choices=FORMATS, default="terminal", help="default terminal")
    parser.add_argument("--output", metavar="FILE", help="write the table to FILE instead of printing it")
    parser.add_argument("--figures", default=PUBLISHED_FIGURES, metavar="YAML",
                        help="the published figures (default evaluation/published/sccan.yaml)")
    add_debug_argument(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    check_output_path(arguments.output, "--output")  # before reading anything
    figures = load_published_figures(arguments.figures)
    report = build_report(collect_results(arguments.folder), figures)
    text = render(report, arguments.format)
    if arguments.format == "csv":
        sys.stderr.write("".join(f"note: {note}\n" for note in report.notes))
    if arguments.output:
        atomic_write_text(arguments.output, text)
        print(f"results_table: wrote {arguments.output} ({len(report.sections)} table"
              f"{'s' * (len(report.sections) != 1)})", flush=True)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
