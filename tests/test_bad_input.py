"""Bad input and faults, as a hostile but realistic user makes them: every case gets a clear
message naming the file, record or argument, exit status 2 (Ctrl-C: 130), and leaves nothing
half-written; or a correct recovery that says what it did. Each case is built here.

(The archive readers' own cases, truncated / bad-label / link-member / pickle-payload archives,
are in test_data_prep_readers.py; here they go through the command line.)
"""
import json
import os
import pickle
import subprocess
import tarfile

import cv2
import numpy as np
import pytest

from data_prep import build, inspect_lmdb
from data_prep.fakes import fake_cifar10, write_cifar10_binary, write_cifar10_python
from tools import evaluate as evaluate_cli
from tools import extract as extract_cli
from tools import retrieval as retrieval_cli
from tools import train as train_cli
from tools.pipeline import extraction as X
from tools.pipeline import snapshots as S
from tools.pipeline import training as T


def leftovers(root):
    return [os.path.join(d, f) for d, dirs, files in os.walk(root) for f in files + dirs
            if ".tmp-" in f or ".old-" in f]


def fails(capsys, code, call, *patterns):
    """Runs a CLI main(argv) expecting exit `code` and each pattern in its stderr."""
    assert call() == code
    err = capsys.readouterr().err
    for p in patterns:
        assert p in err, err
    return err


# ---------------------------------------------------------------- data preparation

def test_archives_through_the_command_line(tmp_path, capsys):
    images, labels = fake_cifar10(4, seed=0)
    good = tmp_path / "cifar-10-binary.tar.gz"
    write_cifar10_binary(str(good), images, labels)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    traversal = tmp_path / "traversal.tar.gz"
    with tarfile.open(traversal, "w:gz") as t:
        info = tarfile.TarInfo("cifar-10-batches-bin/../../escape.bin")
        info.size = 0
        t.addfile(info)
    link = tmp_path / "link.tar.gz"
    with tarfile.open(link, "w:gz") as t:
        info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    not_archive = tmp_path / "notes.tar.gz"
    not_archive.write_text("not an archive")
    py = tmp_path / "py"
    write_cifar10_python(str(py), images, labels)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    (py / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    for archive, says in ((truncated, "truncated.tar.gz"), (traversal, "traversal.tar.gz"),
                          (link, "data_batch_1.bin is not a regular file"), (not_archive, "notes.tar.gz"),
                          (py, "refusing to unpickle")):
        out = tmp_path / f"out-{archive.name}"
        fails(capsys, 2, lambda: build.main(["--dataset", "cifar10", "--archive", str(archive),
                                              "--out", str(out), "--quiet"]), "data_prep: error:", says)
        assert not (out / "dataset.json").exists() and not leftovers(out)
        assert not (out / "splits").exists() and not (out / "lmdb").exists()
    assert not marker.exists() and not (tmp_path / "escape.bin").exists()


def _png(path, value=0, size=(6, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((*size, 3), value, np.uint8))


def test_corrupt_and_empty_images_leave_no_half_made_data_set(tmp_path, capsys):
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        for i in range(4):
            _png(root / cls / f"{i}.png", i)
    for broken, content in (("b/3.png", b"broken"), ("a/2.png", b"")):
        (root / broken).write_bytes(content)
        out = tmp_path / "o"
        fails(capsys, 2, lambda: build.main(["--dataset", "images", "--root", str(root), "--out", str(out),
                                              "--query-share", "0.25", "--quiet"]),
              f"{broken}: cannot decode this image")
        # Nothing of the failed build is left: no splits/, no complete lmdb/train, no marker.
        assert not out.exists() or sorted(os.listdir(out)) == [".data_prep.lock"]
        _png(root / broken)


def test_bad_lists_name_their_line(tmp_path, capsys):
    root = tmp_path / "root"
    _png(root / "x" / "a.png")
    _png(root / "x" / "b.png", 5)
    (tmp_path / "secret.png").write_bytes((root / "x" / "a.png").read_bytes())
    os.symlink(tmp_path / "secret.png", root / "x" / "link.png")
    for line, says in (("../secret.png 0", "line 2: '../secret.png' leaves the data root"),
                       (f"{tmp_path / 'secret.png'} 0", "leaves the data root"),
                       ("x/link.png 0", "line 2: 'x/link.png' leaves the data root")):
        lst = tmp_path / "list.txt"
        lst.write_text(f"x/a.png 0\n{line}\n")
        out = tmp_path / "o"
        fails(capsys, 2, lambda: build.main(["--dataset", "images", "--list", str(lst), "--root", str(root),
                                              "--out", str(out), "--quiet"]), says)
        assert not (out / "dataset.json").exists()
    for i, name in enumerate("cdefg"):
        _png(root / "x" / f"{name}.png", i)
    (root / "x" / "b.png").write_bytes(b"")
    lst.write_text("x/a.png 0\nx/c.png 0\n\n# comment\nx/b.png 1\nx/d.png 1\nx/e.png 0\nx/f.png 1\n"
                   "x/g.png 0\n")
    fails(capsys, 2, lambda: build.main(["--dataset", "images", "--list", str(lst), "--root", str(root),
                                          "--out", str(tmp_path / "o2"), "--quiet"]),
          "b.png (listed at", "list.txt: line 5): cannot decode this image")


def test_inshop_name_leaving_the_image_folder_is_refused(tmp_path, capsys):
    (tmp_path / "Eval").mkdir()
    rows = [("img/MEN/Tees/id_00000001/01_1_front.jpg", "id_00000001", "train"),
            ("img/../../../secret/id_00000004/x.jpg", "id_00000004", "query")]
    lines = ["2", "image_name item_id evaluation_status"] + [f"{n}  {i}  {s}" for n, i, s in rows]
    (tmp_path / "Eval" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    fails(capsys, 2, lambda: build.main(["--dataset", "inshop", "--root", str(tmp_path), "--out",
                                          str(tmp_path / "o"), "--splits-only", "--quiet"]),
          "line 4: image name 'img/../../../secret/id_00000004/x.jpg' leaves the image folder")


def test_damaged_lmdb_is_rebuilt_and_named(tmp_path, capsys):
    out = tmp_path / "d"
    assert build.main(["--dataset", "digits", "--out", str(out), "--quiet"]) == 0
    data = out / "lmdb" / "train" / "data.mdb"
    with open(data, "r+b") as f:     # 4 KB overwritten in the middle: same size, same record count
        f.seek(data.stat().st_size // 2)
        f.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    capsys.readouterr()
    fails(capsys, 2, lambda: inspect_lmdb.main([str(out / "lmdb" / "train")]),
          "lmdb/train: the LMDB is damaged", "rerun data_prep.build")
    assert build.main(["--dataset", "digits", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "lmdb/train/data.mdb changed since it was written" in said and "rebuilding" in said
    assert inspect_lmdb.main([str(out / "lmdb" / "train")]) == 0


def test_empty_lmdb_is_said_plainly(tmp_path, capsys):
    import lmdb
    lmdb.open(str(tmp_path / "empty")).close()
    assert inspect_lmdb.main([str(tmp_path / "empty")]) == 0
    out = capsys.readouterr().out
    assert "none: the LMDB is empty" in out and "-0000001" not in out


# ---------------------------------------------------------------- saved blobs, evaluation, search

@pytest.fixture(scope="module")
def blobs(tmp_path_factory, digits_data, caffe_build):
    os.environ.setdefault("CAFFE_BUILD", caffe_build["CAFFE_BUILD"])
    root = tmp_path_factory.mktemp("bad-blobs")
    T.train(T.TrainSpec(data=str(digits_data), dataset="digits", bits=12, out=str(root / "run"),
                        iters=(40, 20), quiet=True))
    out = root / "blobs"
    X.extract(X.ExtractSpec(data=str(digits_data), dataset="digits", bits=12,
                            weights=str(root / "run" / "step2_iter_20.caffemodel"), out=str(out)))
    return out


def damaged(blobs, tmp_path, edit):
    import shutil
    copy = tmp_path / "blobs"
    shutil.copytree(blobs, copy)
    edit(copy)
    return copy


def _save(path, change):
    np.save(path, change(np.load(path)))


CASES = {
    "nan features": (lambda b: _save(b / "query" / "features.npy", lambda f: np.where(
        np.arange(len(f))[:, None] < 5, np.nan, f).astype(np.float32)),
        "query/features.npy: 5 rows hold NaN or infinite values"),
    "inf features": (lambda b: _save(b / "database" / "features.npy", lambda f: f + np.inf),
                     "database/features.npy"),
    "float labels": (lambda b: _save(b / "query" / "labels.npy", lambda x: x + 0.5),
                     "query/labels.npy: labels must be integers"),
    "width": (lambda b: _save(b / "query" / "codes.npy", lambda c: np.zeros((len(c), 6), np.uint8)),
              "query/codes.npy: 12-bit codes (meta.json) are uint8 [n, 2], got uint8"),
    "missing npy": (lambda b: os.unlink(b / "query" / "codes.npy"), "query/codes.npy is missing"),
    "broken meta": (lambda b: (b / "meta.json").write_text('{"bits":'), "meta.json is not a readable"),
    "empty query": (lambda b: [_save(b / "query" / f"{n}.npy", lambda x: x[:0])
                               for n in ("codes", "features", "labels")], "query: the set is empty"),
    "empty database": (lambda b: [_save(b / "database" / f"{n}.npy", lambda x: x[:0])
                                  for n in ("codes", "features", "labels")], "database: the set is empty"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_blobs_are_refused_by_evaluation(blobs, tmp_path, capsys, case):
    edit, says = CASES[case]
    b = damaged(blobs, tmp_path, edit)
    fails(capsys, 2, lambda: evaluate_cli.main([str(b), "--out", str(tmp_path / "ev")]), "evaluate: error:", says)
    assert not (tmp_path / "ev" / "metrics.json").exists() and not leftovers(tmp_path)


def test_search_arguments(blobs, tmp_path, capsys):
    flat, hashed = str(tmp_path / "flat"), str(tmp_path / "hash")
    assert retrieval_cli.main(["build", str(blobs), "--out", flat]) == 0
    assert retrieval_cli.main(["build", str(blobs), "--out", hashed, "--kind", "hash", "--hash-bits", "8"]) == 0
    capsys.readouterr()
    q = ["--blobs", str(blobs), "--rows", "0"]
    fails(capsys, 2, lambda: retrieval_cli.main(["query", flat, *q, "-k", "0"]), "-k 0:")
    fails(capsys, 2, lambda: retrieval_cli.main(["query", flat, "--blobs", str(blobs), "--rows",
                                                 "99999999999999999999"]), "--rows 99999999999999999999:")
    for nflip in ("9", "-1"):   # more bits than the 8-bit keys, or negative: faiss would never return
        fails(capsys, 2, lambda: retrieval_cli.main(["query", hashed, *q, "--nflip", nflip]),
              f"--nflip {nflip}: a hash index of 8-bit keys flips 0 to 8 bits")
    assert retrieval_cli.main(["query", hashed, *q, "--nflip", "8", "-k", "3"]) == 0
    capsys.readouterr()
    for name in ("labels", "codes"):
        np.save(os.path.join(flat, f"{name}.npy"), np.load(os.path.join(flat, f"{name}.npy"))[:0])
    fails(capsys, 2, lambda: retrieval_cli.main(["query", flat, *q]), "the index holds 0 codes")


def test_extract_without_a_data_set(tmp_path, capsys):
    fails(capsys, 2, lambda: extract_cli.main(["--data", str(tmp_path), "--dataset", "digits", "--bits", "12",
                                               "--weights", str(tmp_path / "w.caffemodel"),
                                               "--out", str(tmp_path / "b")]),
          "dataset.json is missing: build the data set first")


# ---------------------------------------------------------------- unwritable output folders

@pytest.fixture
def small_mount(tmp_path):
    """mount(options) -> a folder on a tiny tmpfs (as root, where mounting is allowed)."""
    mounted = []

    def make(options):
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        where = tmp_path / f"mnt{len(mounted)}"
        where.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True).returncode != 0:
            pytest.skip("mount -t tmpfs is not allowed here")
        mounted.append(where)
        return where
    yield make
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


@pytest.mark.parametrize("options, says", [("size=8k", "No space left on device; free space there"),
                                           ("ro,size=8k", "Read-only file system; the folder is not writable")])
def test_full_or_read_only_output(blobs, small_mount, capsys, options, says):
    where = small_mount(options)
    fails(capsys, 2, lambda: evaluate_cli.main([str(blobs), "--out", str(where / "ev")]), "evaluate: error:", says)
    fails(capsys, 2, lambda: build.main(["--dataset", "digits", "--out", str(where / "d"), "--quiet"]),
          "data_prep: error:", says)
    assert not leftovers(where) and not (where / "ev" / "metrics.json").exists()
    assert not (where / "d" / "dataset.json").exists() and not (where / "d" / "splits").exists()


def test_read_only_output_without_root(blobs, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders (the tmpfs case above covers it)")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        fails(capsys, 2, lambda: evaluate_cli.main([str(blobs), "--out", str(ro / "ev")]), "Permission denied")
    finally:
        ro.chmod(0o755)


# ---------------------------------------------------------------- snapshots and initial weights

def _spec(data, out, **kw):
    return T.TrainSpec(data=str(data), dataset="digits", bits=12, out=str(out), quiet=True,
                       snapshots=4, steps=(1,), **kw)


def test_damaged_snapshots_are_set_aside_for_the_previous_good_one(tmp_path, digits_data, caffe_build, capsys):
    os.environ.setdefault("CAFFE_BUILD", caffe_build["CAFFE_BUILD"])
    T.train(_spec(digits_data, tmp_path, iters=(80, 10)))
    for name in ("params.json", "step1_iter_80.caffemodel", "step1_iter_80.solverstate"):
        (tmp_path / name).unlink()
    (tmp_path / "step1_iter_60.caffemodel").write_bytes(b"")              # empty model
    state = tmp_path / "step1_iter_40.solverstate"                         # cut short by a full disk
    state.write_bytes(state.read_bytes()[:40])
    assert S.state_problem(str(state), 40) and "holds no layer" in S.model_problem(
        str(tmp_path / "step1_iter_60.caffemodel"))
    assert S.state_problem(str(tmp_path / "step1_iter_20.solverstate"), 20) is None
    capsys.readouterr()
    T.train(_spec(digits_data, tmp_path, iters=(80, 10)))
    out = capsys.readouterr().out
    assert "snapshot of iteration 60 cannot be resumed from" in out
    assert "snapshot of iteration 40 cannot be resumed from" in out
    assert "resuming from iteration 20" in out
    assert (tmp_path / "step1_iter_60.caffemodel.damaged").exists()
    assert S.model_problem(str(tmp_path / "step1_iter_80.caffemodel")) is None


def test_weights_with_other_layer_names_or_shapes_are_refused(tmp_path, digits_data, caffe_build, capsys):
    from caffe.proto import caffe_pb2
    os.environ.setdefault("CAFFE_BUILD", caffe_build["CAFFE_BUILD"])
    T.train(_spec(digits_data, tmp_path / "a", iters=(20, 10)))
    good = tmp_path / "a" / "step1_iter_20.caffemodel"
    net = caffe_pb2.NetParameter()
    net.ParseFromString(good.read_bytes())
    for lay in net.layer:
        if lay.name == "ip1":
            lay.name = "ip1_renamed"
    renamed = tmp_path / "renamed.caffemodel"
    renamed.write_bytes(net.SerializeToString())
    args = ["--data", str(digits_data), "--dataset", "digits", "--bits", "12", "--iters", "20", "10",
            "--steps", "1", "--quiet"]
    fails(capsys, 2, lambda: train_cli.main([*args, "--out", str(tmp_path / "b"), "--weights", str(renamed)]),
          "does not fit the net's ip1, ip2: no layer ip1", "random initialisation")
    assert not list((tmp_path / "b").glob("*.caffemodel"))
    with pytest.raises(Exception, match=r"other shapes: ip2 \[\[128, 128\], \[128\]\] \(the net needs "
                                        r"\[\[64, 128\], \[64\]\]\)"):
        S.check_initial_weights(str(good), {"ip2": [(64, 128), (64,)]})
    assert train_cli.main([*args, "--out", str(tmp_path / "c"), "--weights", str(good)]) == 0
    assert "holds the backbone's ip1, ip2 with the net's shapes" in capsys.readouterr().out


def test_paper_scale_step1_copies_alexnet_conv1_to_fc7(tmp_path, caffe_build, monkeypatch):
    """Two iterations of the paper-scale step 1 (AlexNet + latent layer, 227 x 227) with one triplet
    a batch and learning rate 0: the model Caffe saves holds the --weights file's conv1 ... fc7."""
    import caffe
    from prototxt import generate as G
    os.environ.setdefault("CAFFE_BUILD", caffe_build["CAFFE_BUILD"])
    import data_prep.readers
    real = data_prep.readers.read_cifar10
    monkeypatch.setattr(data_prep.readers, "read_cifar10", lambda p: real(p, expected=None))  # a small one
    images, labels = fake_cifar10(4, seed=0)
    archive = tmp_path / "cifar-10-binary.tar.gz"
    write_cifar10_binary(str(archive), images, labels)
    data = tmp_path / "data"
    assert build.main(["--dataset", "cifar10", "--archive", str(archive), "--out", str(data),
                       "--resize", "256x256", "--protocol", "cifar10-2", "--singletons", "negatives", "--epochs", "1", "--quiet"]) == 0
    net_path = tmp_path / "alexnet.prototxt"
    net_path.write_text(G.extract_net("cifar10", "paper", 12, str(data / "lmdb" / "train"), 1,
                                      str(data / "mean.binaryproto")))
    net = caffe.Net(str(net_path), caffe.TEST)
    rng = np.random.default_rng(0)
    names = G.backbone_parameter_layers("alexnet")
    assert names == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    for name in names:
        for blob in net.params[name]:
            blob.data[...] = rng.normal(0, 0.01, blob.data.shape)
    weights = tmp_path / "alexnet_random.caffemodel"
    net.save(str(weights))
    expected = {n: [b.data.copy() for b in net.params[n]] for n in names}
    del net
    run = tmp_path / "run"
    T.train(T.TrainSpec(data=str(data), dataset="cifar10", scale="paper", bits=12, out=str(run),
                        weights=str(weights), iters=(2, 1), steps=(1,), batch_triplets=1,
                        base_lr=(0.0, 0.0), snapshots=1, quiet=True))
    trained = caffe_pb2_layers(run / "step1_iter_2.caffemodel")
    for name in names:
        for want, got in zip(expected[name], trained[name]):
            np.testing.assert_array_equal(got.reshape(want.shape), want)


def caffe_pb2_layers(path):
    from caffe.proto import caffe_pb2
    net = caffe_pb2.NetParameter()
    net.ParseFromString(path.read_bytes())
    return {lay.name: [np.array(b.data, np.float32) for b in lay.blobs] for lay in net.layer if lay.blobs}



# ---------------------------------------------------------------- interrupted training resumes

def _train_cmd(data, out):
    return ["python", "-m", "tools.train", "--data", str(data), "--dataset", "digits", "--bits", "12",
            "--out", str(out), "--iters", "8000", "10", "--steps", "1", "--snapshots", "4"]


@pytest.mark.parametrize("how", ["sigint-group", "sigint-caffe", "sigkill"])
def test_interrupted_training_resumes_to_the_uninterrupted_weights(tmp_path, digits_data, subprocess_env, how):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it), SIGINT to caffe alone, and
    SIGKILL mid-step; the rerun resumes and ends with the weights of an uninterrupted run (the
    digits net has no dropout and the triplet position is restored: equal to the last bit)."""
    import signal
    env = dict(subprocess_env, GLOG_minloglevel="2")
    run = tmp_path / "interrupted"
    proc = subprocess.Popen(_train_cmd(digits_data, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    for line in proc.stdout:           # progress lines: "  step 1: 2400/8000 (30 %), ..."
        if line.startswith("  step 1: ") and "/8000" in line and \
                int(line.split("step 1: ")[1].split("/")[0]) >= 2400:
            break
    if how == "sigint-group":
        os.killpg(proc.pid, signal.SIGINT)
    elif how == "sigint-caffe":
        child = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        os.kill(int(child[0]), signal.SIGINT)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    if how == "sigkill":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, err
        assert "step 1 stopped before iteration 8000; its snapshot of iteration" in err
        assert "run the same command again to resume; step 1 is not marked done" in err
        assert "Traceback" not in err
    assert not (run / "step1_iter_8000.caffemodel").exists()
    record = json.loads((run / "params.json").read_text()) if (run / "params.json").exists() else {}
    assert "1" not in record.get("steps", {})
    resumed = subprocess.run(_train_cmd(digits_data, run), capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from iteration" in resumed.stdout
    straight = subprocess.run(_train_cmd(digits_data, tmp_path / "straight"), capture_output=True, text=True,
                              env=env)
    assert straight.returncode == 0, straight.stderr
    a = caffe_pb2_layers(run / "step1_iter_8000.caffemodel")
    b = caffe_pb2_layers(tmp_path / "straight" / "step1_iter_8000.caffemodel")
    assert sorted(a) == ["hash_fc", "ip1", "ip2"]
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_array_equal(x, y)
