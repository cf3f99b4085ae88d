"""Mutation testing (mutmut 3) of the modules where a silent error changes results.

    pip install "mutmut>=3.8,<4"
    python -m tests.run_mutation metrics            # one target (names below), or several, or all
    python -m tests.run_mutation all --work /tmp/mutation

For each target: a copy of the committed files (HEAD) in ``<work>/<target>`` (mutmut writes
its ``mutants/`` folder there, never into the checkout), a ``setup.cfg`` naming the file to
mutate and the test files that cover it, ``mutmut run`` on the target's functions, then one line
per target: mutants killed / all, the score, the survivors by name (``mutmut show NAME`` in that
folder shows the change). Outside the default suite: it takes minutes to an hour per target on
2 cores. docs/TESTING.md records the scores and why each survivor is equivalent.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Target:
    path: str  # the file to mutate
    functions: tuple  # glob patterns of its function names (mutmut's x_<name> / xǁClassǁmethod)
    tests: tuple  # the test files that cover it
    keyword: str = ""  # pytest -k: only these tests of those files (the rest build whole models)


TARGETS = {
    "ensemble": Target("model/ensemble.py", ("*",),
                       ("tests/model/test_ensemble.py", "tests/model/test_ensemble_parity.py")),
    "metrics": Target("evaluation/metrics.py", ("*",), ("tests/evaluation/test_metrics.py",)),
    "prior": Target("model/sccan.py", ("x_prior_mask*",),
                    ("tests/model/test_parity.py", "tests/model/test_fast_path.py"), keyword="prior"),
    # The keyword selects test_transformer.py, the transformer's own parity test and the fast
    # path's block and attention tests: the whole-model parity tests build two ResNets per
    # mutant (about 8 s each on 2 cores).
    "alignment": Target("model/transformer.py", ("*",),
                        ("tests/model/test_transformer.py", "tests/model/test_parity.py",
                         "tests/model/test_fast_path.py"), keyword="transformer or block or scca"),
    "episodes": Target("util/dataset.py", ("*",),
                       ("tests/util/test_dataset_episodes.py", "tests/util/test_dataset_lists.py",
                        "tests/util/test_dataset_base_label.py", "tests/util/test_base_dataset.py",
                        "tests/util/test_fss_list_cache.py", "tests/util/test_shipped_lists.py")),
    # The mapping of a prediction back to the user's image (the target) and the threshold;
    # each mutant of the rest (file reading, checkpoint loading) would cost a model build.
    "predictor": Target("evaluation/predictor.py",
                        ("x_logits_to_original*", "x__logit*", "x_support_label*",
                         "xǁPredictorǁ_frame*", "xǁPredictorǁprepare_query*", "xǁPredictorǁpredict*"),
                        ("tests/evaluation/test_predictor.py",)),
}


def prepare(target: Target, folder: str) -> None:
    """A copy of the committed files (HEAD: never a half-edited working tree) with the mutmut
    configuration of ``target``."""
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=REPOSITORY, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    package = target.path.split("/")[0]
    entries = sorted(os.listdir(folder))  # what HEAD holds at its top level
    others = [name for name in entries if os.path.isdir(os.path.join(folder, name)) and name not in (package, "tests")]
    top_level = [name for name in entries if os.path.isfile(os.path.join(folder, name))]
    lines = ["[mutmut]", f"source_paths = {package}", f"only_mutate = {target.path}",
             "also_copy =", *[f"    {name}" for name in others + top_level],
             "pytest_add_cli_args =", "    -p", "    no:xdist", "    -p", "    no:cacheprovider",
             "    -o", "    addopts=", "    -q",
             "pytest_add_cli_args_test_selection =", *[f"    {name}" for name in target.tests],
             *(["    -k", f"    {target.keyword}"] if target.keyword else [])]
    with open(os.path.join(folder, "setup.cfg"), "w") as handle:
        handle.write("\n".join(lines) + "\n")


def results(folder: str) -> dict:
    """``{mutant name: status}`` as ``mutmut results --all true`` lists them."""
    listed = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=folder,
                            capture_output=True, text=True, check=True)
    found = {}
    for line in listed.stdout.splitlines():
        match = re.match(r"\s+(\S+): (.+)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def run_target(name: str, target: Target, work: str, max_children: int) -> dict:
    folder = os.path.join(work, name)
    prepare(target, folder)
    module = target.path[:-3].replace("/", ".")
    patterns = [f"{module}.{pattern}" for pattern in target.functions]
    start = time.time()
    # mutmut forks a warm pytest per mutant: a fork of a process whose OpenMP pool has started
    # can hang in its first parallel region (seen here: mutants stalled at 0% CPU until the
    # timeout). One thread per process keeps the pool from ever starting.
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(os.path.join(folder, "mutmut-run.log"), "w") as log:  # mutmut's progress, per mutant
        subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *patterns],
                       cwd=folder, env=environment, stdout=log, stderr=subprocess.STDOUT, check=False)
    statuses = {mutant: status for mutant, status in results(folder).items()
                if any(fnmatch.fnmatch(mutant, pattern) for pattern in patterns)}
    killed = sum(status == "killed" for status in statuses.values())
    survivors = sorted(mutant for mutant, status in statuses.items() if status != "killed")
    return dict(target=name, path=target.path, killed=killed, total=len(statuses),
                score=killed / len(statuses) if statuses else float("nan"), survivors=survivors,
                statuses={mutant: statuses[mutant] for mutant in survivors},
                minutes=(time.time() - start) / 60, folder=folder)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="+", choices=[*TARGETS, "all"])
    parser.add_argument("--work", default=os.path.join(REPOSITORY, ".mutation"),
                        help="folder for the copies and mutmut's state (default .mutation/, ignored by git)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    arguments = parser.parse_args(argv)
    names = list(TARGETS) if "all" in arguments.targets else arguments.targets
    for name in names:
        row = run_target(name, TARGETS[name], arguments.work, arguments.max_children)
        print(f"{row['target']} ({row['path']}): {row['killed']}/{row['total']} killed, "
              f"score {row['score']:.1%}, {row['minutes']:.1f} min; folder {row['folder']}")
        for mutant in row["survivors"]:
            print(f"    {mutant}: {row['statuses'][mutant]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
