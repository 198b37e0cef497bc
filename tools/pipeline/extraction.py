"""Extracts the latent layer ("hash") of a trained net to saved blobs (format: blobs.py).

`extract(ExtractSpec(...))` is the entry point (the command line is `python -m tools.extract`).
The net reads each set's LMDB with Caffe's stock Data layer and the test-time transform (centre
crop, no mirror), generated from prototxt/description.py like the training nets. A set whose
LMDB is the other's (lmdb/database -> query) is extracted once. A rerun over blobs made from the
same weights, data and method does nothing.
"""
import dataclasses
import os
import tempfile
import time
from typing import Optional

import numpy as np

from data_prep.console import output_to_log
from data_prep.outputs import sha256_file
from prototxt import description as D
from prototxt import generate as G
from tools.pipeline import blobs as B
from tools.pipeline.errors import PipelineError
from tools.pipeline.training import check_scale, load_manifest

THRESHOLD = 0.5  # PAPER: "b = 1 if the feature f exceeds 0.5"


class ExtractError(PipelineError):
    pass


@dataclasses.dataclass(frozen=True)
class ExtractSpec:
    """Every setting of an extraction, resolved."""
    data: str           # a data_prep output folder (dataset.json, lmdb/)
    dataset: str
    bits: int
    weights: str        # the trained model (.caffemodel)
    out: str            # the blobs folder
    scale: str = "cpu"
    method: str = "tqn"
    batch: int = 100
    log: Optional[str] = None       # Caffe's own log (default: <out>.log beside the blobs)
    verbose: bool = False           # Caffe's own log on the console instead

    def log_path(self):
        return os.path.abspath(self.log or os.path.abspath(self.out).rstrip(os.sep) + ".log")


def feature_dims(method, bits):
    return D.dqn_bottleneck(bits) if method == "dqn" else bits


def extract_set(spec, lmdb_path, count, mean_file, workdir):
    """Runs the extraction net over `count` rows of `lmdb_path`: (features, labels, codebooks);
    codebooks is None except for DQN."""
    import caffe  # its glog may already be set up (data_prep imports caffe.proto): the log
    # lines are kept out of the console by output_to_log, not by GLOG_minloglevel
    caffe.set_mode_cpu()
    net_path = os.path.join(workdir, "extract.prototxt")
    with open(net_path, "w") as f:
        f.write(G.extract_net(spec.dataset, spec.scale, spec.bits, lmdb_path, spec.batch, mean_file,
                              spec.method))
    net = caffe.Net(net_path, caffe.TEST, weights=spec.weights)
    dims = feature_dims(spec.method, spec.bits)
    features = np.empty((count, dims), np.float32)
    labels = np.empty(count, np.int64)
    for start in range(0, count, spec.batch):
        net.forward()  # the Data layer reads rows in key order, wrapping at the end
        n = min(spec.batch, count - start)
        features[start:start + n] = net.blobs["hash"].data[:n].reshape(n, dims)
        labels[start:start + n] = net.blobs["label"].data[:n].astype(np.int64)
    codebooks = None
    if spec.method == "dqn":
        codebooks = np.array(net.params["pq_loss"][0].data, np.float32)
        if int(net.params["pq_loss"][1].data[1]) == 0:
            raise ExtractError(f"{spec.weights}: its ProductQuantizationLoss codebooks were never "
                               f"updated (train for at least one codebook_update_interval)")
    del net
    return features, labels, codebooks


def extract(spec):
    """Extracts (or finds) the blobs of `spec` (an ExtractSpec); returns their meta.json."""
    manifest = load_manifest(spec.data)
    check_scale(manifest, spec.scale, spec.data)
    if not os.path.exists(spec.weights):
        raise ExtractError(f"{spec.weights}: no such model (train it with python -m tools.train)")
    data = os.path.abspath(spec.data)
    inputs = dict(weights_sha256=sha256_file(spec.weights), data=data,
                  data_manifest_sha256=sha256_file(os.path.join(data, "dataset.json")),
                  method=spec.method, dataset=spec.dataset, scale=spec.scale, bits=spec.bits)
    out = os.path.abspath(spec.out)
    done = B.completed_blobs(out, inputs)
    if done:
        return done
    start = time.monotonic()
    mean = os.path.join(data, "mean.binaryproto")
    mean = mean if os.path.exists(mean) else None
    lmdbs = {s: os.path.realpath(os.path.join(data, "lmdb", s)) for s in B.SETS}
    same = lmdbs["database"] == lmdbs["query"]
    sets, codebooks = {}, None
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=os.path.dirname(out)) as work:
        for s in B.SETS:
            if s == "database" and same:
                sets[s] = "query"
                continue
            with output_to_log(spec.log_path(), spec.verbose):
                feats, labels, codebooks = extract_set(spec, lmdbs[s], manifest["counts"][s], mean,
                                                       work)
            sets[s] = (feats, labels)
    threshold = D.method(spec.method)["code_threshold"]
    meta = dict(method=spec.method, bits=spec.bits, feature_dims=feature_dims(spec.method, spec.bits),
                threshold=threshold, weights=os.path.abspath(spec.weights),
                weights_sha256=inputs["weights_sha256"], data=data,
                dataset=spec.dataset, scale=spec.scale, protocol=manifest.get("protocol"),
                counts={s: manifest["counts"][s] for s in B.SETS},
                code_packing="numpy.packbits(axis=1, bitorder='big') of features > threshold"
                if spec.method != "dqn" else "pq_codes: nearest centroid per subspace (ADC search)",
                seconds=round(time.monotonic() - start, 1))
    return B.write(out, inputs, meta, sets, codebooks)
