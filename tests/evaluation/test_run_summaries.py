"""The reports of a test run: the seeds' mean and std with their table (summarise_runs), the
TensorBoard scalars of a run (write_run_scalars, write_gfss_scalars), the tables of a run
(few_shot_tables, format_gfss_table), each against values computed here with numpy or written out by hand."""
import numpy as np
import pytest

from evaluation.gfss import format_gfss_table, write_gfss_scalars
from evaluation.protocol import few_shot_tables, summarise_runs, write_run_scalars

RUNS = [dict(seed=321, mIoU=0.5, FB_IoU=0.7, pIoU=0.4, class_IoU=[0.1, 0.9]),
        dict(seed=322, mIoU=0.6, FB_IoU=0.65, pIoU=0.45, class_IoU=[0.2, 1.0]),
        dict(seed=323, mIoU=0.55, FB_IoU=0.8, pIoU=0.35, class_IoU=[0.3, 0.8])]


def test_one_run_has_no_summary():
    assert summarise_runs(RUNS[:1]) == ({}, "")


def test_summary_is_the_sample_mean_and_std_of_the_runs_with_one_row_per_seed():
    summary, table = summarise_runs(RUNS)
    for key in ("mIoU", "FB_IoU", "pIoU"):
        values = np.array([run[key] for run in RUNS])
        assert summary["mean"][key] == pytest.approx(values.mean(), abs=1e-12)
        assert summary["std"][key] == pytest.approx(values.std(ddof=1), abs=1e-12)  # sample std
    lines = table.strip().splitlines()
    assert lines[0] == "| seed | mIoU | FB-IoU | pIoU |"
    assert lines[2:5] == ["| 321 | 0.5000 | 0.7000 | 0.4000 |", "| 322 | 0.6000 | 0.6500 | 0.4500 |",
                          "| 323 | 0.5500 | 0.8000 | 0.3500 |"]
    # mean 0.55 / 0.7167 / 0.4; std 0.05 / 0.0764 / 0.05
    assert lines[5] == "| mean ± std | 0.5500 ± 0.0500 | 0.7167 ± 0.0764 | 0.4000 ± 0.0500 |"


class RecordingWriter:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


def test_run_scalars_name_every_class_by_its_id():
    writer = RecordingWriter()
    write_run_scalars(writer, RUNS[1], class_ids=[6, 9], step=322)
    assert writer.scalars == [("test/mIoU", 0.6, 322), ("test/FB_IoU", 0.65, 322), ("test/pIoU", 0.45, 322),
                              ("test/class_6_IoU", 0.2, 322), ("test/class_9_IoU", 1.0, 322)]


def test_gfss_table_lists_the_classes_then_the_three_means():
    result = dict(class_IoU=[0.125, 0.5, 1.0], mIoU_n=0.25, mIoU_b=0.75, mIoU_t=0.5, episodes=7)
    assert format_gfss_table(result, title="merge base").splitlines() == [
        "### merge base", "| class | IoU |", "|---|---|", "| 1 | 0.1250 |", "| 2 | 0.5000 |", "| 3 | 1.0000 |",
        "| **mIoU_n** | 0.2500 |", "| **mIoU_b** | 0.7500 |", "| **mIoU_t** | 0.5000 |", "| episodes | 7 |"]
    assert format_gfss_table(result).splitlines()[0] == "| class | IoU |"  # no title line


def test_gfss_scalars_are_the_three_means():
    writer = RecordingWriter()
    result = dict(class_IoU=[0.125, 0.5, 1.0], mIoU_n=0.25, mIoU_b=0.75, mIoU_t=0.5, episodes=7)
    write_gfss_scalars(writer, result, class_ids=[1, 2], step=321)
    assert writer.scalars == [("test_gfss/mIoU_n", 0.25, 321), ("test_gfss/mIoU_b", 0.75, 321),
                              ("test_gfss/mIoU_t", 0.5, 321)]


def test_an_ensemble_run_prints_one_table_per_named_output():
    single = dict(class_IoU=[0.5, 0.25], mIoU=0.375, FB_IoU=0.5, pIoU=0.25, episodes=4)
    plain = few_shot_tables(single, [6, 9], "run, seed 321").splitlines()
    assert plain[0] == "### run, seed 321" and "| 6 | 0.5000 |" in plain and "| 9 | 0.2500 |" in plain
    other = dict(single, class_IoU=[1.0, 0.0], mIoU=0.5)
    both = few_shot_tables(dict(single, outputs={"ensemble": single, "meta": other}), [6, 9], "run").splitlines()
    assert [line for line in both if line.startswith("###")] == ["### run (ensemble)", "### run (meta)"]
    assert "| 6 | 1.0000 |" in both and "| 6 | 0.5000 |" in both
