"""The saved-blobs format: its one writer (`write`), its one reader (`read`, which validates
what it reads), and the dsh protocol's view of a cifar10-2 extraction (`write_dsh_view`).

A blobs folder holds, per set in {query, database}:

    <folder>/<set>/features.npy   float32 [n, dims]: the latent outputs f (real-valued features;
                                  dims = bits, except DQN's bottleneck)
    <folder>/<set>/codes.npy      uint8 [n, ceil(bits/8)]: binary codes b = f > threshold (0.5
                                  for the sigmoid/threshold outputs of TQN and DNNH, 0 for DSH's
                                  linear ones: its sign), packed with
                                  numpy.packbits(axis=1, bitorder="big") (bit j of item i is
                                  bit 7 - j % 8 of byte j // 8); the pad bits are 0
    <folder>/<set>/labels.npy     int64 [n]: class (In-shop: item) labels, in LMDB row order
    DQN instead of codes.npy: <folder>/<set>/pq_codes.npy (uint8/uint16 [n, M]: the nearest
    centroid of each subspace) and <folder>/codebooks.npy (float32 [M, K, dims/M], from the
    weights' ProductQuantizationLoss blobs): product-quantizer codes (bits = M log2 K),
    searched by ADC (tools/hashing/pq.py).
    <folder>/meta.json            method, bits, feature_dims, threshold, weights (and sha256),
                                  data, dataset, scale, protocol, counts, database_is_query
                                  (then <folder>/database is a symlink to query and evaluation
                                  leaves each query out of its own ranking), and the completion
                                  marker's "inputs" and "outputs" (data_prep.outputs: every .npy
                                  with its size and sha256)

The folder appears complete or not at all (written under a temporary name, then renamed).
`read` checks everything a reader relies on and names the file and what to do when it does not
hold: finite features of the recorded width, integer labels, one label per row, codes of the
recorded width with clear pad bits, PQ codes below the codebooks' K, non-empty sets.
"""
import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from data_prep.outputs import atomic_dir, completed, load_marker, mark_complete, sha256_file
from tools.hashing import codes as C
from tools.hashing import pq
from tools.pipeline.errors import PipelineError

FORMAT = "tqn-blobs/2"
SETS = ("query", "database")
ARRAYS = ("features", "codes", "labels")


class BlobsError(PipelineError, ValueError):
    pass


@dataclass
class Blobs:
    """A read blobs folder: meta.json, {set: {array name: ndarray}}, DQN's codebooks."""
    folder: str
    meta: dict
    sets: dict
    codebooks: Optional[np.ndarray] = None

    @property
    def bits(self):
        return self.meta["bits"]

    @property
    def is_pq(self):
        return self.meta.get("method") == "dqn"

    @property
    def database_is_query(self):
        return bool(self.meta.get("database_is_query"))


def code_array(method):
    """The name of a method's code array: pq_codes (DQN) or codes."""
    return "pq_codes" if method == "dqn" else "codes"


def completed_blobs(folder, inputs):
    """meta.json of `folder` when it holds blobs made from `inputs`, every array as written."""
    return completed(os.path.join(folder, "meta.json"), inputs)


def write(folder, inputs, meta, sets, codebooks=None):
    """Writes a blobs folder atomically and returns its meta.json.

    sets: {name: (features float32 [n, dims], labels int64 [n])}, or for the database the
    string "query" (the same set: a symlink; meta "database_is_query"). Codes are made here from
    the features: binary (features > meta["threshold"], packed) or, with `codebooks`, DQN's
    product-quantizer codes. `inputs` (what the blobs were made from) goes into the completion
    marker with the hashes of every array written.
    """
    outputs = []
    with atomic_dir(folder) as tmp:
        os.makedirs(tmp)
        for name, content in sets.items():
            if isinstance(content, str):
                os.symlink(content, os.path.join(tmp, name))
                continue
            features, labels = content
            arrays = dict(features=features, labels=labels)
            if codebooks is None:
                arrays["codes"] = C.pack_bits(C.binarize(features, meta["threshold"]))
            else:
                arrays["pq_codes"] = pq.encode(features, codebooks)
            os.makedirs(os.path.join(tmp, name))
            for key, value in arrays.items():
                np.save(os.path.join(tmp, name, f"{key}.npy"), value)
                outputs.append(f"{name}/{key}.npy")
        if codebooks is not None:
            np.save(os.path.join(tmp, "codebooks.npy"), codebooks)
            outputs.append("codebooks.npy")
        meta = mark_complete(os.path.join(tmp, "meta.json"), inputs, outputs,
                             **dict(meta, format=FORMAT,
                                    database_is_query=isinstance(sets.get("database"), str)))
    return meta


def write_dsh_view(source, folder):
    """The dsh protocol's blobs from a cifar10-2 extraction `source`: its queries against
    themselves (symlinks, and a meta.json saying so); skipped when `folder` already is the view
    of `source` as it is now."""
    src_meta_path = os.path.join(source, "meta.json")
    inputs = dict(derived_from=os.path.abspath(source), source_meta_sha256=sha256_file(src_meta_path))
    if completed_blobs(folder, inputs):
        return folder
    with open(src_meta_path) as f:
        meta = json.load(f)
    meta = {k: v for k, v in meta.items() if k not in ("inputs", "outputs")}
    meta.update(protocol="dsh", derived_from=os.path.abspath(source),
                counts=dict(query=meta["counts"]["query"], database=meta["counts"]["query"]))
    with atomic_dir(folder) as tmp:
        os.makedirs(tmp)
        os.symlink(os.path.join(os.path.abspath(source), "query"), os.path.join(tmp, "query"))
        os.symlink("query", os.path.join(tmp, "database"))
        if os.path.exists(os.path.join(source, "codebooks.npy")):
            os.symlink(os.path.join(os.path.abspath(source), "codebooks.npy"),
                       os.path.join(tmp, "codebooks.npy"))
        mark_complete(os.path.join(tmp, "meta.json"), inputs, (),
                      **dict(meta, database_is_query=True))
    return folder


def read_meta(folder):
    """meta.json of a blobs folder; a missing or broken one is a BlobsError naming it."""
    path = os.path.join(folder, "meta.json")
    if not os.path.exists(path):
        raise BlobsError(f"{folder} holds no extraction (no meta.json): run python -m tools.extract")
    meta = load_marker(path)
    if meta is None:
        try:
            with open(path) as f:
                meta = json.load(f)
        except (OSError, ValueError) as e:
            raise BlobsError(f"{path} is not a readable meta.json ({e}); extract again "
                             f"(python -m tools.extract)") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("bits"), int) or meta["bits"] < 1:
        raise BlobsError(f"{path}: no code width (\"bits\") in it; extract again")
    return meta


def _load(path):
    if not os.path.exists(path):
        raise BlobsError(f"{path} is missing: extract again (python -m tools.extract)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BlobsError(f"{path} is not a readable .npy array ({e}); extract again") from None


def read(folder, arrays=ARRAYS, optional_sets=()):
    """The Blobs of `folder`: the query and database sets (and each of `optional_sets`, e.g.
    "train", that the folder holds) with the requested arrays ("codes" means pq_codes for
    DQN), validated (see the module docstring)."""
    meta = read_meta(folder)
    method = meta.get("method", "tqn")
    codebooks = None
    if method == "dqn" and "codes" in arrays:
        codebooks = _load(os.path.join(folder, "codebooks.npy"))
        if codebooks.ndim != 3 or 0 in codebooks.shape or not np.all(np.isfinite(codebooks)):
            raise BlobsError(f"{os.path.join(folder, 'codebooks.npy')}: codebooks must be finite "
                             f"[M, K, d], got shape {codebooks.shape}; extract again")
    sets = {}
    for s in SETS + tuple(optional_sets):
        d = os.path.join(folder, s)
        if s in optional_sets and not os.path.isdir(d):
            continue
        names = [code_array(method) if k == "codes" else k for k in arrays]
        sets[s] = {k: _load(os.path.join(d, f"{k}.npy")) for k in names}
        _validate(d, sets[s], meta, codebooks)
    return Blobs(folder, meta, sets, codebooks)


def _validate(d, arrays, meta, codebooks):
    bits = meta["bits"]
    n = None
    if "labels" in arrays:
        labels = arrays["labels"]
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise BlobsError(f"{d}/labels.npy: labels must be integers [n], got {labels.dtype} "
                             f"{labels.shape}; extract again")
        n = len(labels)
    for key, value in arrays.items():
        if value.ndim < 1 or (n is not None and len(value) != n):
            raise BlobsError(f"{d}: {', '.join(f'{k} {v.shape}' for k, v in arrays.items())} "
                             f"disagree in length; extract again")
        n = len(value)
    if n == 0:
        raise BlobsError(f"{d}: the set is empty (0 rows); nothing can be evaluated or searched")
    if "features" in arrays:
        f = arrays["features"]
        dims = meta.get("feature_dims", bits)
        if f.ndim != 2 or f.shape[1] != dims or f.dtype.kind != "f":
            raise BlobsError(f"{d}/features.npy: expected float [n, {dims}] (meta.json), got "
                             f"{f.dtype} {f.shape}; extract again")
        bad = ~np.isfinite(f)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise BlobsError(f"{d}/features.npy: {int(bad.any(axis=1).sum())} rows hold NaN or "
                             f"infinite values (first: row {row}, column {col}); the net diverged "
                             f"or the file was damaged: retrain or extract again")
    if "codes" in arrays:
        codes = arrays["codes"]
        want = -(-bits // 8)
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != want:
            raise BlobsError(f"{d}/codes.npy: {bits}-bit codes (meta.json) are uint8 [n, {want}], "
                             f"got {codes.dtype} {codes.shape}; extract again")
        wider = C.padding_error(codes, bits, f"{d}/codes.npy", given="of meta.json",
                                todo="meta.json and codes.npy disagree: extract again")
        if wider:
            raise BlobsError(wider)
    if "pq_codes" in arrays and codebooks is not None:
        codes = arrays["pq_codes"]
        m, k = codebooks.shape[:2]
        if codes.ndim != 2 or codes.shape[1] != m or codes.dtype.kind not in "iu" or \
                (codes.size and (codes.min() < 0 or codes.max() >= k)):
            raise BlobsError(f"{d}/pq_codes.npy: expected integers in 0..{k - 1} [n, {m}] "
                             f"(codebooks.npy), got {codes.dtype} {codes.shape}; extract again")
