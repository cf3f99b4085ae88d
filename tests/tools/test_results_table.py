"""python -m tools.results_table: the table of a result folder on stdout or in a file, the notes of
a CSV on stderr, and every user mistake (a missing folder, a folder without results, an unknown
format, an output that cannot be written, a broken figure file) as one line ``error: ...`` with
exit status 2."""
import json
import subprocess
import sys

import pytest

from tests.support import REPOSITORY_ROOT
from tools import results_table
from util.cli import run_entry_point

TITLE = "PASCAL-5i: the paper's protocol (Table 1, rows †: PFENet's test resize, test_sccan.py's default)"


@pytest.fixture
def folder(tmp_path):
    """One result: PASCAL-5i fold 2, ResNet-101, 1-shot, the paper's protocol."""
    result = tmp_path / "exp" / "pascal" / "SCCAN" / "split2" / "resnet101" / "result" / "test_1shot.json"
    result.parent.mkdir(parents=True)
    result.write_text(json.dumps(dict(
        config="config/pascal/pascal_split2_resnet101.yaml", weights="train_epoch_36_0.6629.pth",
        class_ids=[11, 12, 13, 14, 15], test_num=1000, hsnet_resize=False,
        runs=[dict(mIoU=0.6629, FB_IoU=0.77, pIoU=0.6, class_IoU=[0.6629] * 5, episodes=1000, seed=321)])))
    return tmp_path / "exp"


def legend(folder):
    return (f"mIoU and FB-IoU in %. ours: 1 result file of test_sccan.py under {folder} (paths below relative to "
            "it); released: the mIoU in the name of the authors' released checkpoint; paper: the paper's Table 1 "
            "(PASCAL-5i) and Table 2 (COCO-20i); Δ: ours - paper; mean and FB-IoU: over folds 0-3, only when all "
            "four are there. The source of every published figure: evaluation/published/sccan.yaml")


def test_markdown_on_stdout(folder, capsys):
    assert run_entry_point(results_table.main, [str(folder), "--format", "markdown"]) == 0
    assert capsys.readouterr().out == f"""### {TITLE}

| backbone | shot | | fold 0 | fold 1 | fold 2 | fold 3 | mean | FB-IoU |
|---|---|---|---:|---:|---:|---:|---:|---:|
| ResNet-101 | 1 | ours | — | — | 66.29 | — | — | — |
|  |  | released | 69.07 | 73.97 | 66.29 | 61.58 | — | — |
|  |  | paper | 69.1 | 74.0 | 66.3 | 61.6 | 67.7 | 77.3 |
|  |  | Δ | — | — | -0.01 | — | — | — |

- {legend(folder)}
"""


def test_csv_to_a_file_with_the_notes_on_stderr(folder, tmp_path, capsys):
    output = tmp_path / "tables" / "pascal.csv"
    assert run_entry_point(results_table.main, [str(folder), "--format", "csv", "--output", str(output)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"results_table: wrote {output} (1 table)\n"
    assert captured.err == f"note: {legend(folder)}\n"
    protocol = "PASCAL-5i,paper † (PFENet's test resize),ResNet-101,1"
    assert output.read_text(encoding="utf-8") == (
        "dataset,protocol,backbone,shot,row,fold_0,fold_0_std,fold_1,fold_1_std,fold_2,fold_2_std,fold_3,"
        "fold_3_std,mean,fb_iou\n"
        f"{protocol},ours,,,,,66.29,,,,,\n"
        f"{protocol},released,69.07,,73.97,,66.29,,61.58,,,\n"
        f"{protocol},paper,69.1,,74.0,,66.3,,61.6,,67.7,77.3\n"
        f"{protocol},Δ,,,,,-0.01,,,,,\n")


def test_the_default_terminal_table(folder, capsys):
    assert run_entry_point(results_table.main, [str(folder)]) == 0
    assert capsys.readouterr().out == f"""{TITLE}
backbone    shot            fold 0  fold 1  fold 2  fold 3  mean  FB-IoU
ResNet-101  1     ours           —       —   66.29       —     —       —
                  released   69.07   73.97   66.29   61.58     —       —
                  paper       69.1    74.0    66.3    61.6  67.7    77.3
                  Δ              —       —   -0.01       —     —       —

note: {legend(folder)}
"""


def user_error(argv, capsys) -> str:
    assert run_entry_point(results_table.main, argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def test_user_mistakes_are_one_line_errors(folder, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert user_error([str(missing)], capsys) == (f"error: {missing}: no such folder (give the folder holding "
                                                  f"test_sccan.py's result files, e.g. exp/)")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "episodes.json").write_text('{"episodes": []}')
    assert user_error([str(empty)], capsys) == (f"error: {empty}: no few-shot result file of test_sccan.py "
                                                f"under it (1 JSON file looked at)")
    assert user_error([str(folder), "--output", str(tmp_path)], capsys) == (
        f"error: --output {tmp_path}: is a folder, not a file; give a file path")
    figures = tmp_path / "figures.yaml"
    figures.write_text("tables:\n  - {dataset: pascal, layers: 50, shot: 1, resize: pfenet, miou: [1, 2, 3, x], "
                       "miou_mean: null, fb_iou_mean: null, source: here}\n")
    assert user_error([str(folder), "--figures", str(figures)], capsys) == (
        f"error: {figures}: tables[0].miou[3]: expected a number (a percentage) or null, got 'x'")


def test_an_unknown_format_is_argparse_s_error(folder, capsys):
    with pytest.raises(SystemExit) as exit_status:
        results_table.main([str(folder), "--format", "html"])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "error: argument --format: invalid choice: 'html' (choose from 'terminal', 'markdown', 'latex', 'csv')")


def test_the_command_exits_with_status_2_on_a_user_mistake(tmp_path):
    # The real process: status 2 and one error line, for a missing folder and an unknown format.
    for argv, fragment in (([str(tmp_path / "nowhere")], "no such folder"),
                           ([str(tmp_path), "--format", "html"], "invalid choice: 'html'")):
        process = subprocess.run([sys.executable, "-m", "tools.results_table", *argv], cwd=REPOSITORY_ROOT,
                                 capture_output=True, text=True, timeout=300)
        assert process.returncode == 2, process.stderr
        last = process.stderr.strip().splitlines()[-1]
        assert "error: " in last and fragment in last and "Traceback" not in process.stderr
