"""tools/compare.py: methods x widths through one pipeline and one metric code."""
import csv
import os

from tools import compare
from tools.pipeline import report


def test_deep_and_classical_rows_share_split_and_metrics(tmp_path, digits_data, caffe_build):
    os.environ.setdefault("CAFFE_BUILD", caffe_build["CAFFE_BUILD"])
    rows = compare.run(compare.CompareSpec(
        dataset="digits", methods=("tqn", "triplet", "lsh", "itq", "ksh"), bits=(12,), data=str(digits_data),
        iters=(30, 20), seed=1, out=str(tmp_path)))
    assert [r["method"] for r in rows] == ["TQN", "Triplet only", "LSH", "ITQ", "KSH"]
    assert all(r["protocol"] == "digits" and r["source"] == "measured" for r in rows)
    assert rows[0]["iterations"] == "30+20" and rows[1]["iterations"] == "30"
    assert all(0 < r["map_tie_aware"] <= 1 for r in rows)
    table = (tmp_path / "results" / "table2.md").read_text()
    assert "| LSH | raw pixels |" in table and "cited" not in table.split("\n\n")[1]
    with open(tmp_path / "results" / "table2.csv") as f:
        assert len(list(csv.DictReader(f))) == 5


def test_cited_rows_are_marked_and_kept_apart():
    rows = report.cited_rows([12, 48], "cifar10", "dsh")
    assert report.cited_rows([12, 48], "cifar10", "cifar10-1") == []
    assert report.cited_rows([12, 48], "images", "given") == []
    assert report.cited_rows([12, 48], "digits", "digits") == []
    assert {r["method"] for r in rows} >= {"DSH", "KSH", "TQN (paper)"}
    assert all(r["source"] == "cited: TQN paper, Table II" for r in rows)
    dsh = {r["bits"]: r["map_tie_aware"] for r in rows if r["method"] == "DSH"}
    assert dsh == {12: 0.615, 48: 0.676}
    text = report.method_table(rows, [12, 48], "t")
    assert "| DSH | (paper) | 0.615 | 0.676 | cited: TQN paper, Table II |" in text
