"""tools/pipeline/caffe_log.py reads `caffe train` logs."""
from tools.pipeline import caffe_log, report

LOG = """I1126 15:00:00.1 1 solver.cpp:218] Iteration 0 (0 iter/s, 0.05s/20 iters), loss = 0.8
I1126 15:00:00.1 1 solver.cpp:237]     Train net output #0: tqn_loss = 17.5 (* 0 = 0 loss)
I1126 15:00:00.1 1 solver.cpp:237]     Train net output #1: tqn_loss_d = 1.9
I1126 15:00:00.1 1 solver.cpp:237]     Train net output #2: triplet_loss = 0.8 (* 1 = 0.8 loss)
I1126 15:00:00.2 1 sgd_solver.cpp:105] Iteration 0, lr = 0.01
I1126 15:00:01.1 1 solver.cpp:218] Iteration 20 (21.5 iter/s, 0.93s/20 iters), loss = 0.61
I1126 15:00:01.1 1 solver.cpp:237]     Train net output #0: tqn_loss = 12.25 (* 0 = 0 loss)
I1126 15:00:01.1 1 solver.cpp:237]     Train net output #1: tqn_loss_d = 1.5
I1126 15:00:01.1 1 solver.cpp:237]     Train net output #2: triplet_loss = 0.61 (* 1 = 0.61 loss)
"""


def test_parse_outputs_by_iteration():
    curves = caffe_log.parse(LOG)
    assert curves["loss"] == [(0, 0.8), (20, 0.61)]
    assert curves["triplet_loss"] == [(0, 0.8), (20, 0.61)]
    assert curves["tqn_loss"] == [(0, 17.5), (20, 12.25)]
    assert curves["tqn_loss_d"] == [(0, 1.9), (20, 1.5)]


def test_plot_writes_png(tmp_path):
    path = tmp_path / "fig.png"
    report.plot_curves([("a", caffe_log.parse(LOG))], str(path), "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
