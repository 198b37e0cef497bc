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


def test_a_resumed_model_counts_every_invocation_of_its_log(tmp_path):
    from tools.pipeline.models import Model
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "step1.log").write_text(RESUMED)       # 70 s + 100.5 s
    (tmp_path / "logs" / "step2.log").write_text(RESUMED)

    def model(steps, label="dqn"):
        return Model(label=label, method="dqn", weights="w", run=str(tmp_path),
                     record=dict(steps=steps), bits=48, dataset="cifar10", scale="features")
    # A record written before resumed steps added their earlier invocations: the log decides.
    assert model({"1": dict(seconds=100.5, resumed_from=20)}).training_seconds() == 170.5
    # A record that already holds more (this run's start-up included) stands.
    assert model({"1": dict(seconds=171.0, resumed_from=20)}).training_seconds() == 171.0
    # A step that was never resumed: its record alone, the log unread.
    assert model({"1": dict(seconds=5.0, resumed_from=0)}).training_seconds() == 5.0
    tqn = {"1": dict(seconds=5.0, resumed_from=0), "2": dict(seconds=1.0, resumed_from=20)}
    assert model(tqn, "tqn").training_seconds(own=True) == 170.5
    assert model(tqn, "tqn").training_seconds() == 175.5


def test_wall_seconds_counts_from_the_last_fresh_start_and_ignores_stamp_disorder():
    def invocation(cmd, *stamps):
        return "".join([f"# {cmd}\n"] + [f"I{t} 7 solver.cpp:239] Iteration 0, loss = 1\n"
                                          for t in stamps])
    log = (invocation("caffe train -solver=s", "1203 10:00:00.0", "1203 10:00:10.0")      # 10 s
           + invocation("caffe train -solver=s", "1203 11:00:00.0", "1203 11:00:05.0")    # 5 s, fresh
           + invocation("caffe train -solver=s -snapshot=s_20.solverstate",
                        "1203 12:00:00.0", "1203 12:00:03.0"))                           # 3 s
    assert caffe_log.wall_seconds(log) == 8.0     # a fresh start drops what came before it
    # Stamps slightly out of order (two glog threads) or the autumn hour repeated: the span
    # runs from the first stamp to the latest, never a year (the repeated hour is not counted:
    # glog's local time stamps do not say which of the two hours they are in).
    threads = invocation("caffe train", "1203 10:00:00.0", "1203 10:00:05.0", "1203 10:00:04.9",
                         "1203 10:00:10.0")
    assert caffe_log.wall_seconds(threads) == 10.0
    autumn = invocation("caffe train", "20261025 02:50:00.0", "20261025 02:10:00.0",
                        "20261025 02:20:00.0")
    assert caffe_log.wall_seconds(autumn) == 0.0
    yearless_autumn = invocation("caffe train", "1025 02:50:00.0", "1025 02:10:00.0")
    assert caffe_log.wall_seconds(yearless_autumn) == 0.0
