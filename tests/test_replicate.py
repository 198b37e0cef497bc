"""tools/replicate.py end to end on a tiny fake CIFAR-10 archive (the tests never need the real
one): every artefact's files, the dsh protocol derived from the cifar10-2 extraction, and a
rerun that redoes nothing."""
import json
import os

import pytest

import data_prep.readers
from data_prep.fakes import fake_cifar10, write_cifar10_binary
from tools import replicate as R
from tools.hashing import metrics as M
from tools.pipeline import blobs as B

READ_CIFAR10 = data_prep.readers.read_cifar10      # the fakes are not 50,000 + 10,000 images


@pytest.fixture(scope="module")
def replicated(tmp_path_factory, caffe_build):
    os.environ.setdefault("CAFFE_BUILD", caffe_build["CAFFE_BUILD"])
    mp = pytest.MonkeyPatch()
    mp.setattr(data_prep.readers, "read_cifar10", lambda p: READ_CIFAR10(p, expected=None))
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
    cost = summary["cost"]
    assert set(cost["seconds"]) == {"warm start", "training", "extraction", "evaluation"}
    assert cost["total_seconds"] == pytest.approx(sum(cost["seconds"].values()), abs=0.11)
    assert cost["unrecorded"] == []
    assert not list((root / "out").glob("work/**/*.tmp"))


def test_one_step_methods_start_from_the_warm_start(replicated):
    root, _ = replicated
    work = root / "out" / "work"
    warm = str(work / "warm_start" / "warm_start_iter_3.caffemodel")
    for method in ("dsh", "dnnh", "dqn"):
        plan = json.loads((work / "runs" / "12bits" / method / "params.json").read_text())["inputs"]
        assert plan["weights"] == warm and plan["iterations"] == [6]
    plan = json.loads((work / "runs" / "12bits" / "tqn" / "params.json").read_text())["inputs"]
    assert plan["weights"] == warm and plan["iterations"] == [4, 2]


def test_dsh_protocol_is_the_queries_against_themselves(replicated):
    root, _ = replicated
    blobs = root / "out" / "work" / "blobs" / "12bits" / "tqn"
    dsh = B.read(str(blobs / "dsh"))
    meta, sets = dsh.meta, dsh.sets
    assert meta["protocol"] == "dsh" and meta["database_is_query"]
    q = B.read(str(blobs / "cifar10-2")).sets["query"]
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
    summary = root / "out" / "results" / "summary.json"
    first_cost = json.loads(summary.read_text())["cost"]
    assert R.main(argv) == 0
    assert json.loads(summary.read_text())["cost"] == first_cost    # the whole cost, not this run's
    out = capsys.readouterr().out
    assert "step 1: done" in out
    assert [p.stat().st_mtime_ns for p in sorted(work.glob("runs/**/*.caffemodel"))] == stamps


def test_cost_lists_parts_without_a_record():
    cost = R.Cost()
    cost.add("training", 60.0, "a")
    cost.add("training", 30.0, "b")
    cost.add("extraction", None, "12 bits dqn")
    assert cost.summary() == dict(seconds={"training": 90.0}, total_seconds=90.0,
                                  unrecorded=["extraction: 12 bits dqn"])
    assert cost.line() == "cost as recorded: 1.5 min (training 1.5 min); 1 parts without a record"


@pytest.mark.parametrize("text,message", [
    ('{"chosen": "beta=99"}', "chose 'beta=99', which is not one of paper, beta=1, step2 lr/10"),
    ("{not json", "is not a held-out study's record"),
])
def test_bad_study_record_is_named_before_any_work(tmp_path, capsys, text, message):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "study.json").write_text(text)
    assert R.main(["all", "--archive", "x.tar.gz", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(tmp_path / "results" / "study.json") in err
    assert "rerun python -m tools.replicate study" in err
    assert not (tmp_path / "work").exists()


def test_paper_scale_needs_weights(tmp_path, capsys):
    assert R.main(["table3", "--scale", "paper", "--archive", "x.tar.gz", "--out", str(tmp_path)]) == 2
    assert "--scale paper needs --weights" in capsys.readouterr().err


def test_step2_variant_reuses_the_step1_model(replicated, tmp_path):
    root, _ = replicated
    work = root / "out" / "work"
    setting = R.Setting.of(R.ReplicateSpec(artefact="all", archive="x", out=str(tmp_path), iters=(4, 2),
                                           warm_start_iters=0, quiet=True))
    run = tmp_path / "variant"
    model = R.step2_variant(setting, str(work / "data" / "cifar10-2"), 12,
                            str(work / "runs" / "12bits" / "tqn"), str(run),
                            R.D.STUDY_VARIANTS["beta=1"], "tqn-variant")
    assert os.path.islink(run / "step1_iter_4.caffemodel")           # step 1 is not retrained
    assert os.path.exists(model.weights) and list(model.record["steps"]) == ["2"]
    assert model.plan["tqn"]["beta"] == 1 and model.plan["tqn"]["gamma"] == 1
    assert "beta: 1.0" in (run / "step2_net.prototxt").read_text()


def test_bad_skip_is_named(tmp_path, capsys):
    assert R.main(["all", "--archive", "x.tar.gz", "--out", str(tmp_path), "--skip", "dnnh48"]) == 2
    assert "--skip takes METHOD@BITS" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


@pytest.fixture(scope="module")
def studied(tmp_path_factory, caffe_build):
    """The study artefact on a fake archive large enough for cifar10-holdout (500 held out a
    class from the official training set): TQN's step-2 variants and DNNH's variants."""
    os.environ.setdefault("CAFFE_BUILD", caffe_build["CAFFE_BUILD"])
    mp = pytest.MonkeyPatch()
    mp.setattr(data_prep.readers, "read_cifar10", lambda p: READ_CIFAR10(p, expected=None))
    root = tmp_path_factory.mktemp("study")
    images, labels = fake_cifar10(1100, seed=6)                # ~550 training images a class
    archive = write_cifar10_binary(str(root / "cifar-10-binary.tar.gz"), images, labels)
    argv = ["study", "--archive", archive, "--iters", "4", "2", "--warm-start-iters", "3",
            "--study-bits", "12", "--dnnh-study-bits", "12", "--out", str(root / "out"), "--quiet"]
    assert R.main(argv) == 0
    yield root
    mp.undo()


def test_study_compares_every_variant_on_held_out_data(studied):
    results = studied / "out" / "results"
    work = studied / "out" / "work"
    for name, variants in (("study", R.D.STUDY_VARIANTS), ("study_dnnh", R.D.DNNH_STUDY_VARIANTS)):
        record = json.loads((results / f"{name}.json").read_text())
        assert set(record["results"]) == set(variants) and record["bits"] == [12]
        best = max(record["results"], key=lambda v: record["results"][v]["12"]["bc_map"])
        assert record["chosen"] == best                            # the held-out maximum
        table = (results / f"{name}.md").read_text()
        assert f"| {best} (chosen) |" in table and "never the test set" in table
    # Every study model was evaluated on the held-out split, never the test queries.
    for meta in work.glob("study/**/blobs/meta.json"):
        assert json.loads(meta.read_text())["protocol"] == "cifar10-holdout"
    plan = json.loads((work / "study" / "dnnh" / "12bits" / "straight-through" / "params.json")
                      .read_text())["inputs"]
    assert plan["method_overrides"] == {"gradient": "STRAIGHT_THROUGH"} and plan["iterations"] == [6]
    plan = json.loads((work / "study" / "dnnh" / "12bits" / "lr_10" / "params.json").read_text())["inputs"]
    assert plan["base_lr"] == [1e-4] and "method_overrides" not in plan
    cost = json.loads((results / "study_cost.json").read_text())
    assert cost["unrecorded"] == [] and cost["seconds"]["training"] > 0


def test_held_out_dnnh_choice_adds_rows(replicated):
    """A study_dnnh.json in the results folder that chose another setting than the default adds
    "DNNH (held-out choice: ...)" rows, trained with that setting (last: it changes the folder)."""
    root, argv = replicated
    results = root / "out" / "results"
    (results / "study_dnnh.json").write_text(json.dumps(dict(chosen="straight-through")))
    assert R.main(argv + ["--methods", "dnnh"]) == 0
    summary = json.loads((results / "summary.json").read_text())
    assert summary["recommended_dnnh"] == "straight-through"
    names = [r["method"] for r in summary["tables"]["table2_cifar10-2"]]
    assert names == ["DNNH", "DNNH (held-out choice: straight-through)"]
    plan = json.loads((root / "out" / "work" / "runs" / "12bits" / "dnnh-recommended" / "params.json")
                      .read_text())["inputs"]
    assert plan["method_overrides"] == {"gradient": "STRAIGHT_THROUGH"}
