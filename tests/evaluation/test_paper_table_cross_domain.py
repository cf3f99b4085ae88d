"""The cross-domain section of the results table (evaluation/paper_table.py): a column per target
dataset of PATNet's benchmark, 1- and 5-shot rows, the mean over the four datasets, its own note;
results of another episode count in a section of their own."""
from evaluation.paper_table import build_report, collect_results, render
from evaluation.published_figures import load_published_figures
from tests.evaluation.test_paper_table import write_result

CONFIG = "config/cross_domain/{}_resnet50{}.yaml"
NOTE = ("PATNet's cross-domain benchmark, which the SCCAN paper does not report: a PASCAL-trained checkpoint "
        "tested on each target dataset (columns); mean and FB-IoU over the four")


def test_cross_domain_results_fill_one_section_with_a_column_per_dataset(tmp_path):
    folder = tmp_path / "exp"
    one_shot = {"deepglobe": (0.40, 0.60), "isic": (0.30, 0.50), "lung": (0.70, 0.80), "fss": (0.76, 0.86)}
    for benchmark, (miou, fb_iou) in one_shot.items():
        write_result(folder, f"{benchmark}_1.json", CONFIG.format(benchmark, ""), [(miou, fb_iou, 321)],
                     test_num=2400 if benchmark == "fss" else 600, predictor="trained")
    # 5-shot: ISIC missing, lung over two seeds.
    write_result(folder, "deepglobe_5.json", CONFIG.format("deepglobe", "_5s"), [(0.45, 0.62, 321)], test_num=600)
    write_result(folder, "lung_5.json", CONFIG.format("lung", "_5s"), [(0.72, 0.8, 321), (0.74, 0.8, 322)],
                 test_num=600)
    # Another episode count: its own section.
    write_result(folder, "isic_100.json", CONFIG.format("isic", ""), [(0.25, 0.5, 321)], test_num=100)
    report = build_report(collect_results(str(folder)), load_published_figures())
    # mean 1-shot: (40 + 30 + 70 + 76) / 4 = 54.00; FB-IoU (60 + 50 + 80 + 86) / 4 = 69.00.
    expected = [
        "### cross-domain (PATNet): a PASCAL-trained checkpoint on each target dataset [1]",
        "",
        "| backbone | shot | | Deepglobe | ISIC2018 | Chest X-ray | FSS-1000 | mean | FB-IoU |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
        "| ResNet-50 | 1 | ours [1] | 40.00 | 30.00 | 70.00 | 76.00 | 54.00 | 69.00 |",
        "| ResNet-50 | 5 | ours [1] | 45.00 | — | 73.00 ± 1.41 | — | — | — |",
        "",
        "### cross-domain (PATNet): a PASCAL-trained checkpoint on each target dataset [2]",
        "",
        "| backbone | shot | | Deepglobe | ISIC2018 | Chest X-ray | FSS-1000 | mean | FB-IoU |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
        "| ResNet-50 | 1 | ours [2] | — | 25.00 | — | — | — | — |",
    ]
    markdown = render(report, "markdown")
    assert markdown.split("\n\n- ")[0].split("\n") == expected
    assert f"[1] not the paper's protocol: {NOTE}" in report.notes
    assert f"[2] not the paper's protocol: {NOTE}; ISIC2018: 100 episodes (PATNet 600)" in report.notes
    assert any("cross-domain (PATNet) [1] ResNet-50 5-shot Chest X-ray: 2 seeds" in note for note in report.notes)
    csv_lines = render(report, "csv").splitlines()
    assert csv_lines[1].startswith('"cross-domain (PATNet) (fold_0..fold_3: Deepglobe, ISIC2018, Chest X-ray, '
                                   'FSS-1000)"')
    assert csv_lines[1].endswith(",40.00,,30.00,,70.00,,76.00,,54.00,69.00")


def test_fss_1000_with_its_own_config_stays_out_of_the_cross_domain_section(tmp_path):
    folder = tmp_path / "exp"
    write_result(folder, "fss.json", "config/fss/fss_resnet101.yaml", [(0.8, 0.9, 0)], test_num=2400)
    report = build_report(collect_results(str(folder)), load_published_figures())
    assert [section.dataset for section in report.sections] == ["fss"]
