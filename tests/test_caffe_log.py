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


RESUMED = """# caffe train -solver=s.prototxt
I1231 23:59:00.0 1 solver.cpp:218] Iteration 0 (0 iter/s, 0.05s/20 iters), loss = 0.9
I1231 23:59:30.0 1 solver.cpp:218] Iteration 20 (1 iter/s, 20s/20 iters), loss = 0.7
I1231 23:59:30.0 1 solver.cpp:237]     Train net output #0: triplet_loss = 0.7 (* 1 = 0.7 loss)
I1231 23:59:50.0 1 solver.cpp:218] Iteration 40 (1 iter/s, 20s/20 iters), loss = 0.6
I1231 23:59:50.0 1 solver.cpp:237]     Train net output #0: triplet_loss = 0.6 (* 1 = 0.6 loss)
I0101 00:00:10.0 1 solver.cpp:218] Iteration 60 (1 iter/s, 20s/20 iters), loss = 0.5
# caffe train -solver=s.prototxt -snapshot=s_iter_20.solverstate
I0101 10:00:00.0 1 solver.cpp:218] Iteration 20 (0 iter/s, 0.05s/20 iters), loss = 0.69
I0101 10:00:00.0 1 solver.cpp:237]     Train net output #0: triplet_loss = 0.69 (* 1 = 0.69 loss)
W0101 10:01:40.5 1 solver.cpp:218] Iteration 40 (1 iter/s, 20s/20 iters), loss = 0.59
"""


def test_a_resumed_invocation_replaces_the_iterations_it_computes_again():
    curves = caffe_log.parse(RESUMED)
    assert curves["loss"] == [(0, 0.9), (20, 0.69), (40, 0.59)]
    assert curves["triplet_loss"] == [(20, 0.69)]


def test_wall_seconds_sums_each_invocation_over_the_new_year():
    # 23:59:00 -> 00:00:10 next day (70 s, across the year's end) + 10:00:00 -> 10:01:40.5
    assert caffe_log.wall_seconds(RESUMED) == 70 + 100.5
    assert caffe_log.wall_seconds(LOG) == 1.0  # one invocation without a command line
    assert caffe_log.wall_seconds("") == 0
    dated = ("# caffe train\nI20261231 23:59:59.5 7 caffe.cpp:197] Use CPU.\n"
             "I20270101 00:00:01.0 7 solver.cpp:239] Iteration 0 (0 iter/s, 0s/50 iters), loss = 1\n")
    assert caffe_log.wall_seconds(dated) == 1.5                  # glog >= 0.6 writes the year
    assert caffe_log.parse(dated)["loss"] == [(0, 1.0)]
