"""`--dataset images` end to end through the command line: the user's own labelled images (a
class-folder tree, a train/ + test/ tree, list files) -> main job -> table; search with the run's
model; bad input exits 2 naming the problem. The images are scikit-learn's digits written as PNG
files (tests/image_trees.py); trainings are a few iterations (the point is the plumbing)."""
import json
import os
import subprocess
import sys

import pytest

from data_prep.build import BuildSpec, build
from data_prep.errors import DataPrepError
from prototxt import description as D
from prototxt import tqn_params

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import image_trees as T  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(args, caffe_build):
    """Runs a shell entry point as a user would (no GLOG settings of the test session)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLOG_")}
    env.update({k: caffe_build[k] for k in ("CAFFE_ROOT", "CAFFE_BUILD", "TQN_PYTHON") if k in caffe_build})
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def main_job(caffe_build, out, *args):
    return cli(["bash", "tools/main_job.sh", "--dataset", "images", "--bits", "12", "--iters", "20", "10",
                "--out", str(out), *args], caffe_build)


@pytest.fixture(scope="module")
def tree_run(tmp_path_factory, caffe_build):
    base = tmp_path_factory.mktemp("own")
    root = T.class_tree(str(base / "mydigits"))
    out = base / "run"
    return root, out, main_job(caffe_build, out, "--root", root)


def test_class_folder_tree_end_to_end(tree_run):
    root, out, r = tree_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # the table names the user's data set, with no paper rows beside it
    assert "images: mydigits / cpu scale / protocol stratified" in r.stdout
    assert "| BC with TQN |" in r.stdout and "(paper)" not in r.stdout
    summary = json.load(open(out / "results" / "summary.json"))
    assert summary["dataset_name"] == "images: mydigits" and summary["protocol"] == "stratified"
    # quiet: Caffe's own log is in the run's files, not on the console; progress lines are
    console = r.stdout + r.stderr
    assert "net.cpp" not in console and "Initializing net" not in console
    assert " s left" in console
    assert "net.cpp" in open(out / "12bits" / "blobs" / "step1.log").read()
    params = json.load(open(out / "12bits" / "params.json"))["inputs"]
    assert params["tqn"]["alpha_d"] == tqn_params.table_i_alpha_d("cifar10", 12)   # 10 classes


def test_search_one_image_and_a_folder(tree_run, caffe_build):
    root, out, r = tree_run
    assert r.returncode == 0
    image = os.path.join(root, "digit3", sorted(os.listdir(os.path.join(root, "digit3")))[0])
    s = cli([sys.executable, "-m", "tools.search", str(out / "12bits"), image, "-k", "5", "--json"], caffe_build)
    assert s.returncode == 0, s.stderr[-2000:]
    answer = json.loads(s.stdout)
    hits = answer["results"][0]["neighbours"]
    assert len(hits) == 5 and [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(h["class"].startswith("digit") and os.path.exists(os.path.join(root, h["id"])) for h in hits)
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
    # the image itself is in the database: its code is at distance 0 from the first hit
    assert hits[0]["distance"] == 0
    folder = cli([sys.executable, "-m", "tools.search", str(out / "12bits"), os.path.join(root, "digit3"),
                  "-k", "2"], caffe_build)
    assert folder.returncode == 0 and folder.stdout.count("distance") >= 2 * 16
    bad = cli([sys.executable, "-m", "tools.search", str(out / "12bits"), str(out / "nothing")], caffe_build)
    assert bad.returncode == 2 and "no such image" in bad.stderr


def test_features_scale_on_own_images_and_search(tmp_path, caffe_build):
    # a backbone made by the test (a conv + BN + global pool, 5-d features): nothing downloaded
    from test_features import MEAN, make_backbone
    deploy, weights, _ = make_backbone(str(tmp_path))
    root = T.class_tree(str(tmp_path / "mydigits"))
    out = tmp_path / "run"
    r = main_job(caffe_build, out, "--root", root, "--scale", "features", "--input-size", "12",
                 "--backbone-deploy", deploy, "--backbone-weights", weights,
                 "--backbone-mean", ",".join(str(m) for m in MEAN))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "images: mydigits / features scale (custom at 12) / protocol stratified" in r.stdout
    assert "| BC with TQN |" in r.stdout and "net.cpp" not in r.stdout + r.stderr
    record = json.load(open(out / "features" / "custom-12" / "features.json"))
    assert record["dimension"] == 5 and record["inputs"]["input_size"] == 12
    data = json.load(open(out / "data-features" / "dataset.json"))
    assert data["images"] == str(out / "data") and data["feature_training"]["rows"] == 2 * data["counts"]["train"]
    params = json.load(open(out / "12bits" / "params.json"))["inputs"]
    assert params["scale"] == "features" and params["data"] == str(out / "data-features")
    # search: the new image goes through the same backbone, then the head; it is in the database
    image = os.path.join(root, "digit3", sorted(os.listdir(os.path.join(root, "digit3")))[0])
    s = cli([sys.executable, "-m", "tools.search", str(out / "12bits"), image, "-k", "3", "--json"], caffe_build)
    assert s.returncode == 0, s.stderr[-2000:]
    hits = json.loads(s.stdout)["results"][0]["neighbours"]
    assert len(hits) == 3 and hits[0]["distance"] == 0
    assert "net.cpp" in open(out / "12bits" / "logs" / "search.log").read()
    # compare on the same data folder: the classical rows hash the backbone's features
    c = cli([sys.executable, "-m", "tools.compare", "--dataset", "images", "--scale", "features",
             "--data", str(out / "data-features"), "--bits", "12", "--iters", "20", "10",
             "--methods", "tqn", "lsh", "--out", str(tmp_path / "compare")], caffe_build)
    assert c.returncode == 0, c.stderr[-2000:]
    table = (tmp_path / "compare" / "results" / "table2.md").read_text()
    assert "LSH (custom features)" in table and "none (backbone features)" in table
    # the features scale on an image build (not features) is refused, naming what to do
    wrong = cli([sys.executable, "-m", "tools.train", "--data", str(out / "data"), "--dataset", "images",
                 "--scale", "features", "--bits", "12", "--iters", "2", "1", "--out", str(tmp_path / "wrong")],
                caffe_build)
    assert wrong.returncode == 2 and "needs a features data folder" in wrong.stderr
    # a rerun finds everything done
    again = main_job(caffe_build, out, "--root", root, "--scale", "features", "--input-size", "12",
                     "--backbone-deploy", deploy, "--backbone-weights", weights,
                     "--backbone-mean", ",".join(str(m) for m in MEAN))
    assert again.returncode == 0 and "nothing to do" in again.stdout
    bad = main_job(caffe_build, tmp_path / "bad", "--root", root, "--backbone-deploy", deploy)
    assert bad.returncode == 2 and "--backbone-weights" in bad.stderr


def test_train_test_tree_with_database_is_query(tmp_path, caffe_build):
    root = T.set_tree(str(tmp_path / "sets"))
    r = main_job(caffe_build, tmp_path / "run", "--root", root, "--database-is-query")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "protocol given-dsh" in r.stdout
    split = json.load(open(tmp_path / "run" / "data" / "splits" / "given-dsh" / "split.json"))
    assert split["counts"] == {"train": 150, "query": 50, "database": 50} and split["database_is_query"]
    assert all(line.startswith("test/") for line in
               open(tmp_path / "run" / "data" / "splits" / "given-dsh" / "query.txt"))


def test_list_files_per_set_and_with_a_set_column(tmp_path):
    root = T.list_files(str(tmp_path / "lists"))
    per_set = build(BuildSpec(dataset="images", out=str(tmp_path / "a"), train_list=f"{root}/train.txt",
                              query_list=f"{root}/query.txt", epochs=1, quiet=True))
    column = build(BuildSpec(dataset="images", out=str(tmp_path / "b"), list=f"{root}/all.txt", epochs=1,
                             quiet=True))
    for m in (per_set, column):
        assert m["protocol"] == "given" and m["counts"] == {"train": 150, "query": 50, "database": 150}
        assert m["database_is_train"] and m["channels"] == 1
    assert open(tmp_path / "a" / "splits" / "given" / "query.txt").read() == \
        open(tmp_path / "b" / "splits" / "given" / "query.txt").read()


def test_list_paths_must_stay_inside_the_root(tmp_path, caffe_build):
    root = T.list_files(str(tmp_path / "lists"))
    os.makedirs(tmp_path / "lists" / "sub")
    with open(tmp_path / "lists" / "sub" / "train.txt", "w") as f:
        f.write(open(f"{root}/train.txt").read().replace("img/", "../img/"))
    with pytest.raises(DataPrepError, match="leaves the data root"):
        build(BuildSpec(dataset="images", out=str(tmp_path / "x"), train_list=str(tmp_path / "lists/sub/train.txt"),
                        query_list=f"{root}/query.txt", root=str(tmp_path / "lists" / "sub"), quiet=True))
    r = cli(["bash", "tools/main_job.sh", "--dataset", "images", "--out", str(tmp_path / "y"),
             "--train-list", str(tmp_path / "lists/sub/train.txt"), "--query-list", f"{root}/query.txt",
             "--root", str(tmp_path / "lists" / "sub")], caffe_build)
    assert r.returncode == 2 and "leaves the data root" in r.stderr and "Traceback" not in r.stderr


def test_an_image_in_two_sets_is_refused(tmp_path):
    root = T.list_files(str(tmp_path / "lists"))
    with pytest.raises(DataPrepError, match="also in the train list"):
        build(BuildSpec(dataset="images", out=str(tmp_path / "x"), train_list=f"{root}/train.txt",
                        query_list=f"{root}/query.txt", database_list=f"{root}/train.txt", quiet=True))


def test_images_configuration_is_derived_from_the_data():
    cfg = D.config("images", "cpu", classes=100)
    assert cfg["classes"] == 100 and cfg["backbone"] == "cifar_quick"
    assert tqn_params.table_i_row(10) == "cifar10" and tqn_params.table_i_row(5000) == "inshop"
    assert D.tqn_parameters("images", "cpu", 24, classes=10)["alpha_d"] == 5.46
    assert D.tqn_parameters("images", "cpu", 24, classes=10, alpha_d_value=3.0)["alpha_d"] == 3.0
    with pytest.raises(ValueError, match="number of classes"):
        D.alpha_d("images", "cpu", 12)
    assert "images" in D.datasets()


def test_cifar_layout_repack_is_named_by_its_archive_without_the_papers_rows(tmp_path, monkeypatch, capsys):
    """Another data set repacked into CIFAR-10's binary layout (its own batches.meta.txt names):
    tables name it by its archive and show none of the paper's CIFAR-10 figures; CIFAR-10 itself
    keeps both. The replication refuses it."""
    import data_prep.readers
    from data_prep.fakes import fake_cifar10, write_cifar10_binary
    from tools.pipeline import report
    read = data_prep.readers.read_cifar10
    monkeypatch.setattr(data_prep.readers, "read_cifar10", lambda p: read(p, expected=None))
    images, labels = fake_cifar10(6, seed=3)
    manifests = {}
    for name, classes in (("own", [f"kind {c}" for c in range(10)]), ("std", None)):
        archive = write_cifar10_binary(str(tmp_path / f"{name}.tar.gz"), images, labels,
                                       **({"class_names": classes} if classes else {}))
        out = tmp_path / name
        build(BuildSpec(dataset="cifar10", archive=archive, out=str(out), protocol="dsh", quiet=True))
        manifests[name] = json.load(open(out / "dataset.json"))
    own, std = manifests["own"], manifests["std"]
    assert own["repacked"] is True and std["repacked"] is False
    assert report.dataset_name(own) == "cifar10 layout: own.tar.gz" and report.dataset_name(std) == "cifar10"
    assert report.cited_rows([12], report.paper_dataset(own), "dsh") == []
    assert report.cited_rows([12], report.paper_dataset(std), "dsh")
    from tools import replicate
    code = replicate.main(["table2", "--scale", "cpu", "--archive", str(tmp_path / "own.tar.gz"),
                           "--out", str(tmp_path / "replication"), "--quiet"])
    assert code == 2 and "not CIFAR-10's" in capsys.readouterr().err
