"""Extracts the latent layer ("hash") of a trained net to saved blobs.

    python -m tools.extract --data data/digits --dataset digits --scale cpu --bits 12 \
        --weights runs/x/step2_iter_1800.caffemodel --out runs/x/blobs/step2

The net reads each set's LMDB with Caffe's stock Data layer and the test-time transform
(centre crop, no mirror), generated from prototxt/description.py like the training nets.

Saved blobs (the format `tools.evaluate` reads), per set in {query, database}:
    <out>/<set>/features.npy   float32 [n, dims]: the latent outputs f (real-valued features;
                               dims = bits, except DQN's bottleneck)
    <out>/<set>/codes.npy      uint8 [n, ceil(bits/8)]: binary codes b = f > threshold (0.5 for
                               the sigmoid/threshold outputs of TQN and DNNH, 0 for DSH's linear
                               ones: its sign), packed with
                               numpy.packbits(axis=1, bitorder="big") (bit j of item i is
                               bit 7 - j % 8 of byte j // 8)
    <out>/<set>/labels.npy     int64 [n]: class (In-shop: item) labels, in LMDB row order
    DQN instead: <out>/<set>/pq_codes.npy (uint8/uint16 [n, M]: the nearest centroid of each
    subspace) and <out>/codebooks.npy (float32 [M, K, dims/M], from the weights' ProductQuantizationLoss
    blobs): its codes are the product quantizer's (bits = M log2 K), searched by ADC (tools/pq.py).
    <out>/meta.json            method, bits, threshold, weights (and sha256), protocol, counts, and
                               "database_is_query" (then <out>/database is a symlink to query and
                               evaluation leaves each query out of its own ranking)
A set whose LMDB is the other's (lmdb/database -> query) is extracted once. The folder appears
complete or not at all (written under a temporary name, then renamed).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from prototxt import description as D
from prototxt import generate as G
from tools import codes as C
from data_prep.outputs import sha256_file as sha256

THRESHOLD = 0.5  # PAPER: "b = 1 if the feature f exceeds 0.5"


def feature_dims(method, bits):
    return D.dqn_bottleneck(bits) if method == "dqn" else bits


class ExtractError(ValueError):
    pass


def extract_set(dataset, scale, bits, lmdb_path, count, weights, mean_file, batch, workdir,
                method="tqn"):
    """Runs the extraction net over `count` rows of `lmdb_path`: (features, labels, codebooks);
    codebooks is None except for DQN."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # before pycaffe starts glog: errors only
    import caffe
    caffe.set_mode_cpu()
    net_path = os.path.join(workdir, "extract.prototxt")
    with open(net_path, "w") as f:
        f.write(G.extract_net(dataset, scale, bits, lmdb_path, batch, mean_file, method))
    net = caffe.Net(net_path, caffe.TEST, weights=weights)
    dims = feature_dims(method, bits)
    features = np.empty((count, dims), np.float32)
    labels = np.empty(count, np.int64)
    for start in range(0, count, batch):
        net.forward()  # the Data layer reads rows in key order, wrapping at the end
        n = min(batch, count - start)
        features[start:start + n] = net.blobs["hash"].data[:n].reshape(n, dims)
        labels[start:start + n] = net.blobs["label"].data[:n].astype(np.int64)
    codebooks = None
    if method == "dqn":
        codebooks = np.array(net.params["pq_loss"][0].data, np.float32)
        if int(net.params["pq_loss"][1].data[1]) == 0:
            raise ExtractError(f"{weights}: its ProductQuantizationLoss codebooks were never "
                               f"updated (train for at least one codebook_update_interval)")
    del net
    return features, labels, codebooks


def save_set(folder, features, labels, threshold=THRESHOLD, codebooks=None):
    os.makedirs(folder)
    np.save(os.path.join(folder, "features.npy"), features)
    if codebooks is None:
        np.save(os.path.join(folder, "codes.npy"), C.pack_bits(C.binarize(features, threshold)))
    else:
        from tools import pq
        np.save(os.path.join(folder, "pq_codes.npy"), pq.encode(features, codebooks))
    np.save(os.path.join(folder, "labels.npy"), labels)


def extract(data, dataset, scale, bits, weights, out, batch=100, method="tqn"):
    with open(os.path.join(data, "dataset.json")) as f:
        manifest = json.load(f)
    if not os.path.exists(weights):
        raise ExtractError(f"{weights}: no such model (train it with python -m tools.train)")
    out = os.path.abspath(out)
    if os.path.exists(os.path.join(out, "meta.json")):
        with open(os.path.join(out, "meta.json")) as f:
            old = json.load(f)
        if (old.get("weights_sha256") == sha256(weights) and old.get("data") == os.path.abspath(data)
                and old.get("method", "tqn") == method):
            return old
        shutil.rmtree(out)
    start = time.monotonic()
    mean = os.path.join(data, "mean.binaryproto")
    mean = mean if os.path.exists(mean) else None
    threshold = D.method(method)["code_threshold"]
    lmdbs = {s: os.path.realpath(os.path.join(data, "lmdb", s)) for s in ("query", "database")}
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".extract-", dir=parent)
    try:
        for s in ("query", "database"):
            if s == "database" and lmdbs["database"] == lmdbs["query"]:
                os.symlink("query", os.path.join(tmp, "database"))
                continue
            feats, labels, codebooks = extract_set(dataset, scale, bits, lmdbs[s],
                                                   manifest["counts"][s], weights, mean, batch, tmp,
                                                   method)
            save_set(os.path.join(tmp, s), feats, labels, threshold, codebooks)
            if codebooks is not None:
                np.save(os.path.join(tmp, "codebooks.npy"), codebooks)
        os.remove(os.path.join(tmp, "extract.prototxt"))
        meta = dict(method=method, bits=bits, feature_dims=feature_dims(method, bits),
                    threshold=threshold, weights=os.path.abspath(weights),
                    weights_sha256=sha256(weights), data=os.path.abspath(data),
                    dataset=dataset, scale=scale, protocol=manifest.get("protocol"),
                    counts={s: manifest["counts"][s] for s in ("query", "database")},
                    database_is_query=lmdbs["database"] == lmdbs["query"],
                    code_packing="numpy.packbits(axis=1, bitorder='big') of features > threshold"
                    if method != "dqn" else "pq_codes: nearest centroid per subspace (ADC search)",
                    seconds=round(time.monotonic() - start, 1))
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
        os.rename(tmp, out)
        return meta
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


def load_blobs(folder, arrays=("features", "codes", "labels"), optional_sets=()):
    """(meta, {set: {array: ndarray}}) of an extraction folder: the query and database sets,
    and each of `optional_sets` (e.g. "train") that the folder holds."""
    meta_path = os.path.join(folder, "meta.json")
    if not os.path.exists(meta_path):
        raise ExtractError(f"{folder} holds no extraction (no meta.json); run python -m tools.extract")
    with open(meta_path) as f:
        meta = json.load(f)
    sets = {}
    for s in ("query", "database") + tuple(optional_sets):
        d = os.path.join(folder, s)
        if s in optional_sets and not os.path.isdir(d):
            continue
        names = [("pq_codes" if k == "codes" and meta.get("method") == "dqn" else k) for k in arrays]
        sets[s] = {k: np.load(os.path.join(d, f"{k}.npy"), allow_pickle=False) for k in names}
        n = len(sets[s]["labels"])
        dims = meta.get("feature_dims", meta["bits"])
        if any(len(v) != n for v in sets[s].values()) or (
                "features" in sets[s] and sets[s]["features"].shape[1:] != (dims,)):
            raise ExtractError(f"{d}: {', '.join(f'{k} {v.shape}' for k, v in sets[s].items())} "
                               f"disagree in shape; extract again")
    return meta, sets


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--scale", default="cpu")
    ap.add_argument("--bits", type=int, required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--method", default="tqn", choices=sorted(D.METHODS))
    args = ap.parse_args(argv)
    try:
        meta = extract(args.data, args.dataset, args.scale, args.bits, args.weights, args.out, args.batch,
                       args.method)
        print(f"extracted {meta['counts']} -> {args.out}")
        return 0
    except (ExtractError, KeyError) as e:
        print(f"extract: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
