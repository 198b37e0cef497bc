"""tools/replicate.py end to end on a tiny fake CIFAR-10 archive (the tests never need the real
one): every artefact's files, the dsh protocol derived from the cifar10-2 extraction, and a
rerun that redoes nothing."""
import json
import os

import numpy as np
import pytest

import data_prep.readers
from data_prep.fakes import fake_cifar10, write_cifar10_binary
from tools import codes as C
from tools import metrics as M
from tools import replicate as R
from tools.extract import load_blobs


@pytest.fixture(scope="module")
def replicated(tmp_path_factory, caffe_build):
    os.environ.setdefault("CAFFE_BUILD", caffe_build["CAFFE_BUILD"])
    mp = pytest.MonkeyPatch()
    real = data_prep.readers.read_cifar10
    mp.setattr(data_prep.readers, "read_cifar10", lambda p: real(p, expected=None))
    root = tmp_path_factory.mktemp("replicate")
    images, labels = fake_cifar10(20, seed=4)                  # 100 train, 20 test images
    archive = write_cifar10_binary(str(root / "cifar-10-binary.tar.gz"), images, labels)
    argv = ["all", "--archive", archive, "--bits", "12", "--iters", "4", "2",
            "--warm-start-iters", "3", "--out", str(root / "out"), "--quiet"]
    assert R.main(argv) == 0
    yield root, argv
    mp.undo()


def test_results_folder(replicated):
    root, _ = replicated
    results = root / "out" / "results"
    for name in ("table2_dsh.md", "table2_cifar10-2.csv", "table3_dsh.md", "table3_cifar10-2.csv",
                 "fig1_step1_losses.png", "fig2_step2_losses.png", "summary.json"):
        assert (results / name).is_file(), name
    summary = json.loads((results / "summary.json").read_text())
    assert summary["iterations"] == [4, 2] and summary["warm_start_iterations"] == 3
    assert summary["solver_seed"] == 1 and summary["data_seed"] == 0
    methods = {r["method"] for r in summary["tables"]["table2_dsh"]}
    assert methods == {"Triplet only", "TQN (paper's settings)", "DSH", "DNNH", "DQN", "ITQ", "LSH"}
    table = (results / "table2_cifar10-2.md").read_text()
    assert "cited: TQN paper, Table II" in table and "real-valued mAP" in table
    assert any(f.endswith("step1.log") for f in os.listdir(results / "logs"))
    assert not list((root / "out").glob("work/**/*.tmp"))


def test_one_step_methods_start_from_the_warm_start(replicated):
    root, _ = replicated
    work = root / "out" / "work"
    warm = str(work / "warm_start" / "warm_start_iter_3.caffemodel")
    for method in ("dsh", "dnnh", "dqn"):
        plan = json.loads((work / "runs" / "12bits" / method / "params.json").read_text())["plan"]
        assert plan["weights"] == warm and plan["iterations"] == [6]
    plan = json.loads((work / "runs" / "12bits" / "tqn" / "params.json").read_text())["plan"]
    assert plan["weights"] == warm and plan["iterations"] == [4, 2]


def test_dsh_protocol_is_the_queries_against_themselves(replicated):
    root, _ = replicated
    blobs = root / "out" / "work" / "blobs" / "12bits" / "tqn"
    meta, sets = load_blobs(str(blobs / "dsh"))
    assert meta["protocol"] == "dsh" and meta["database_is_query"]
    _, c2 = load_blobs(str(blobs / "cifar10-2"))
    q = c2["query"]
    direct = M.evaluate_codes(q["codes"], q["labels"], q["codes"], q["labels"], 12, exclude_self=True)
    summary = json.loads((root / "out" / "results" / "summary.json").read_text())
    row = next(r for r in summary["tables"]["table2_dsh"] if r["method"].startswith("TQN"))
    assert row["map_tie_aware"] == pytest.approx(direct["map_tie_aware"])
    assert len(sets["database"]["labels"]) == 20


def test_rerun_redoes_nothing(replicated, capsys):
    root, argv = replicated
    work = root / "out" / "work"
    models = sorted(work.glob("runs/**/*.caffemodel"))
    stamps = [p.stat().st_mtime_ns for p in models]
    assert R.main(argv) == 0
    out = capsys.readouterr().out
    assert "step 1: done" in out
    assert [p.stat().st_mtime_ns for p in sorted(work.glob("runs/**/*.caffemodel"))] == stamps


def test_paper_scale_needs_weights(tmp_path, capsys):
    assert R.main(["table3", "--scale", "paper", "--archive", "x.tar.gz", "--out", str(tmp_path)]) == 1
    assert "--scale paper needs --weights" in capsys.readouterr().err


def test_step2_variant_reuses_the_step1_model(replicated, tmp_path):
    import argparse
    root, _ = replicated
    work = root / "out" / "work"
    args = argparse.Namespace(iters=[4, 2], scale="cpu", seed=1, quiet=True, start_weights=None)
    run = tmp_path / "variant"
    model, record = R._step2_variant(args, str(work / "data" / "cifar10-2"), 12,
                                     str(work / "runs" / "12bits" / "tqn"), str(run),
                                     R.STUDY_VARIANTS["beta=1"])
    assert os.path.islink(run / "step1_iter_4.caffemodel")           # step 1 is not retrained
    assert os.path.exists(model) and list(record["steps"]) == ["2"]
    assert record["plan"]["tqn"]["beta"] == 1 and record["plan"]["tqn"]["gamma"] == 1
    assert "beta: 1.0" in (run / "step2_net.prototxt").read_text()


def test_bad_skip_is_named(tmp_path, capsys):
    assert R.main(["all", "--archive", "x.tar.gz", "--out", str(tmp_path), "--skip", "dnnh48"]) == 1
    assert "--skip takes METHOD@BITS" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
