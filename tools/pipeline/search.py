"""Search with a trained run: encode new images with the run's model and answer their top-k from
the run's database codes (a faiss binary index, as tools.retrieval).

`search(SearchSpec(...))` is the entry point (the command line is `python -m tools.search`).
The new images are one image file, a folder (every image file below it, sorted; when the folder
holds class folders their names are the images' labels), or a `path label` list file. They are
prepared as the run's data were (data_prep: the build's channels, and the training LMDB's size,
resized bilinearly when theirs differs), written to a temporary LMDB (at the features scale,
then through the run's backbone as its features were computed, data_prep.features) and put
through the run's extraction net (tools/pipeline/extraction.py, Caffe's log to <run>/logs/search.log). The
database codes are the run's blobs (RUN/blobs/step<k>, extracted there first when missing).
Hits name their database row, label (with the class name) and item id (the image's path
relative to the data set's root).
"""
import dataclasses
import json
import os
import tempfile
from typing import Optional

import numpy as np

from data_prep.console import output_to_log
from data_prep.dataset import IMAGE_EXTENSIONS, Dataset
from data_prep.errors import DataPrepError
from data_prep.features import encode_image_lmdb, logged_net
from data_prep.outputs import load_marker
from data_prep.lmdb_io import write_image_lmdb
from data_prep.readers import read_image_folder, read_image_list
from data_prep.splits import load_list
from prototxt import description as D
from tools.hashing import binary_index as BI
from tools.hashing import codes as C
from tools.pipeline import blobs as B
from tools.pipeline import extraction
from tools.pipeline.errors import PipelineError
from tools.pipeline.training import final_model, load_manifest


class SearchError(PipelineError):
    pass


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """Every setting of a search, resolved."""
    run: str                    # a training run folder (params.json), e.g. runs/main-images-cpu/12bits
    images: str                 # an image file, a folder of images, or a "path label" list file
    step: Optional[int] = None  # the run's step whose model encodes (default: its last)
    k: int = 10
    root: Optional[str] = None  # the base of relative paths in a list file (default: its folder)
    verbose: bool = False


def run_record(run):
    """The run's params.json (its completion marker, data_prep.outputs)."""
    record = load_marker(os.path.join(run, "params.json"))
    if record is None:
        raise SearchError(f"{run}: no readable params.json; give a trained run folder (python -m "
                          f"tools.train or the main job's <out>/<bits>bits)")
    return record


def new_images(path, root=None, channels=3):
    """The images to encode as a Dataset (labels -1 where unknown)."""
    if os.path.isfile(path) and path.lower().endswith(IMAGE_EXTENSIONS):
        p = os.path.abspath(path)
        return Dataset(name="search", source=p, ids=[os.path.basename(p)], labels=[-1],
                       class_names=[], paths=[p], channels=channels)
    if os.path.isfile(path):
        ds = read_image_list(path, root, channels)
        return ds
    if not os.path.isdir(path):
        raise SearchError(f"{path}: no such image, folder or list file")
    if any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(path)):
        return read_image_folder(path, channels)
    files = sorted(e.path for e in os.scandir(path)
                   if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS) and not e.name.startswith("."))
    if not files:
        raise SearchError(f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return Dataset(name="search", source=os.path.abspath(path), ids=[os.path.basename(f) for f in files],
                   labels=[-1] * len(files), class_names=[], paths=[os.path.abspath(f) for f in files],
                   channels=channels)


def database_items(data, manifest):
    """(ids of the database rows, class names) from the build's split files."""
    folder = os.path.join(data, "splits", manifest["protocol"])
    ids, _ = load_list(os.path.join(folder, "database.txt"))
    with open(os.path.join(folder, "split.json")) as f:
        names = json.load(f).get("class_names", [])
    return ids, names


def image_build_manifest(data, manifest):
    """The dataset.json of the image build whose images the run's data hold: the data folder's
    own, or at the features scale the image build its features came from (its images' size and
    channels, its split lists naming the database items)."""
    if not manifest.get("features"):
        return manifest
    images = manifest.get("images")
    if not images:
        raise SearchError(f"{data}: this features data folder predates the record of its image build; "
                          f"write it again (python -m data_prep.features ... --training-data into a new "
                          f"folder) to search with runs trained on it")
    if not os.path.exists(os.path.join(images, "dataset.json")):
        raise SearchError(f"{data}: the image build its features came from ({images}) is gone; search "
                          f"needs it (its images' size and its split lists)")
    return load_manifest(images)


def search(spec):
    """Encodes spec.images with the run's model; returns {"engine", "k", "database", "results":
    [{query, path, label, neighbours: [{rank, row, id, label, class, distance}]}]}."""
    run = os.path.abspath(spec.run)
    record = run_record(run)
    p = record["inputs"]
    if p["method"] == "dqn":
        raise SearchError(f"{run}: a DQN run (product-quantizer codes): search its codes with "
                          f"python -m tools.retrieval (ADC index)")
    iters = p["iterations"]
    step = spec.step or len(iters)
    if not 1 <= step <= len(iters):
        raise SearchError(f"{run} has {len(iters)} step(s), not step {step}")
    weights = final_model(run, step, iters[step - 1])
    if not os.path.exists(weights):
        raise SearchError(f"{weights}: the run's step {step} has not finished; train it first")
    data = p["data"]
    manifest = load_manifest(data)
    log = os.path.join(run, "logs", "search.log")
    blobs_dir = os.path.join(run, "blobs", f"step{step}")
    espec = extraction.ExtractSpec(data=data, dataset=p["dataset"], bits=p["bits"], weights=weights,
                                   out=blobs_dir, scale=p["scale"], method=p["method"],
                                   verbose=spec.verbose)
    extraction.extract(espec)   # nothing to do when the run's blobs are there
    db = B.read(blobs_dir, arrays=("codes", "labels")).sets["database"]
    backbone = manifest.get("features")     # the features scale: the backbone's record
    images_manifest = image_build_manifest(data, manifest)
    ds = new_images(spec.images, spec.root, images_manifest.get("channels", 3))
    shape = images_manifest["lmdb"]["train"]["shapes"]
    if len(shape) != 1:
        raise SearchError(f"{data}: its training images have several sizes; search needs one")
    size = tuple(shape[0][:2])
    mean = os.path.join(data, "mean.binaryproto")
    with tempfile.TemporaryDirectory(prefix=".search-", dir=os.path.join(run, "blobs")) as work:
        lmdb = os.path.join(work, "lmdb")
        try:
            write_image_lmdb(lmdb, ds, np.arange(len(ds)), "raw", size, progress=False)
            if backbone:                    # images -> the backbone's features, as training saw them
                feature_lmdb = os.path.join(work, "features")
                encode_image_lmdb(backbone["folder"], lmdb, feature_lmdb, logged_net(log))
                lmdb = feature_lmdb
        except DataPrepError as e:
            raise SearchError(str(e)) from None
        with output_to_log(log, spec.verbose):
            feats, _, _ = extraction.extract_set(espec, lmdb, len(ds),
                                                 mean if os.path.exists(mean) else None, work)
    threshold = D.method(p["method"])["code_threshold"]
    q_codes = C.pack_bits(C.binarize(feats, threshold))
    k = min(spec.k, len(db["labels"]))
    index = BI.build_index(db["codes"], p["bits"])
    dist, rows = BI.search(index, q_codes, p["bits"], k)
    ids, names = database_items(manifest["images"] if backbone else data, images_manifest)
    results = []
    for i in range(len(ds)):
        hits = []
        for r, (j, d) in enumerate(zip(rows[i], dist[i])):
            if j < 0:
                continue
            lab = int(db["labels"][j])
            hits.append(dict(rank=r + 1, row=int(j), id=ids[j], label=lab,
                             **{"class": names[lab] if 0 <= lab < len(names) else str(lab)},
                             distance=int(d)))
        lab = int(ds.labels[i])
        results.append(dict(query=ds.ids[i], path=ds.paths[i], label=None if lab < 0 else lab,
                            neighbours=hits))
    return dict(engine=type(index).__name__, k=k, bits=p["bits"], step=step, run=run,
                database=dict(blobs=blobs_dir, count=len(ids), root=manifest.get("source")),
                results=results)


def format_results(answer):
    lines = [f"{len(answer['results'])} image(s), {answer['bits']}-bit codes of {answer['run']} "
             f"step {answer['step']}; top {answer['k']} of {answer['database']['count']} database items "
             f"(ids relative to {answer['database']['root']}) by Hamming distance ({answer['engine']})"]
    for res in answer["results"]:
        label = "" if res["label"] is None else f", label {res['label']}"
        lines.append(f"{res['path']}{label}:")
        for h in res["neighbours"]:
            lines.append(f"  {h['rank']:4d}  distance {h['distance']:3d}  label {h['label']} "
                         f"({h['class']})  {h['id']}")
    return "\n".join(lines)
