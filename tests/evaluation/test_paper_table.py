"""evaluation/paper_table.py and evaluation/published_figures.py: hand-made result files (a
missing fold, a multi-seed cell, a non-paper-protocol cell, two results for one cell, the ‡
protocol) give the hand-written tables in every format; what newer results record (the resolved
config, the predictor, when the run finished) places them, and older results still work; the
published-figure file parses, every figure has a source, and a broken file is refused with the
file and the key named."""
import json
import os
from decimal import ROUND_HALF_UP, Decimal

import pytest
import yaml

from evaluation.paper_table import (FORMATS, Collection, build_report, collect_results, protocol_deviations,
                                    read_result, render)
from evaluation.published_figures import (PUBLISHED_FIGURES, PublishedFiguresError, load_published_figures)
from tests.support import REPOSITORY_ROOT
from tools.make_configs import RELEASED_WEIGHTS
from util.cli import UserError
from util.config import load_config

PASCAL = "config/pascal/pascal_split{}_resnet50{}.yaml"
COCO_R101_5S = "config/coco/coco_split0_resnet101_5s.yaml"


def write_result(folder, name, config, runs, test_num=1000, hsnet_resize=False, weights="checkpoint.pth",
                 class_ids=None, **recorded):
    """A result file as test_sccan.py writes it; ``runs``: (mIoU, FB-IoU, seed) per seed;
    ``recorded``: what newer versions record besides (config_values, predictor, finished_at)."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(
        config=config, weights=weights, class_ids=class_ids, test_num=test_num, hsnet_resize=hsnet_resize,
        runs=[dict(mIoU=miou, FB_IoU=fb_iou, pIoU=0.5, class_IoU=[miou] * 5, accuracy=0.9, episodes=test_num,
                   seconds=1.0, episodes_here=test_num, seed=seed) for miou, fb_iou, seed in runs], **recorded)))
    return path


@pytest.fixture
def results(tmp_path):
    """PASCAL ResNet-50: 1-shot folds 0, 1 (three seeds) and 3 (two files), fold 2 missing; 5-shot
    all four folds; 1-shot fold 0 again with 500 episodes (not the paper's protocol). COCO
    ResNet-101 5-shot fold 0 with HSNet's resize (‡). An episode file and a generalised test."""
    folder = tmp_path / "exp"
    write_result(folder, "pascal/1shot_fold0.json", PASCAL.format(0, ""), [(0.6753, 0.78, 321)],
                 class_ids=[1, 2, 3, 4, 5])
    write_result(folder, "pascal/1shot_fold0_500.json", PASCAL.format(0, ""), [(0.6012, 0.77, 321)], test_num=500)
    write_result(folder, "pascal/1shot_fold1_seeds.json", PASCAL.format(1, ""),
                 [(0.72, 0.79, 321), (0.725, 0.79, 322), (0.715, 0.79, 323)], class_ids=[6, 7, 8, 9, 10])
    write_result(folder, "a_first/fold3.json", PASCAL.format(3, ""), [(0.61, 0.75, 321)])
    write_result(folder, "b_second/fold3.json", PASCAL.format(3, ""), [(0.60, 0.74, 321)])
    for fold, miou, fb_iou in ((0, 0.70, 0.80), (1, 0.74, 0.80), (2, 0.70, 0.79), (3, 0.66, 0.81)):
        write_result(folder, f"pascal/5shot_fold{fold}.json", PASCAL.format(fold, "_5s"), [(miou, fb_iou, 321)])
    write_result(folder, "coco/hsnet_fold0.json", COCO_R101_5S, [(0.50, 0.75, 321)], test_num=4000,
                 hsnet_resize=True, class_ids=list(range(1, 81, 4)))
    (folder / "episodes.json").write_text(json.dumps({"meta": {}, "episodes": []}))
    (folder / "gfss.json").write_text(json.dumps({"config": PASCAL.format(0, ""), "test": "gfss", "runs": []}))
    return folder


def notes(folder):
    return [
        f"mIoU and FB-IoU in %. ours: 10 result files of test_sccan.py under {folder} (paths below relative to it); "
        "released: the mIoU in the name of the authors' released checkpoint; paper: the paper's Table 1 "
        "(PASCAL-5i) and Table 2 (COCO-20i); Δ: ours - paper; mean and FB-IoU: over folds 0-3, only when all "
        "four are there. The source of every published figure: evaluation/published/sccan.yaml",
        "[1] not the paper's protocol: 500 episodes (paper 1000)",
        "a ± b: the mean and standard deviation of a run's seeds; PASCAL-5i † ResNet-50 1-shot fold 1: 3 seeds "
        "(321, 322, 323)",
        "PASCAL-5i † ResNet-50 1-shot fold 3: 2 results; shown: a_first/fold3.json (the first in path order); "
        "not shown: b_second/fold3.json",
        f"not shown: 1 other JSON file under {folder}, not few-shot test results (episode files, reports, ...)",
        "skipped gfss.json: BAM's generalised test (--gfss), not a few-shot result of the paper's tables",
    ]


PASCAL_TITLE = "PASCAL-5i: the paper's protocol (Table 1, rows †: PFENet's test resize, test_sccan.py's default)"
OTHER_TITLE = "PASCAL-5i: not the paper's protocol [1]"
COCO_TITLE = "COCO-20i: the paper's protocol (Table 2, rows ‡: HSNet's test resize, test_sccan.py --hsnet-resize)"

TERMINAL = f"""{PASCAL_TITLE}
backbone   shot            fold 0        fold 1  fold 2  fold 3   mean  FB-IoU
ResNet-50  1     ours       67.53  72.00 ± 0.50       —   61.00      —       —
                 released   67.53         72.62   67.18   60.53      —       —
                 paper       67.5          72.6    67.2    60.5   67.0    76.4
                 Δ          +0.03         -0.60       —   +0.50      —       —
ResNet-50  5     ours       70.00         74.00   70.00   66.00  70.00   80.00
                 released   69.87         74.25   70.14   66.87      —       —
                 paper       69.9          74.3    70.1    66.9   70.3    79.7
                 Δ          +0.10         -0.30   -0.10   -0.90  -0.30   +0.30

{OTHER_TITLE}
backbone   shot            fold 0  fold 1  fold 2  fold 3  mean  FB-IoU
ResNet-50  1     ours [1]   60.12       —       —       —     —       —

{COCO_TITLE}
backbone    shot         fold 0  fold 1  fold 2  fold 3  mean  FB-IoU
ResNet-101  5     ours    50.00       —       —       —     —       —
                  paper    49.4    61.7    61.9    55.0  57.0    74.8
                  Δ       +0.60       —       —       —     —       —

"""

MARKDOWN = f"""### {PASCAL_TITLE}

| backbone | shot | | fold 0 | fold 1 | fold 2 | fold 3 | mean | FB-IoU |
|---|---|---|---:|---:|---:|---:|---:|---:|
| ResNet-50 | 1 | ours | 67.53 | 72.00 ± 0.50 | — | 61.00 | — | — |
|  |  | released | 67.53 | 72.62 | 67.18 | 60.53 | — | — |
|  |  | paper | 67.5 | 72.6 | 67.2 | 60.5 | 67.0 | 76.4 |
|  |  | Δ | +0.03 | -0.60 | — | +0.50 | — | — |
| ResNet-50 | 5 | ours | 70.00 | 74.00 | 70.00 | 66.00 | 70.00 | 80.00 |
|  |  | released | 69.87 | 74.25 | 70.14 | 66.87 | — | — |
|  |  | paper | 69.9 | 74.3 | 70.1 | 66.9 | 70.3 | 79.7 |
|  |  | Δ | +0.10 | -0.30 | -0.10 | -0.90 | -0.30 | +0.30 |

### {OTHER_TITLE}

| backbone | shot | | fold 0 | fold 1 | fold 2 | fold 3 | mean | FB-IoU |
|---|---|---|---:|---:|---:|---:|---:|---:|
| ResNet-50 | 1 | ours [1] | 60.12 | — | — | — | — | — |

### {COCO_TITLE}

| backbone | shot | | fold 0 | fold 1 | fold 2 | fold 3 | mean | FB-IoU |
|---|---|---|---:|---:|---:|---:|---:|---:|
| ResNet-101 | 5 | ours | 50.00 | — | — | — | — | — |
|  |  | paper | 49.4 | 61.7 | 61.9 | 55.0 | 57.0 | 74.8 |
|  |  | Δ | +0.60 | — | — | — | — | — |

"""

LATEX_HEAD = r"""\begin{tabular}{lllrrrrrr}
\toprule
Backbone & Shot & & Fold 0 & Fold 1 & Fold 2 & Fold 3 & Mean & FB-IoU \\
"""
LATEX = f"% {PASCAL_TITLE}\n" + LATEX_HEAD + r"""\midrule
ResNet-50 & 1 & ours & 67.53 & 72.00 $\pm$ 0.50 & -- & 61.00 & -- & -- \\
 &  & released & 67.53 & 72.62 & 67.18 & 60.53 & -- & -- \\
 &  & paper & 67.5 & 72.6 & 67.2 & 60.5 & 67.0 & 76.4 \\
 &  & $\Delta$ & +0.03 & -0.60 & -- & +0.50 & -- & -- \\
\midrule
ResNet-50 & 5 & ours & 70.00 & 74.00 & 70.00 & 66.00 & 70.00 & 80.00 \\
 &  & released & 69.87 & 74.25 & 70.14 & 66.87 & -- & -- \\
 &  & paper & 69.9 & 74.3 & 70.1 & 66.9 & 70.3 & 79.7 \\
 &  & $\Delta$ & +0.10 & -0.30 & -0.10 & -0.90 & -0.30 & +0.30 \\
\bottomrule
\end{tabular}

""" + f"% {OTHER_TITLE}\n" + LATEX_HEAD + r"""\midrule
ResNet-50 & 1 & ours [1] & 60.12 & -- & -- & -- & -- & -- \\
\bottomrule
\end{tabular}

""" + f"% {COCO_TITLE}\n" + LATEX_HEAD + r"""\midrule
ResNet-101 & 5 & ours & 50.00 & -- & -- & -- & -- & -- \\
 &  & paper & 49.4 & 61.7 & 61.9 & 55.0 & 57.0 & 74.8 \\
 &  & $\Delta$ & +0.60 & -- & -- & -- & -- & -- \\
\bottomrule
\end{tabular}

"""

CSV = ("dataset,protocol,backbone,shot,row,fold_0,fold_0_std,fold_1,fold_1_std,fold_2,fold_2_std,fold_3,fold_3_std,"
       "mean,fb_iou\n") + """PASCAL-5i,paper † (PFENet's test resize),ResNet-50,1,ours,67.53,,72.00,0.50,,,61.00,,,
PASCAL-5i,paper † (PFENet's test resize),ResNet-50,1,released,67.53,,72.62,,67.18,,60.53,,,
PASCAL-5i,paper † (PFENet's test resize),ResNet-50,1,paper,67.5,,72.6,,67.2,,60.5,,67.0,76.4
PASCAL-5i,paper † (PFENet's test resize),ResNet-50,1,Δ,0.03,,-0.60,,,,0.50,,,
PASCAL-5i,paper † (PFENet's test resize),ResNet-50,5,ours,70.00,,74.00,,70.00,,66.00,,70.00,80.00
PASCAL-5i,paper † (PFENet's test resize),ResNet-50,5,released,69.87,,74.25,,70.14,,66.87,,,
PASCAL-5i,paper † (PFENet's test resize),ResNet-50,5,paper,69.9,,74.3,,70.1,,66.9,,70.3,79.7
PASCAL-5i,paper † (PFENet's test resize),ResNet-50,5,Δ,0.10,,-0.30,,-0.10,,-0.90,,-0.30,0.30
PASCAL-5i,[1] not the paper's protocol: 500 episodes (paper 1000),ResNet-50,1,ours [1],60.12,,,,,,,,,
COCO-20i,paper ‡ (HSNet's test resize),ResNet-101,5,ours,50.00,,,,,,,,,
COCO-20i,paper ‡ (HSNet's test resize),ResNet-101,5,paper,49.4,,61.7,,61.9,,55.0,,57.0,74.8
COCO-20i,paper ‡ (HSNet's test resize),ResNet-101,5,Δ,0.60,,,,,,,,,
"""


@pytest.fixture
def report(results):
    return build_report(collect_results(str(results)), load_published_figures())


def test_the_table_in_every_format_is_the_hand_written_one(results, report):
    assert report.notes == tuple(notes(results))
    assert render(report, "terminal") == TERMINAL + "".join(f"note: {note}\n" for note in notes(results))
    assert render(report, "markdown") == MARKDOWN + "".join(f"- {note}\n" for note in notes(results))
    assert render(report, "latex") == LATEX + "".join(f"% note: {note}\n" for note in notes(results))
    assert render(report, "csv") == CSV  # the notes are the command line's to show (stderr)
    assert set(FORMATS) == {"terminal", "markdown", "latex", "csv"}


def test_an_unknown_format_is_a_user_error(report):
    with pytest.raises(UserError, match="unknown format 'html'; expected one of terminal, markdown, latex, csv"):
        render(report, "html")


def test_a_complete_row_has_its_means_and_an_incomplete_one_none(report):
    # Never a zero for a missing fold: its cell and the means that would need it are None.
    ours = report.sections[0].groups[0][0].figures
    assert [figure is None for figure in ours] == [False, False, True, False, True, True]
    complete = report.sections[0].groups[1][0].figures
    assert [round(figure.value, 6) for figure in complete] == [70.0, 74.0, 70.0, 66.0, 70.0, 80.0]


def test_the_first_result_in_path_order_is_shown_whatever_the_walk_order(results):
    collection = collect_results(str(results))
    reordered = Collection(collection.folder, list(reversed(collection.results)), collection.skipped,
                           collection.others)
    figures = load_published_figures()
    assert render(build_report(reordered, figures), "csv") == render(build_report(collection, figures), "csv")


def test_folders_without_results_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        collect_results(str(tmp_path / "missing"))
    (tmp_path / "episodes.json").write_text("{}")
    with pytest.raises(UserError, match=r"no few-shot result file of test_sccan.py under it \(1 JSON file looked "):
        collect_results(str(tmp_path))


def test_results_that_cannot_be_placed_are_skipped_with_the_reason(tmp_path):
    folder = tmp_path / "exp"
    write_result(folder, "ok.json", PASCAL.format(0, ""), [(0.6, 0.7, 321)])
    # class ids of fold 1 under a fold-0 config: an --opts split override the file does not record
    write_result(folder, "overridden.json", PASCAL.format(0, ""), [(0.6, 0.7, 321)], class_ids=[6, 7, 8, 9, 10])
    write_result(folder, "moved.json", "config/pascal/no_such_config.yaml", [(0.6, 0.7, 321)])
    (folder / "broken.json").write_text('{"config": ')
    old = json.loads((folder / "ok.json").read_text())
    del old["hsnet_resize"]
    (folder / "old.json").write_text(json.dumps(old))
    skipped = dict(collect_results(str(folder)).skipped)
    assert sorted(skipped) == ["broken.json", "moved.json", "old.json", "overridden.json"]
    assert skipped["old.json"] == "lacks the key hsnet_resize"
    assert skipped["moved.json"].startswith("its config config/pascal/no_such_config.yaml is not found")
    assert skipped["overridden.json"].startswith("its class ids [6, 7, 8, 9, 10] are not those of fold 0")
    assert skipped["broken.json"].startswith("cannot be read")


def test_a_config_recorded_on_another_machine_is_found_here(tmp_path):
    path = write_result(tmp_path, "r.json", "/home/someone/SCCAN/" + PASCAL.format(2, "_5s"), [(0.7, 0.8, 321)])
    result = read_result(str(path))
    assert (result.dataset, result.layers, result.shot, result.fold, result.deviations) == ("pascal", 50, 5, 2, ())


# ----------------------------------------------------------------------------- what newer results record
def resolved(config, opts=()):
    """The ``config_values`` test_sccan.py records: the config file after its --opts."""
    return load_config(os.path.join(REPOSITORY_ROOT, config), list(opts)).to_dict()


def test_the_recorded_config_places_a_result_with_its_overrides(tmp_path):
    folder = tmp_path / "exp"
    # The file says 1-shot and 8 workers; the run overrode both (--opts shot 5 workers 0).
    write_result(folder, "overridden.json", PASCAL.format(0, ""), [(0.70, 0.80, 321)],
                 config_values=resolved(PASCAL.format(0, ""), ["shot", 5, "workers", 0]), opts=["shot", "5"])
    # A config file deleted since: the record is enough. Keys it lacks (an older version's
    # record) take the schema defaults, which are the paper's settings.
    write_result(folder, "deleted.json", "config/pascal/since_deleted.yaml", [(0.66, 0.77, 321)],
                 config_values=dict(data_set="pascal", split=2, shot=1, layers=101))
    # The class ids of fold 1 under a fold-1 record are right, whatever the named file says.
    write_result(folder, "split.json", PASCAL.format(0, ""), [(0.72, 0.79, 321)], class_ids=[6, 7, 8, 9, 10],
                 config_values=resolved(PASCAL.format(0, ""), ["split", 1]))
    write_result(folder, "broken_record.json", PASCAL.format(0, ""), [(0.6, 0.7, 321)],
                 config_values=dict(data_set="pascal", split="two"))
    write_result(folder, "not_a_record.json", PASCAL.format(0, ""), [(0.6, 0.7, 321)], config_values=[1, 2])
    collection = collect_results(str(folder))
    placed = {result.path: (result.dataset, result.layers, result.shot, result.fold, result.deviations)
              for result in collection.results}
    assert placed == {"overridden.json": ("pascal", 50, 5, 0, ("workers 0 (paper 8)",)),
                      "deleted.json": ("pascal", 101, 1, 2, ()),
                      "split.json": ("pascal", 50, 1, 1, ())}
    assert dict(collection.skipped) == {
        "broken_record.json": "its config_values cannot place it: split expects an int, got 'two' of type str",
        "not_a_record.json": "its config_values are not a mapping of config keys (got list)"}


def test_the_recorded_predictor_names_a_baseline_whatever_its_weights_text(tmp_path):
    values = resolved(PASCAL.format(0, ""))
    for name, predictor, weights in (("prior.json", "prior-baseline", "training-free prior baseline"),
                                     ("previous.json", "previous-support",
                                      "final_1shot.pth with the previous episode's supports"),
                                     # a checkpoint named like a baseline is still the trained model
                                     ("trained.json", "trained", "untrained model")):
        write_result(tmp_path, name, PASCAL.format(0, ""), [(0.6, 0.7, 321)], weights=weights,
                     config_values=values, predictor=predictor)
    assert {result.path: result.deviations for result in collect_results(str(tmp_path)).results} == {
        "prior.json": ("predictor: training-free prior baseline (test_sccan.py --prior-baseline)",),
        "previous.json": ("predictor: final_1shot.pth with the previous episode's supports "
                          "(test_sccan.py --previous-support)",),
        "trained.json": ()}


def test_the_newest_result_of_a_cell_is_shown_when_every_one_records_when_it_finished(tmp_path):
    values = resolved(PASCAL.format(0, ""))
    write_result(tmp_path, "a/old.json", PASCAL.format(0, ""), [(0.61, 0.75, 321)], config_values=values,
                 finished_at="2026-12-01T10:00:00+00:00")
    write_result(tmp_path, "b/new.json", PASCAL.format(0, ""), [(0.65, 0.76, 321)], config_values=values,
                 finished_at="2026-12-02T09:00:00+01:00")
    write_result(tmp_path, "c/older.json", PASCAL.format(0, ""), [(0.60, 0.74, 321)], config_values=values,
                 finished_at="2026-11-30T23:00:00")  # no zone: UTC
    report = build_report(collect_results(str(tmp_path)), load_published_figures())
    assert report.sections[0].groups[0][0].figures[0].value == pytest.approx(65.0)
    assert report.notes[1] == ("PASCAL-5i † ResNet-50 1-shot fold 0: 3 results; shown: b/new.json (the newest: "
                               "finished 2026-12-02T09:00:00+01:00); not shown: a/old.json, c/older.json")
    # One of them without the time: path order, and the note says why.
    write_result(tmp_path, "0/unknown.json", PASCAL.format(0, ""), [(0.50, 0.70, 321)])
    report = build_report(collect_results(str(tmp_path)), load_published_figures())
    assert report.sections[0].groups[0][0].figures[0].value == pytest.approx(50.0)
    assert report.notes[1] == ("PASCAL-5i † ResNet-50 1-shot fold 0: 4 results; shown: 0/unknown.json (the first "
                               "in path order; not every one records when it finished); not shown: a/old.json, "
                               "b/new.json, c/older.json")


def deviations(config, opts=(), test_num=None, hsnet_resize=False, seed=321, weights="x.pth"):
    cfg = load_config(os.path.join(REPOSITORY_ROOT, config), list(opts))
    return protocol_deviations(cfg, dict(test_num=test_num or cfg.test_num, hsnet_resize=hsnet_resize,
                                         runs=[dict(seed=seed)], weights=weights))


def test_what_departs_from_the_paper_protocol_is_named():
    assert deviations(PASCAL.format(0, "")) == ()
    assert deviations(COCO_R101_5S) == ()
    assert deviations(PASCAL.format(0, ""), ["ann_type", "bbox", "workers", 0], test_num=999) == (
        "999 episodes (paper 1000)", "workers 0 (paper 8)", "ann_type bbox (paper mask)")
    assert deviations(PASCAL.format(0, ""), seed=400, weights="training-free prior baseline") == (
        "seed 400 (paper 321)", "predictor: training-free prior baseline")
    assert deviations(PASCAL.format(0, ""), weights="final.pth with the previous episode's supports") == (
        "predictor: final.pth with the previous episode's supports",)
    assert deviations(COCO_R101_5S, ["use_split_coco", False, "amp", "bf16"]) == (
        "amp bf16 (paper fp32)", "use_split_coco False (paper True)")
    # HSNet's resize scores against the raw label: ori_resize does not matter there.
    assert deviations(PASCAL.format(0, ""), ["ori_resize", False], hsnet_resize=True) == ()
    assert deviations(PASCAL.format(0, ""), ["ori_resize", False]) == ("ori_resize False (paper True)",)
    assert "toy data" in deviations("config/toy/toy_split0_resnet50.yaml")


# ----------------------------------------------------------------------------- published figures
def test_the_published_figure_file_parses_and_every_figure_has_a_source():
    figures = load_published_figures()
    assert len(figures.table_rows) == 16 and len(figures.checkpoints) == 32
    with open(PUBLISHED_FIGURES, encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    for section in ("tables", "checkpoints"):
        for entry in document[section]:
            values = [value for key in ("miou", "miou_mean", "fb_iou_mean") if key in entry
                      for value in (entry[key] if isinstance(entry[key], list) else [entry[key]])]
            if any(value is not None for value in values):
                assert isinstance(entry["source"], str) and entry["source"].strip(), entry
    # The figures the issue quotes (Papers with Code lists them too) are the ‡ rows.
    means = {(layers, resize): (row.miou_mean, row.fb_iou_mean) for layers in (50, 101)
             for resize in ("hsnet", "pfenet") for row in [figures.table_row("coco", layers, 1, resize)]}
    assert means == {(50, "hsnet"): (46.3, 69.9), (101, "hsnet"): (48.2, 69.7),
                     (50, "pfenet"): (45.1, 68.5), (101, "pfenet"): (47.0, 68.5)}
    assert figures.table_row("pascal", 50, 1, "pfenet").miou == (67.5, 72.6, 67.2, 60.5)
    first = figures.checkpoint("pascal", 50, 1, 0)
    assert (first.file, first.miou) == ("win8_train_epoch_43_0.6753.pth", 67.53)


def test_the_released_checkpoints_are_the_configs_weights_and_round_to_the_dagger_rows():
    figures = load_published_figures()
    for (dataset, layers, shot, fold), checkpoint in figures.checkpoints.items():
        name = f"{dataset}_split{fold}_resnet{layers}{'_5s' if shot == 5 else ''}"
        assert checkpoint.file == RELEASED_WEIGHTS[name]
        paper = figures.table_row(dataset, layers, shot, "pfenet").miou[fold]
        rounded = Decimal(str(checkpoint.miou)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
        assert float(rounded) == paper, (name, checkpoint.miou, paper)


ROW = dict(dataset="pascal", layers=50, shot=1, resize="pfenet", miou=[67.5, 72.6, 67.2, 60.5], miou_mean=67.0,
           fb_iou_mean=76.4, source="Table 1")
CHECKPOINT = dict(dataset="pascal", layers=50, shot=1, fold=0, file="train_epoch_43_0.6753.pth", miou=67.53,
                  source="config")


@pytest.mark.parametrize("tables, checkpoints, message", [
    ([dict(ROW, note="x")], [], "tables[0]: unknown key note (known: "),
    ([dict(ROW, miou=[67.5, "72.6%", None, None])], [], "tables[0].miou[1]: expected a number (a percentage) or "
                                                        "null, got '72.6%'"),
    ([dict(ROW, miou_mean=True)], [], "tables[0].miou_mean: expected a number"),
    ([dict(ROW, fb_iou_mean=176.4)], [], "tables[0].fb_iou_mean: expected a percentage between 0 and 100"),
    ([dict(ROW, miou=[67.5, 72.6])], [], "tables[0].miou: expected a list of 4 figures"),
    ([dict(ROW, source=None)], [], "tables[0].source: a figure without a source"),
    ([dict(ROW, resize="dagger")], [], "tables[0].resize: expected one of pfenet, hsnet, got 'dagger'"),
    ([dict(ROW, layers=50.0)], [], "tables[0].layers: expected one of 50, 101, got 50.0"),
    ([{k: v for k, v in ROW.items() if k != "miou_mean"}], [], "tables[0]: missing key miou_mean"),
    ([ROW, ROW], [], "tables[1]: a second entry for ('pascal', 50, 1, 'pfenet') (the first is tables[0])"),
    ([], [dict(CHECKPOINT, source="")], "checkpoints[0].source: expected a non-empty text or null"),
    ([], [dict(CHECKPOINT, source=None)], "checkpoints[0].source: a figure without a source"),
    ([], [dict(CHECKPOINT, miou=67.35)], "checkpoints[0].miou: 67.35 is not the mIoU in the checkpoint's name"),
    ([], [dict(CHECKPOINT, fold=4)], "checkpoints[0].fold: expected one of 0, 1, 2, 3, got 4"),
])
def test_a_broken_published_figure_file_is_refused_naming_the_file_and_key(tmp_path, tables, checkpoints, message):
    path = tmp_path / "figures.yaml"
    path.write_text(yaml.safe_dump(dict(tables=tables, checkpoints=checkpoints), allow_unicode=True))
    with pytest.raises(PublishedFiguresError) as error:
        load_published_figures(str(path))
    assert str(error.value).startswith(f"{path}: {message}"), str(error.value)


def test_a_null_figure_needs_no_source_and_stays_missing(tmp_path):
    path = tmp_path / "figures.yaml"
    path.write_text(yaml.safe_dump(dict(tables=[dict(ROW, miou=[None] * 4, miou_mean=None, fb_iou_mean=None,
                                                     source=None)])))
    assert load_published_figures(str(path)).table_row("pascal", 50, 1, "pfenet").miou == (None,) * 4
    path.write_text("tables: []\nextra: 1\n")
    with pytest.raises(PublishedFiguresError, match="unknown key extra"):
        load_published_figures(str(path))
