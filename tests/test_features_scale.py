"""The features scale: fixed backbone features (data_prep.features), mirrored seeded lists, the
generated fc6/fc7 stand-in nets, and `tools.replicate all --scale features` over several seeds
(mean ± sd), on a tiny fake CIFAR-10 and a backbone made by the test (nothing downloaded)."""
import json
import os
import sys

import numpy as np
import pytest

import data_prep.readers
from data_prep import features as F
from data_prep.fakes import fake_cifar10, write_cifar10_binary
from data_prep.triplets import load_triplets, mirror_choice
from prototxt import description as D
from prototxt import generate as G
from tools import replicate as R
from tools.pipeline import report

sys.path.insert(0, os.path.dirname(__file__))
from test_features import MEAN, make_backbone  # noqa: E402

READ_CIFAR10 = data_prep.readers.read_cifar10


def test_mirror_choice_is_a_seeded_fair_coin_per_entry():
    rows = np.arange(3000).reshape(-1, 3) % 100
    a, b = mirror_choice(rows, 100, 7, 0, 2), mirror_choice(rows, 100, 7, 0, 2)
    np.testing.assert_array_equal(a, b)
    assert ((a == rows) | (a == rows + 100)).all()
    share = (a >= 100).mean()
    assert 0.45 < share < 0.55
    assert not np.array_equal(a, mirror_choice(rows, 100, 8, 0, 2))
    assert not np.array_equal(a, mirror_choice(rows, 100, 7, 1, 2))


def test_feature_head_net_has_the_fc6_fc7_stand_ins_and_no_caffe_mirror():
    net = G.train_net("cifar10", "features", 48, 1, "F/lmdb/train", "F/triplets.txt")
    width = D.BACKBONES["feature_head"]["width"]
    for name in ("fc6", "fc7"):
        assert f'name: "{name}"' in net and f"num_output: {width}" in net
    assert net.count('type: "Dropout"') == 2 and "mirror" not in net and "mean_file" not in net
    assert D.tqn_parameters("cifar10", "features", 48)["alpha_d"] == \
        D.tqn_parameters("cifar10", "paper", 48)["alpha_d"]


def test_the_default_backbone_is_the_descriptions():
    assert F.DEFAULT_BACKBONE == (D.FEATURE_BACKBONE["backbone"], D.FEATURE_BACKBONE["input_size"])
    assert D.REPLICATION_SCALES["features"]["backbone"] == F.DEFAULT_BACKBONE[0]


def test_seed_mean_rows_mean_and_sample_sd():
    rows = [dict(method="TQN", features="learned", bits=12, protocol="dsh", source="measured",
                 map_tie_aware=v, map_index_order=v, precision_radius2=None, real_map=v + 0.1,
                 seeds=f"s{i}", warnings=i % 2, wall_seconds=10.0 * i, net="n", iterations=1)
            for i, v in enumerate((0.2, 0.4, 0.6))]
    (row,) = report.seed_mean_rows(rows)
    assert row["map_tie_aware"] == pytest.approx(0.4) and row["map_sd"] == pytest.approx(0.2)
    assert row["real_map_sd"] == pytest.approx(0.2) and row["seed_count"] == 3 and row["warnings"] == 1
    table = report.method_table([row], [12], "t")
    assert "0.400 ± 0.200" in table and "0.500 ± 0.200" in table


def _evaluation(rf, bc):
    return dict(real=dict(map=rf), binary=dict(map_tie_aware=bc, map_index_order=bc - 0.01))


def test_table3_over_seeds_by_hand():
    # two seeds: step 1 RF 0.5 / 0.6, BC 0.4 / 0.45; step 2 RF 0.55 / 0.66, BC 0.5 / 0.6
    res = {48: {1: [_evaluation(0.5, 0.4), _evaluation(0.6, 0.45)],
                2: [_evaluation(0.55, 0.66 - 0.16), _evaluation(0.66, 0.6)]}}
    md, rows = report.table3(res, [48], "cifar10", "cifar10-2")
    by = {r["row"]: r for r in rows}
    assert by["RF with triplet"]["value"] == pytest.approx(0.55)
    assert by["RF with triplet"]["value_sd"] == pytest.approx(np.std([0.5, 0.6], ddof=1))
    assert by["RF with triplet"]["change_vs_rf_triplet"] is None
    # each seed's change against its own RF with triplet: (0.4 - 0.5) / 0.5 = -20%, (0.45 - 0.6) / 0.6 = -25%
    assert by["BC with triplet"]["change_vs_rf_triplet"] == pytest.approx(-0.225)
    assert by["BC with triplet"]["change_sd"] == pytest.approx(np.std([-0.2, -0.25], ddof=1))
    assert by["BC with TQN"]["value"] == pytest.approx(0.55) and by["BC with TQN"]["seeds"] == 2
    assert by["RF with TQN"]["change_vs_rf_triplet"] == pytest.approx(0.1)      # +10% at both seeds
    assert by["RF with TQN"]["change_sd"] == pytest.approx(0.0, abs=1e-12)
    assert "0.550 ± 0.071" in md and "(-22.50% ± 3.54%)" in md and "over 2 seeds" in md
    # one seed: the single-run table, no sd
    md1, rows1 = report.table3({48: {1: _evaluation(0.5, 0.4), 2: _evaluation(0.55, 0.5)}}, [48],
                               "cifar10", "cifar10-2")
    assert "±" not in md1 and rows1[1]["change_vs_rf_triplet"] == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="same seeds"):
        report.table3({48: {1: [_evaluation(0.5, 0.4)], 2: []}}, [48], "cifar10", "cifar10-2")


def test_seed_curve_mean_and_sd_at_common_iterations():
    curves = [[(0, 1.0), (10, 0.5), (20, 0.2)], [(0, 3.0), (10, 0.7)]]
    assert report.seed_curve(curves) == [(0, 2.0, pytest.approx(np.sqrt(2))), (10, pytest.approx(0.6),
                                                                              pytest.approx(np.std([0.5, 0.7], ddof=1)))]
    assert report.seed_curve([[(0, 1.0)]]) == [(0, 1.0, 0.0)]


@pytest.fixture(scope="module")
def replicated(tmp_path_factory, caffe_build):
    os.environ.setdefault("CAFFE_BUILD", caffe_build["CAFFE_BUILD"])
    mp = pytest.MonkeyPatch()
    mp.setattr(data_prep.readers, "read_cifar10", lambda p: READ_CIFAR10(p, expected=None))
    mp.setitem(D.REPLICATION_SCALES["features"], "input_size", 12)
    root = tmp_path_factory.mktemp("features_scale")
    deploy, weights, _ = make_backbone(str(root))
    images, labels = fake_cifar10(20, seed=4)                  # 100 train, 20 test images
    archive = write_cifar10_binary(str(root / "cifar-10-binary.tar.gz"), images, labels)
    argv = ["all", "--scale", "features", "--archive", archive, "--bits", "12", "--iters", "6", "3",
            "--seeds", "1", "2", "--methods", "triplet", "tqn", "dsh", "lsh", "sdh",
            "--backbone-deploy", deploy, "--backbone-weights", weights,
            "--backbone-mean", ",".join(str(m) for m in MEAN), "--out", str(root / "out"), "--quiet"]
    assert R.main(argv) == 0
    yield root, argv
    mp.undo()


def test_features_scale_replication_over_seeds(replicated):
    root, _ = replicated
    out = root / "out"
    summary = json.loads((out / "results" / "summary.json").read_text())
    assert summary["seeds"] == [1, 2] and summary["scale"] == "features"
    rows = summary["tables"]["table2_cifar10-2"]
    methods = {r["method"] for r in rows}
    assert {"Triplet only", "TQN (paper's settings)", "DSH", "LSH", "SDH"} <= methods
    assert all(r["seed_count"] == 2 and r["map_sd"] is not None for r in rows)
    assert "±" in (out / "results" / "table2_dsh.md").read_text()
    table3 = (out / "results" / "table3_cifar10-2.md").read_text()
    assert "±" in table3 and "over 2 seeds" in table3
    assert all(r["seeds"] == 2 for r in summary["tables"]["table3_cifar10-2"])
    assert (out / "results" / "fig1_step1_losses.png").stat().st_size > 1000
    # each seed trained on its own mirrored lists, over the 2n-row feature LMDB
    work = out / "work"
    lists = {s: load_triplets(str(work / "data" / f"features-seed{s}" / "triplets.txt")) for s in (1, 2)}
    assert not np.array_equal(lists[1], lists[2])
    assert lists[1].max() >= 100 and lists[1].min() < 100
    feats, _ = F.read_feature_lmdb(str(work / "data" / "features-seed1" / "lmdb" / "train"))
    originals, _ = F.read_feature_lmdb(str(work / "features" / "custom-12" / "lmdb" / "train"))
    mirrors, _ = F.read_feature_lmdb(str(work / "features" / "custom-12" / "lmdb" / "train_mirror"))
    np.testing.assert_array_equal(feats, np.concatenate([originals, mirrors]))
    # the database blobs are the originals' codes: as many rows as train images
    for s in (1, 2):
        assert (work / "runs" / f"seed{s}" / "12bits" / "tqn" / "params.json").exists()
        meta = json.loads((work / "blobs" / f"seed{s}" / "12bits" / "tqn" / "cifar10-2" / "meta.json").read_text())
        assert meta["counts"]["database"] == 100


def test_features_scale_rerun_does_nothing(replicated, capsys):
    root, argv = replicated
    capsys.readouterr()
    assert R.main(argv) == 0
    text = capsys.readouterr().out
    assert "resuming" not in text and "iterations, lr" not in text


def test_choose_backbone_rule():
    results = {("a", 64): dict(bc_map=0.50, ms_per_image=1.0), ("a", 96): dict(bc_map=0.505, ms_per_image=2.0),
               ("b", 96): dict(bc_map=0.60, ms_per_image=5.0), ("b", 128): dict(bc_map=0.605, ms_per_image=9.0),
               ("b", 64): dict(bc_map=0.58, ms_per_image=2.0)}
    assert R.choose_backbone(results, 0.01) == ("b", 96)      # within 0.01 of b's best, cheaper
    assert R.choose_backbone(results, 0.0) == ("b", 128)
    assert R.choose_backbone(results, 0.05) == ("b", 64)


def test_backbone_study_on_held_out_data(tmp_path, caffe_build, capsys):
    os.environ.setdefault("CAFFE_BUILD", caffe_build["CAFFE_BUILD"])
    mp = pytest.MonkeyPatch()
    mp.setattr(data_prep.readers, "read_cifar10", lambda p: READ_CIFAR10(p, expected=None))
    mp.setitem(D.BACKBONE_STUDY, "candidates", (("x", 8), ("x", 12)))
    mp.setitem(D.BACKBONE_STUDY, "bits", 12)
    try:
        deploy, weights, _ = make_backbone(str(tmp_path))
        images, labels = fake_cifar10(1100, seed=6)            # ~550 training images a class
        archive = write_cifar10_binary(str(tmp_path / "cifar-10-binary.tar.gz"), images, labels)
        argv = ["backbone", "--archive", archive, "--out", str(tmp_path / "out"), "--quiet",
                "--backbone-deploy", deploy, "--backbone-weights", weights]
        assert R.main(argv) == 0
        summary = json.loads((tmp_path / "out" / "results" / "backbone_study.json").read_text())
        assert [c["input_size"] for c in summary["candidates"]] == [8, 12]
        assert all(0 < c["bc_map"] <= 1 and c["dimension"] == 5 for c in summary["candidates"])
        assert summary["chosen"]["input_size"] in (8, 12)
        assert "held-out" in (tmp_path / "out" / "results" / "backbone_study.md").read_text()
        capsys.readouterr()
        assert R.main(argv) == 0                                   # every candidate is done
        assert "held-in +" not in capsys.readouterr().out
    finally:
        mp.undo()


def test_study_at_the_features_scale_reuses_the_official_features(tmp_path, caffe_build):
    os.environ.setdefault("CAFFE_BUILD", caffe_build["CAFFE_BUILD"])
    mp = pytest.MonkeyPatch()
    mp.setattr(data_prep.readers, "read_cifar10", lambda p: READ_CIFAR10(p, expected=None))
    mp.setitem(D.REPLICATION_SCALES["features"], "input_size", 8)
    try:
        deploy, weights, _ = make_backbone(str(tmp_path))
        images, labels = fake_cifar10(1100, seed=6)
        archive = write_cifar10_binary(str(tmp_path / "cifar-10-binary.tar.gz"), images, labels)
        argv = ["study", "--scale", "features", "--archive", archive, "--iters", "4", "2",
                "--study-methods", "tqn", "--study-bits", "12", "--out", str(tmp_path / "out"), "--quiet",
                "--backbone-deploy", deploy, "--backbone-weights", weights]
        assert R.main(argv) == 0
        record = json.loads((tmp_path / "out" / "results" / "study.json").read_text())
        assert set(record["results"]) == set(D.STUDY_VARIANTS) and record["chosen"] in D.STUDY_VARIANTS
        work = tmp_path / "out" / "work"
        # the held-out rows' features are the official build's, row for row by item id
        official, _ = F.read_feature_lmdb(str(work / "features" / "custom-8" / "lmdb" / "train"))
        held, _ = F.read_feature_lmdb(str(work / "features" / "custom-8-cifar10-holdout" / "lmdb" / "query"))
        ids = {i: r for r, i in enumerate(F.split_ids(str(work / "data" / "cifar10-2"), "train"))}
        rows = [ids[i] for i in F.split_ids(str(work / "data" / "cifar10-holdout"), "query")]
        np.testing.assert_array_equal(held, official[rows])
    finally:
        mp.undo()
