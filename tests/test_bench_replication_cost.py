"""bench/bench_replication_cost.py's helpers on a hand-made work folder (the bench itself needs a
finished CIFAR-10 replication, so it is not run here)."""
import json

import pytest

from bench import bench_replication_cost as B


def _record(path, record):
    path.mkdir(parents=True, exist_ok=True)
    (path / "params.json").write_text(json.dumps(record))


def test_trained_iterations_counts_the_steps_each_folder_trained(tmp_path):
    _record(tmp_path / "runs/12bits/tqn", dict(inputs=dict(iterations=[600, 300]), steps={"1": {}, "2": {}}))
    _record(tmp_path / "runs/12bits/tqn-recommended",       # step 1 is a link: not retrained
            dict(inputs=dict(iterations=[600, 300]), steps={"2": {}}))
    _record(tmp_path / "runs/12bits/dsh", dict(inputs=dict(iterations=[900]), steps={"1": {}}))
    _record(tmp_path / "warm_start", dict(inputs=dict(iterations=1000), seconds=1.0))
    assert B.trained_iterations(str(tmp_path / "runs")) == 900 + 300 + 900
    assert B.trained_iterations(str(tmp_path)) == 900 + 300 + 900 + 1000


def test_rate_percentile_reads_caffe_log_lines(tmp_path):
    logs = tmp_path / "runs" / "logs"
    logs.mkdir(parents=True)
    lines = [f"I1126 solver.cpp:239] Iteration {i} ({r} iter/s, 7.1s/22 iters), loss = 0.5"
             for i, r in enumerate([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])]
    (logs / "step1.log").write_text("\n".join(lines + ["I1126 net.cpp:257] Network initialization done."]))
    assert B.rate_percentile(str(tmp_path)) == (10.0, 10)     # index int(0.9 * 10) = 9
    assert B.rate_percentile(str(tmp_path), q=0.5) == (6.0, 10)


def test_a_folder_without_caffe_logs_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no Caffe 'iter/s' lines in its logs"):
        B.rate_percentile(str(tmp_path))
