"""The pipeline on the embedded digits data: training (both steps, resume, records), extraction
(saved-blob format), evaluation, and the main job's table."""
import json
import os

import numpy as np
import pytest

from tools import main_job
from tools import train as train_cli
from tools.hashing import codes as C
from tools.pipeline import evaluation as E
from tools.pipeline import extraction as X
from tools.pipeline import training as T


def train_spec(data, out, **settings):
    return T.TrainSpec(data=str(data), dataset="digits", bits=12, out=str(out), quiet=True,
                       snapshots=3, **settings)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_data, caffe_build):
    os.environ.setdefault("CAFFE_BUILD", caffe_build["CAFFE_BUILD"])
    run = tmp_path_factory.mktemp("run")
    record = T.train(train_spec(digits_data, run, iters=(60, 45)))
    return run, record


def test_training_writes_models_logs_and_every_seed(trained, digits_data):
    run, record = trained
    assert (run / "step1_iter_60.caffemodel").exists() and (run / "step2_iter_45.caffemodel").exists()
    params = json.loads((run / "params.json").read_text())
    plan = params["inputs"]
    assert plan["solver_seeds"] == [1, 2] and plan["data_seed"] == 0 and plan["triplet_seed"] == 0
    assert plan["iterations"] == [60, 45] and plan["base_lr"] == [0.01, 0.001]
    assert plan["tqn"]["alpha_d"] == pytest.approx(3.83)          # Table I, 12 bits
    assert plan["first_triplet"] == [0, 60 * 32]                   # step 2 continues the list
    assert "first_triplet: 1920" in (run / "step2_net.prototxt").read_text()
    assert 'weights: "' + str(run / "step1_iter_60.caffemodel") in (run / "step2_solver.prototxt").read_text()
    for step in (1, 2):
        assert "Optimization Done" in (run / "logs" / f"step{step}.log").read_text()


def test_rerun_does_nothing_and_other_parameters_are_refused(trained, digits_data, capsys):
    run, _ = trained
    before = (run / "logs" / "step1.log").stat().st_size
    T.train(train_spec(digits_data, run, iters=(60, 45)))
    assert (run / "logs" / "step1.log").stat().st_size == before
    assert "step 1: done" in capsys.readouterr().out
    with pytest.raises(T.TrainError, match="holds a run with other parameters \\(first_triplet, iterations\\)"):
        T.train(train_spec(digits_data, run, iters=(70, 45)))


def test_interrupted_step_resumes_from_its_solverstate(tmp_path, digits_data, caffe_build, capsys):
    os.environ.setdefault("CAFFE_BUILD", caffe_build["CAFFE_BUILD"])
    T.train(train_spec(digits_data, tmp_path, iters=(60, 45), steps=(1,)))
    # As if stopped after the snapshot at iteration 40: drop the later files.
    for name in ("step1_iter_60.caffemodel", "step1_iter_60.solverstate"):
        (tmp_path / name).unlink()
    with open(tmp_path / "logs" / "step1.log", "a") as log:  # an earlier invocation of 1,000 s
        log.write("# caffe train -snapshot=step1_iter_20.solverstate (an earlier invocation)\n"
                  "I20260101 00:00:00.000000 7 caffe.cpp:197] Use CPU.\n"
                  "I20260101 00:16:40.000000 7 solver.cpp:239] Iteration 40 (1 iter/s), loss = 1\n")
    T.train(train_spec(digits_data, tmp_path, iters=(60, 45), steps=(1,)))
    out = capsys.readouterr().out
    assert "resuming from iteration 40" in out
    assert (tmp_path / "step1_iter_60.caffemodel").exists()
    net = (tmp_path / "step1_net.prototxt").read_text()
    assert f"first_triplet: {40 * 32}" in net                      # the triplet position too
    # The step's recorded time covers both invocations: the first's read from the log.
    from tools.pipeline import caffe_log
    log = (tmp_path / "logs" / "step1.log").read_text()
    assert log.count("\n# ") + log.startswith("# ") == 3
    earlier = caffe_log.wall_seconds(log[:log.rindex("\n# ") + 1])
    last = caffe_log.wall_seconds(log[log.rindex("\n# ") + 1:])
    assert 1000 < earlier < 1100 and 0 < last < 100
    step = json.loads((tmp_path / "params.json").read_text())["steps"]["1"]
    assert step["resumed_from"] == 40
    assert earlier + last - 0.1 <= step["seconds"] < earlier + 100
    assert caffe_log.parse(log)["loss"][-1][0] == 60


def test_step2_without_step1_is_refused(tmp_path, digits_data, caffe_build):
    os.environ.setdefault("CAFFE_BUILD", caffe_build["CAFFE_BUILD"])
    with pytest.raises(T.TrainError, match="step 2 needs step 1's"):
        T.train(train_spec(digits_data, tmp_path, iters=(60, 45), steps=(2,)))


def test_missing_data_is_named(tmp_path):
    with pytest.raises(T.TrainError, match="dataset.json is missing: build the data set first"):
        T.train(train_spec(tmp_path / "nothing", tmp_path / "run"))


def test_extraction_format_and_evaluation(trained, digits_data, tmp_path):
    run, _ = trained
    blobs = tmp_path / "blobs"
    spec = X.ExtractSpec(data=str(digits_data), dataset="digits", bits=12,
                         weights=str(run / "step2_iter_45.caffemodel"), out=str(blobs), batch=64)
    meta = X.extract(spec)
    assert meta["counts"] == {"query": 359, "database": 1438} and not meta["database_is_query"]
    for s, n in (("query", 359), ("database", 1438)):
        feats = np.load(blobs / s / "features.npy")
        codes = np.load(blobs / s / "codes.npy")
        labels = np.load(blobs / s / "labels.npy")
        assert feats.shape == (n, 12) and feats.dtype == np.float32
        assert ((feats > 0) & (feats < 1)).all()                   # sigmoid outputs
        assert codes.shape == (n, 2) and codes.dtype == np.uint8
        np.testing.assert_array_equal(np.unpackbits(codes, axis=1, bitorder="big")[:, :12],
                                      feats > 0.5)
        want = [int(line.split()[1]) for line in
                (digits_data / "splits" / "digits" / f"{'train' if s == 'database' else s}.txt").read_text().split("\n") if line]
        np.testing.assert_array_equal(labels, want)                # LMDB row order = list order
    result = E.evaluate(str(blobs), out=str(tmp_path / "eval"))
    assert (tmp_path / "eval" / "metrics.json").exists() and (tmp_path / "eval" / "pr_curve.png").exists()
    assert 0 < result["binary"]["map_tie_aware"] <= 1 and 0 < result["real"]["map"] <= 1
    assert result["protocol"] == "digits" and "protocol digits" in E.summary(result)
    # A second extraction with the same weights does nothing.
    assert X.extract(spec) == meta


def test_collapsed_codes_are_reported_loudly(tmp_path):
    (tmp_path / "query").mkdir()
    feats = np.full((50, 12), 0.9, np.float32)                      # every item: one code
    for s in ("query",):
        np.save(tmp_path / s / "features.npy", feats)
        np.save(tmp_path / s / "codes.npy", C.pack_bits(C.binarize(feats)))
        np.save(tmp_path / s / "labels.npy", np.arange(50) % 5)
    os.symlink("query", tmp_path / "database")
    (tmp_path / "meta.json").write_text(json.dumps(dict(bits=12, protocol="made", dataset="made",
                                                        database_is_query=True)))
    result = E.evaluate(str(tmp_path))
    text = E.summary(result)
    assert "WARNING: CODE COLLAPSE" in text and "CONSTANT BITS" in text


def test_main_job_table(tmp_path, digits_data, caffe_build, capsys):
    os.environ.setdefault("CAFFE_BUILD", caffe_build["CAFFE_BUILD"])
    summary = main_job.run(main_job.JobSpec(dataset="digits", data=str(digits_data), bits=(12, 24),
                                            iters=(40, 30), out=str(tmp_path), quiet=True))
    table = (tmp_path / "results" / "table3.md").read_text()
    for row in ("RF with triplet", "BC with triplet", "RF with TQN", "BC with TQN"):
        assert f"| {row} |" in table
    assert "protocol digits" in table and "index order" in table
    for png in ("fig1_step1_losses.png", "fig2_step2_losses.png", "pr_curves.png"):
        assert (tmp_path / "results" / png).stat().st_size > 1000
    assert len(summary["table"]) == 8 and summary["solver_seed"] == 1


@pytest.mark.parametrize("recorded", [11, 9])
def test_codes_wider_than_meta_bits_are_refused(tmp_path, capsys, recorded):
    """12-bit codes under a meta.json of 11 or 9 bits: tools.evaluate exits with status 2 and
    names the file and both widths (never clears the extra bits as padding)."""
    from tools import evaluate as evaluate_cli
    (tmp_path / "query").mkdir()
    rng = np.random.default_rng(recorded)
    feats = rng.uniform(0, 1, (40, 12)).astype(np.float32)
    feats[3, 11] = 0.9
    np.save(tmp_path / "query" / "features.npy", feats[:, :recorded])
    np.save(tmp_path / "query" / "codes.npy", C.pack_bits(C.binarize(feats)))
    np.save(tmp_path / "query" / "labels.npy", np.arange(40) % 3)
    os.symlink("query", tmp_path / "database")
    (tmp_path / "meta.json").write_text(json.dumps(dict(bits=recorded, protocol="made",
                                                        dataset="made", database_is_query=True)))
    assert evaluate_cli.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("evaluate: error: ")
    assert f"{tmp_path / 'query'}/codes.npy: row" in err and f"beyond bit {recorded - 1}" in err
    assert f"at least 12 bits wide, not the {recorded} bits of meta.json" in err


def test_self_match_include_counts_each_query_itself(tmp_path):
    """With query = database, keeping each query in its own ranking (DSH's convention) puts a
    relevant item at distance 0 for every query, so precision within radius 2 can only rise."""
    (tmp_path / "query").mkdir()
    rng = np.random.default_rng(0)
    feats = rng.uniform(0, 1, (60, 12)).astype(np.float32)
    np.save(tmp_path / "query" / "features.npy", feats)
    np.save(tmp_path / "query" / "codes.npy", C.pack_bits(C.binarize(feats)))
    np.save(tmp_path / "query" / "labels.npy", np.arange(60) % 3)
    os.symlink("query", tmp_path / "database")
    (tmp_path / "meta.json").write_text(json.dumps(dict(bits=12, protocol="made", dataset="made",
                                                        database_is_query=True)))
    excluded = E.evaluate(str(tmp_path))
    included = E.evaluate(str(tmp_path), self_match="include")
    assert excluded["binary"]["n_database"] == 59 and included["binary"]["n_database"] == 60
    assert included["binary"]["precision_radius2"] > excluded["binary"]["precision_radius2"]
    assert "as DSH's evaluation" in E.summary(included)
    with pytest.raises(ValueError, match="self_match is 'exclude' or 'include'"):
        E.evaluate(str(tmp_path), self_match="maybe")


def test_method_param_is_recorded_and_reaches_the_net(tmp_path, digits_data, caffe_build):
    os.environ.setdefault("CAFFE_BUILD", caffe_build["CAFFE_BUILD"])
    record = T.train(train_spec(digits_data, tmp_path, method="dnnh", iters=(3, 2),
                                method_params={"gradient": "STRAIGHT_THROUGH"}))
    plan = json.loads((tmp_path / "params.json").read_text())["inputs"]
    assert plan == record["inputs"]
    assert plan["method_overrides"] == {"gradient": "STRAIGHT_THROUGH"}
    assert plan["method_parameters"]["gradient"] == "STRAIGHT_THROUGH"
    assert "gradient: STRAIGHT_THROUGH" in (tmp_path / "step1_net.prototxt").read_text()
    assert (tmp_path / "step1_iter_5.caffemodel").exists()


@pytest.mark.parametrize("settings,message", [
    (dict(method_params={"gradient": "STRAIGHT_THROUGH"}), "--method-param applies to dsh, dnnh and dqn"),
    (dict(method="dnnh", method_params={"gradient": "SIGN"}),
     "method dnnh: gradient must be one of EXACT, STRAIGHT_THROUGH, got 'SIGN'"),
    (dict(method="dsh", method_params={"margin_per_bit": "3"}),
     "method dsh has no training parameter 'margin_per_bit' to override"),
])
def test_bad_method_param_is_named(tmp_path, digits_data, settings, message):
    with pytest.raises(T.TrainError, match=message):
        T.train(train_spec(digits_data, tmp_path, iters=(3, 2), **settings))
    assert not (tmp_path / "params.json").exists()


def test_method_param_needs_key_value(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--data", "d", "--dataset", "digits", "--bits", "12", "--out", "o",
                        "--method", "dnnh", "--method-param", "gradient"])
    assert "--method-param takes KEY=VALUE, got 'gradient'" in capsys.readouterr().err
