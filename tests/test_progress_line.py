"""Progress lines of `caffe train` runs (tools.pipeline.caffe): a resumed run's rate counts
only the iterations it ran itself."""
import itertools
import sys

from tools.pipeline import caffe as pipeline_caffe


def test_progress_line_counts_from_the_resumed_iteration():
    fresh = pipeline_caffe.progress_line("step 1", 600, 1000, 10.0)
    resumed = pipeline_caffe.progress_line("step 1", 600, 1000, 10.0, since=500)
    assert "60 it/s" in fresh and "7 s left" in fresh
    assert "10 it/s" in resumed and "40 s left" in resumed
    assert "600/1000 (60 %)" in resumed


def test_run_caffe_passes_the_resumed_iteration_to_its_progress(tmp_path, monkeypatch, capsys):
    clock = itertools.chain([0.0], itertools.repeat(10.0))
    monkeypatch.setattr(pipeline_caffe.time, "monotonic", lambda: next(clock))
    fake = ("print('I1203 1 solver.cpp:218] Iteration 500 (0 iter/s, 0s/20 iters), loss = 0.6');"
            "print('I1203 1 solver.cpp:218] Iteration 600 (1 iter/s, 1s/20 iters), loss = 0.5',"
            " flush=True)")
    pipeline_caffe.run_caffe([sys.executable, "-c", fake], str(tmp_path / "step1.log"), 1000,
                             "step 1", resumed=500)
    out = capsys.readouterr().out
    assert "600/1000 (60 %), loss 0.5, 10 it/s, 10 s, 40 s left" in out
    assert "500/1000" not in out    # the snapshot's own iteration: no rate to show yet
    assert "Iteration 600" in (tmp_path / "step1.log").read_text()
