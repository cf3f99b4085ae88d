"""FSS-1000 results (config/fss/) in the results table (evaluation/paper_table.py): a section of
their own, never beside the paper's PASCAL or COCO figures."""
from evaluation.paper_table import build_report, collect_results, render
from evaluation.published_figures import load_published_figures
from tests.evaluation.test_paper_table import write_result


def test_fss_1000_results_get_their_own_section_and_note(tmp_path):
    folder = tmp_path / "exp"
    write_result(folder, "fss_1.json", "config/fss/fss_resnet50.yaml", [(0.80, 0.90, 0), (0.82, 0.88, 1)],
                 test_num=2400, class_ids=["ant", "bee"])
    write_result(folder, "fss_5.json", "config/fss/fss_resnet50_5s.yaml", [(0.85, 0.91, 0)], test_num=2400)
    write_result(folder, "pascal.json", "config/pascal/pascal_split0_resnet50.yaml", [(0.6, 0.7, 321)])
    report = build_report(collect_results(str(folder)), load_published_figures())
    assert [section.dataset for section in report.sections] == ["pascal", "fss"]
    note = "[1] not the paper's protocol: FSS-1000, which the SCCAN paper does not report (2400 episodes, seed 0)"
    assert note in report.notes
    markdown = render(report, "markdown").split("\n")
    start = markdown.index("### FSS-1000: not the paper's protocol [1]")
    # two seeds: mean (80 + 82) / 2 = 81.00, sample std sqrt(2) = 1.41; the split-0 column.
    assert markdown[start + 4] == "| ResNet-50 | 1 | ours [1] | 81.00 ± 1.41 | — | — | — | — | — |"
    assert markdown[start + 5] == "| ResNet-50 | 5 | ours [1] | 85.00 | — | — | — | — | — |"
