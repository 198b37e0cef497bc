"""DSH, DNNH and DQN in the same pipeline as TQN, on the embedded digits data: each trains
through the stock `caffe train -solver` from the generated net (smoke training: its loss falls),
is extracted to saved blobs and evaluated by the same metric code (DQN: ADC over its codebooks)."""
import json
import os

import numpy as np
import pytest

from tools.pipeline import caffe_log
from tools.pipeline import evaluation as E
from tools.pipeline import extraction as X
from tools.pipeline import training as T

LOSSES = {"dsh": ["dsh_loss"], "dnnh": ["dnnh_loss"], "dqn": ["cosine_loss", "pq_loss"]}


@pytest.fixture(scope="module", params=["dsh", "dnnh", "dqn"])
def trained(request, tmp_path_factory, digits_data, caffe_build):
    os.environ.setdefault("CAFFE_BUILD", caffe_build["CAFFE_BUILD"])
    method = request.param
    run = tmp_path_factory.mktemp(method)
    record = T.train(T.TrainSpec(method=method, data=str(digits_data), dataset="digits", bits=12,
                                 out=str(run), quiet=True, iters=(90, 60)))
    blobs = run / "blobs"
    X.extract(X.ExtractSpec(data=str(digits_data), dataset="digits", bits=12,
                            weights=str(run / "step1_iter_150.caffemodel"), out=str(blobs),
                            method=method))
    return method, run, record, blobs


def test_one_step_of_tqns_budget_is_recorded(trained):
    method, run, record, _ = trained
    plan = json.loads((run / "params.json").read_text())["inputs"]
    assert plan["method"] == method and plan["iterations"] == [150] and plan["base_lr"] == [0.01]
    assert plan["tqn"] is None and plan["method_parameters"]["steps"] == [1]
    assert (run / "step1_iter_150.caffemodel").exists() and not (run / "step2_net.prototxt").exists()
    lists = (run / "step1_net.prototxt").read_text()
    assert ("shuffled.txt" in lists) == (method in ("dsh", "dqn"))


def test_loss_falls(trained):
    method, run, _, _ = trained
    curves = caffe_log.parse((run / "logs" / "step1.log").read_text())
    values = np.array([v for _, v in curves[LOSSES[method][0]]])
    assert len(values) >= 10
    assert values[-3:].mean() < 0.8 * values[:2].mean(), values.round(4).tolist()


def test_extracted_and_evaluated_above_chance(trained):
    method, run, _, blobs = trained
    meta = json.loads((blobs / "meta.json").read_text())
    assert meta["method"] == method
    result = E.evaluate(str(blobs), out=str(run / "eval"))
    assert (run / "eval" / "metrics.json").exists()
    # 10 balanced classes: chance mAP is about 0.1; 150 iterations give far more.
    assert result["binary"]["map_tie_aware"] > 0.3, result["binary"]["map_tie_aware"]
    assert result["real"]["map"] > 0.3
    if method == "dqn":
        codebooks = np.load(blobs / "codebooks.npy")
        codes = np.load(blobs / "query" / "pq_codes.npy")
        assert codebooks.shape == (2, 64, 150) and codes.shape[1] == 2 and codes.max() < 64
        assert meta["feature_dims"] == 300 and meta["bits"] == 12
    else:
        codes = np.load(blobs / "query" / "codes.npy")
        assert codes.shape[1] == 2                                   # 12 bits packed in 2 bytes
        assert meta["threshold"] == (0.0 if method == "dsh" else 0.5)


def test_dqn_codebooks_were_updated_on_schedule(trained):
    method, run, _, _ = trained
    if method != "dqn":
        pytest.skip("DQN only")
    log = (run / "logs" / "step1.log").read_text()
    curves = caffe_log.parse(log)
    pq = np.array([v for _, v in curves["pq_loss"]])
    # no codebook before the first update (iteration 30 = 2 epochs of 1438 rows / 96): loss 0
    iters = [i for i, _ in curves["pq_loss"]]
    assert all(v == 0 for i, v in zip(iters, pq) if i < 29) and pq[-1] > 0
