"""Backbone features of a data_prep build's images, for each image and its mirror, as float Datum LMDBs.

    python -m data_prep.features --images BUILD [--backbone efficientnet-lite0 --input-size 128] --out DIR
        [--batch-size 50] [--chunk 2000] [--workers N] [--deploy P --weights W]  (another Caffe backbone)

BUILD is a `python -m data_prep.build` output folder (its `dataset.json` and raw or encoded image
LMDBs). The feature net is the backbone's deploy net with its input set to
`batch x 3 x S x S`, its last Pooling layer made `global_pooling: true` and every layer after it
(the classifier) removed (`feature_deploy`); each image is resized to S x S (bilinear), its
channels in the net's order (stored BGR, or RGB for efficientnet-lite0), (x - mean) / std with the
backbone's own mean and std (std 1 for nsfw), once as stored and once mirrored (left-right).
`efficientnet-lite0` is converted from its .pth to a native Caffe net once (data_prep.effnet_caffe,
cached beside the .pth); its input size must be a multiple of 32.

Outputs in DIR (`features.json` is the completion marker, data_prep.outputs; written last):

| path | what |
| --- | --- |
| `lmdb/<split>` | row i of BUILD's `lmdb/<split>`: a float Datum (channels = D, height = width = 1, `float_data`, the label) of the original image |
| `lmdb/<split>_mirror` | the same for the mirrored image |
| `feature_deploy.prototxt` | the net that computed them |
| `features.json` | inputs (backbone name, files and sha256, input size, mean, the images' dataset.json sha256), counts, dimension, seconds |

A split BUILD stores as a symlink to another (`same_as`) is a symlink here too. Resumable: the
work is done in chunks of `--chunk` images kept under `.parts/` (each written atomically, with the
inputs it was made from); a rerun after an interruption computes only the missing chunks, a rerun
over a finished folder does nothing. `--workers` processes (default: one a core) compute chunks side
by side, one BLAS thread each. The LMDBs are written atomically from the chunks at the end.
"""
import argparse
import dataclasses
import os
import sys
import time

import numpy as np

from .datum import caffe_pb2, datum_to_image, parse_datum
from .errors import DataPrepError
from .lmdb_io import LmdbWriter, iter_records, key, lmdb_count
from .outputs import (OutputLock, atomic_dir, atomic_file, atomic_symlink, changed_keys, completed, load_marker,
                      mark_complete, remove_stale_temporaries, sha256_file, write_text)
from .progress import Progress

# The backbones' own input conventions: 0-255 pixels in the net's channel order, minus these
# per-channel means (given in that order), divided by `BACKBONE_STD`.
BACKBONE_MEANS = {'nsfw-resnet50-1by2': (104.0, 117.0, 123.0),  # open_nsfw's classify_nsfw.py, BGR
                  'efficientnet-lite0': (127.0, 127.0, 127.0)}  # efficientnet_lite_builder's MEAN_RGB
BACKBONE_STD = {'efficientnet-lite0': 128.0}                    # its STDDEV_RGB
BACKBONE_CHANNELS = {'efficientnet-lite0': 'rgb'}               # otherwise 'bgr' (Caffe's, as stored)
# The default backbone and input size: the held-out choice (prototxt.description.FEATURE_BACKBONE,
# which must agree: tested).
DEFAULT_BACKBONE = ('efficientnet-lite0', 128)


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    images: str                 # a data_prep build folder
    out: str
    deploy: str                 # the backbone's deploy.prototxt
    weights: str                # its .caffemodel
    input_size: int
    mean_bgr: tuple             # per-channel mean, in the net's channel order (see `channels`)
    backbone: str = 'custom'    # a name for the record
    std: float = 1.0            # (x - mean) / std
    channels: str = 'bgr'       # the net's input channel order: 'bgr' (as stored) or 'rgb'
    batch_size: int = 50
    chunk: int = 2000
    quiet: bool = False
    workers: int = 1            # processes computing chunks, one BLAS thread each when > 1


def feature_deploy(deploy_text, input_size, batch_size):
    """The backbone's deploy net as a feature net: input batch x 3 x S x S, the last Pooling layer
    global (kernel, stride and pad cleared) and every layer after it removed. -> (text, top name)."""
    from google.protobuf import text_format
    net = caffe_pb2().NetParameter()
    text_format.Merge(deploy_text, net)
    if net.input:
        raise DataPrepError('the deploy net declares its input with top-level `input:` fields; this tool '
                            'expects an `Input` layer')
    inputs = [layer for layer in net.layer if layer.type == 'Input']
    pools = [i for i, layer in enumerate(net.layer) if layer.type == 'Pooling']
    if len(inputs) != 1 or not pools:
        raise DataPrepError(f'the deploy net needs one Input layer and a Pooling layer '
                            f'(has {len(inputs)} Input, {len(pools)} Pooling)')
    shape = inputs[0].input_param.shape[0]
    del shape.dim[:]
    shape.dim.extend([batch_size, 3, input_size, input_size])
    last = pools[-1]
    pool = net.layer[last].pooling_param
    for f in ('kernel_size', 'kernel_h', 'kernel_w', 'stride', 'stride_h', 'stride_w', 'pad', 'pad_h', 'pad_w'):
        pool.ClearField(f)
    pool.global_pooling = True
    del net.layer[last + 1:]
    return text_format.MessageToString(net), net.layer[last].top[0]


def preprocess(bgr, input_size, mean_bgr, std=1.0, channels='bgr'):
    """uint8 H x W x 3 (BGR) -> float32 3 x S x S in the net's channel order, (x - mean) / std
    (original) and its mirror. A grey image (H x W, or H x W x 1) is given to the colour backbone
    as three equal channels."""
    import cv2
    if bgr.ndim == 2 or (bgr.ndim == 3 and bgr.shape[2] == 1):
        bgr = np.repeat(bgr.reshape(bgr.shape[0], bgr.shape[1], 1), 3, axis=2)
    if bgr.ndim != 3 or bgr.shape[2] != 3:
        raise DataPrepError(f'a backbone needs grey or 3-channel images, got shape {bgr.shape}')
    if channels not in ('bgr', 'rgb'):
        raise DataPrepError(f'channel order {channels!r}: use bgr or rgb')
    img = cv2.resize(np.ascontiguousarray(bgr), (input_size, input_size), interpolation=cv2.INTER_LINEAR)
    x = img.astype(np.float32).transpose(2, 0, 1)
    if channels == 'rgb':
        x = x[::-1]
    x = x - np.asarray(mean_bgr, np.float32)[:, None, None]
    if std != 1.0:
        x = x / np.float32(std)
    return x, x[:, :, ::-1]


def float_datum(vector, label):
    d = caffe_pb2().Datum(channels=int(vector.size), height=1, width=1, label=int(label))
    d.float_data.extend(np.asarray(vector, np.float32).tolist())
    return d


def read_feature_lmdb(path):
    """-> (features float32 [n, D], labels int64 [n]) of a float Datum LMDB, in key order."""
    feats, labels = [], []
    for k, v in iter_records(path):
        d = parse_datum(v)
        if not d.float_data:
            raise DataPrepError(f'{path}: record {k.decode()} has no float_data (not a feature LMDB)')
        feats.append(np.asarray(d.float_data, np.float32))
        labels.append(d.label)
    return np.stack(feats), np.asarray(labels, np.int64)


def _load_images(path, rows):
    """Images and labels of rows [lo, hi) of an image LMDB, in key order."""
    return _load_rows(path, range(*rows))


def _load_rows(path, rows):
    """Images and labels of the given rows of an image LMDB, in the order given."""
    from .lmdb_io import open_lmdb
    env = open_lmdb(path)
    imgs, labels = [], []
    try:
        with env.begin() as txn:
            for i in rows:
                v = txn.get(key(int(i)))
                if v is None:
                    raise DataPrepError(f'{path}: record {i} is missing; rebuild the image LMDBs')
                d = parse_datum(v)
                imgs.append(datum_to_image(d, f'{path}: {i}'))
                labels.append(d.label)
    finally:
        env.close()
    return imgs, np.asarray(labels, np.int64)


def _say(spec, *a):
    if not spec.quiet:
        print(*a, flush=True)


def extract(spec, net_factory=None):
    """Computes (or finds complete) the features of every split of `spec.images`. Returns the record
    of features.json plus {'skipped': bool, 'computed_chunks', 'reused_chunks'}."""
    manifest_path = os.path.join(spec.images, 'dataset.json')
    manifest = load_marker(manifest_path)
    if manifest is None or not manifest.get('lmdb'):
        raise DataPrepError(f'{manifest_path}: missing or without image LMDBs; run python -m data_prep.build '
                            'first (without --splits-only)')
    inputs = {'backbone': spec.backbone, 'deploy_sha256': sha256_file(spec.deploy),
              'weights_sha256': sha256_file(spec.weights), 'weights_bytes': os.path.getsize(spec.weights),
              'input_size': int(spec.input_size), 'mean_bgr': [float(m) for m in spec.mean_bgr],
              'images_manifest_sha256': sha256_file(manifest_path), 'mirror': True,
              'preprocess': 'cv2 bilinear resize to SxS, BGR float minus mean, mirror = flip width'}
    if spec.std != 1.0 or spec.channels != 'bgr':   # recorded when not the defaults (older records stay valid)
        inputs.update(std=float(spec.std), channels=spec.channels,
                      preprocess=f'cv2 bilinear resize to SxS, {spec.channels.upper()} float (x - mean) / std, '
                                 'mirror = flip width')
    marker = os.path.join(spec.out, 'features.json')
    os.makedirs(spec.out, exist_ok=True)
    with OutputLock(spec.out, what='feature extraction'):
        record = completed(marker, inputs)
        if record is not None:
            _say(spec, f'features: {spec.out} is complete for these inputs; nothing to do')
            return dict(record, skipped=True, computed_chunks=0, reused_chunks=0)
        remove_stale_temporaries(spec.out)
        text, top = feature_deploy(open(spec.deploy).read(), spec.input_size, spec.batch_size)
        deploy_out = os.path.join(spec.out, 'feature_deploy.prototxt')
        write_text(deploy_out, text)
        parts = os.path.join(spec.out, '.parts')
        parts_marker = os.path.join(parts, 'inputs.json')
        old = load_marker(parts_marker)
        if old is None or changed_keys(old['inputs'], inputs):
            if os.path.isdir(parts):
                import shutil
                shutil.rmtree(parts)
            mark_complete(parts_marker, inputs)
        t0 = time.monotonic()
        stats = {'computed_chunks': 0, 'reused_chunks': 0}
        lmdbs, dim, missing = {}, None, []
        own = {n: i for n, i in manifest['lmdb'].items() if not i.get('same_as')}
        counts_of = {name: lmdb_count(os.path.join(spec.images, info['path'])) for name, info in own.items()}
        for name, info in sorted(own.items()):
            src, n = os.path.join(spec.images, info['path']), counts_of[name]
            chunks = []
            for lo in range(0, n, spec.chunk):
                hi = min(n, lo + spec.chunk)
                part = os.path.join(parts, f'{name}-{lo:08d}-{hi:08d}.npz')
                if os.path.exists(part):
                    stats['reused_chunks'] += 1
                else:
                    missing.append((name, src, lo, hi, part))
                chunks.append(part)
            lmdbs[name] = (chunks, n)
        stats['computed_chunks'] = len(missing)
        _compute_chunks(spec, deploy_out, top, missing, net_factory, counts_of)
        _say(spec, f'features: computed {stats["computed_chunks"]} chunks, reused {stats["reused_chunks"]} '
             f'({time.monotonic() - t0:.1f} s)')
        outputs, counts = [], {}
        for name, (chunks, n) in lmdbs.items():
            for view in (0, 1):
                lname = name if view == 0 else f'{name}_mirror'
                path = os.path.join(spec.out, 'lmdb', lname)
                with atomic_dir(path) as tmp:
                    w = None
                    row = 0
                    try:
                        for part in chunks:
                            with np.load(part) as z:
                                feats, labels = z['features'], z['labels']
                            dim = feats.shape[2]
                            if w is None:
                                w = LmdbWriter(tmp, n * (dim * 4 + 32))
                            for f_, lab in zip(feats[:, view], labels):
                                w.put(key(row), float_datum(f_, lab).SerializeToString())
                                row += 1
                    finally:
                        if w is not None:
                            w.close()
                    if row != n:
                        raise DataPrepError(f'{path}: wrote {row} records, expected {n}')
                outputs.append(f'lmdb/{lname}/data.mdb')
                counts[lname] = n
        _link_same_as(manifest, spec.out, counts)
        record = mark_complete(marker, inputs, outputs=outputs + ['feature_deploy.prototxt'],
                               dimension=int(dim), counts=counts, feature_blob=top,
                               same_as={n: i['same_as'] for n, i in manifest['lmdb'].items() if i.get('same_as')},
                               files={'deploy': os.path.abspath(spec.deploy),
                                      'weights': os.path.abspath(spec.weights)},
                               seconds=round(time.monotonic() - t0, 1), workers=int(spec.workers))
        import shutil
        shutil.rmtree(parts, ignore_errors=True)
        return dict(record, skipped=False, **stats)


def _chunk(net, spec, top, src, lo, hi, part):
    """Computes one chunk's part file (atomically); returns its number of images."""
    imgs, labels = _load_images(src, (lo, hi))
    feats = _forward(net, top, imgs, spec)
    with atomic_file(part, 'wb') as f:
        np.savez(f, features=feats, labels=labels)
    return hi - lo


_WORKER_NETS = {}   # a chunk worker's net, made on its first chunk (a worker serves one extract())


def _worker_chunk(spec, deploy, top, net_factory, src, lo, hi, part):
    if deploy not in _WORKER_NETS:
        _WORKER_NETS[deploy] = (net_factory or caffe_net)(deploy, spec.weights)
    return _chunk(_WORKER_NETS[deploy], spec, top, src, lo, hi, part)


def _one_blas_thread():
    """A chunk worker's start: one BLAS thread (set before pycaffe loads OpenBLAS). Two one-thread
    processes computed EfficientNet-Lite0 features 1.55-1.66x as fast as one two-thread process on
    2 cores (bench/bench_feature_workers.py; BVLC Caffe's grouped convolutions are many small
    GEMMs that do not thread)."""
    os.environ['OPENBLAS_NUM_THREADS'] = '1'
    os.environ['OMP_NUM_THREADS'] = '1'


def _compute_chunks(spec, deploy, top, missing, net_factory, counts):
    """Computes the `missing` chunks [(split, src, lo, hi, part)], in this process or in
    spec.workers processes (spawned, so that no Caffe state is forked); progress per split."""
    progress = {name: Progress(n, f'features/{name}', enabled=not spec.quiet, min_total=1)
                for name, n in sorted(counts.items())}
    reused = dict(counts)
    for name, _, lo, hi, _ in missing:
        reused[name] -= hi - lo
    for name, n in reused.items():
        if n:
            progress[name].update(n)
    if spec.workers <= 1 or len(missing) <= 1:
        net = (net_factory or caffe_net)(deploy, spec.weights) if missing else None
        for name, src, lo, hi, part in missing:
            progress[name].update(_chunk(net, spec, top, src, lo, hi, part))
        return
    import concurrent.futures
    import multiprocessing
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=min(spec.workers, len(missing)), mp_context=multiprocessing.get_context('spawn'),
        initializer=_one_blas_thread)
    from concurrent.futures.process import BrokenProcessPool
    try:
        futures = {pool.submit(_worker_chunk, spec, deploy, top, net_factory, src, lo, hi, part): name
                   for name, src, lo, hi, part in missing}
        for future in concurrent.futures.as_completed(futures):
            progress[futures[future]].update(future.result())
    except BaseException as e:
        # stop at once: chunks already handed to a worker would otherwise still be computed (the
        # finished parts are kept; a part being written is a temporary, removed on the next run)
        for process in list((getattr(pool, '_processes', None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        if isinstance(e, BrokenProcessPool):
            raise DataPrepError(f'{spec.out}: a feature worker process died (Caffe aborts on a bad net or '
                                f'weights file; its reason is in the net log, e.g. {spec.out}/caffe.log); '
                                f'rerun with --workers 1 to see it') from None
        raise
    pool.shutdown(wait=True)


def combined_lmdb(features_dir, split='train'):
    """lmdb/<split>_with_mirrors in `features_dir` (made once, atomically): rows 0..n-1 the
    originals of lmdb/<split>, rows n..2n-1 their mirrors (lmdb/<split>_mirror), the layout the
    mirrored lists (data_prep.triplets.mirror_choice) index. Returns its path."""
    out = os.path.join(features_dir, 'lmdb', f'{split}_with_mirrors')
    if os.path.exists(os.path.join(out, 'data.mdb')):
        return out
    sources = [os.path.join(features_dir, 'lmdb', split), os.path.join(features_dir, 'lmdb', f'{split}_mirror')]
    n = lmdb_count(sources[0])
    if lmdb_count(sources[1]) != n:
        raise DataPrepError(f'{sources[1]} does not hold as many records as {sources[0]}; '
                            f'rerun python -m data_prep.features')
    size = sum(os.path.getsize(os.path.join(s, 'data.mdb')) for s in sources)
    with atomic_dir(out) as tmp:
        w = LmdbWriter(tmp, 2 * size + (1 << 24))
        try:
            row = 0
            for src in sources:
                for _, v in iter_records(src):
                    w.put(key(row), v)
                    row += 1
        finally:
            w.close()
    return out


def features_record(features_dir):
    """features.json of a finished extraction, or a DataPrepError saying what to run."""
    fmarker = os.path.join(features_dir, 'features.json')
    frecord = load_marker(fmarker)
    if frecord is None:
        raise DataPrepError(f'{fmarker} is missing or unreadable: run python -m data_prep.features first')
    return fmarker, frecord


def _link_same_as(manifest, out, counts):
    """The build's splits stored as another (`same_as`) become symlinks to that split's feature
    LMDBs (original and mirror) in `out`; their counts are the other's."""
    for name, info in manifest['lmdb'].items():
        if info.get('same_as'):
            for suffix in ('', '_mirror'):
                atomic_symlink(info['same_as'] + suffix, os.path.join(out, 'lmdb', name + suffix))
                counts[name + suffix] = counts[info['same_as'] + suffix]


def split_ids(build, split):
    """The item ids of the rows of `build`'s lmdb/<split>, in row order (its splits/ list)."""
    manifest = load_marker(os.path.join(build, 'dataset.json'))
    path = os.path.join(build, 'splits', manifest['protocol'], f'{split}.txt')
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def derive(features_dir, source_images, images, out):
    """The features of the image build `images` taken row by row from `features_dir`, the
    features of `source_images` (another build of the same archive, e.g. cifar10-holdout's rows
    from cifar10-2's training set), matched by item id: no image goes through the backbone
    again. Writes `out` as data_prep.features.extract would have (lmdb/<split>, _mirror,
    features.json with the target build's manifest hash and `derived_from`). An id missing from
    the source is a DataPrepError naming it."""
    fmarker, frecord = features_record(features_dir)
    manifest_path = os.path.join(images, 'dataset.json')
    manifest = load_marker(manifest_path)
    if manifest is None or not manifest.get('lmdb'):
        raise DataPrepError(f'{manifest_path}: missing or without image LMDBs; run python -m data_prep.build')
    inputs = dict(frecord['inputs'], images_manifest_sha256=sha256_file(manifest_path),
                  derived_from=sha256_file(fmarker))
    marker = os.path.join(out, 'features.json')
    os.makedirs(out, exist_ok=True)
    with OutputLock(out, what='derived features'):
        record = completed(marker, inputs)
        if record is not None:
            return record
        t0 = time.monotonic()
        where = {}
        for name, info in manifest_of(source_images)['lmdb'].items():
            if not info.get('same_as'):
                for row, item in enumerate(split_ids(source_images, name)):
                    where.setdefault(item, (name, row))
        outputs, counts = [], {}
        own = {n: i for n, i in manifest['lmdb'].items() if not i.get('same_as')}
        for name in sorted(own):
            ids = split_ids(images, name)
            missing = [i for i in ids if i not in where]
            if missing:
                raise DataPrepError(f'{images}: item {missing[0]} of split {name} ({len(missing)} in all) has no '
                                    f'features in {features_dir}; extract the features of this build instead')
            for suffix in ('', '_mirror'):
                path = os.path.join(out, 'lmdb', name + suffix)
                envs = {}
                with atomic_dir(path) as tmp:
                    from .lmdb_io import open_lmdb
                    w = LmdbWriter(tmp, len(ids) * (frecord['dimension'] * 4 + 64) + (1 << 20))
                    try:
                        for row, item in enumerate(ids):
                            src, src_row = where[item]
                            if src not in envs:
                                envs[src] = open_lmdb(os.path.join(features_dir, 'lmdb', src + suffix))
                            with envs[src].begin() as txn:
                                w.put(key(row), txn.get(key(src_row)))
                    finally:
                        w.close()
                        for env in envs.values():
                            env.close()
                outputs.append(f'lmdb/{name + suffix}/data.mdb')
                counts[name + suffix] = len(ids)
        _link_same_as(manifest, out, counts)
        return mark_complete(marker, inputs, outputs=outputs, dimension=frecord['dimension'], counts=counts,
                             feature_blob=frecord.get('feature_blob'), files=frecord.get('files'),
                             seconds=round(time.monotonic() - t0, 1))


def manifest_of(build):
    manifest = load_marker(os.path.join(build, 'dataset.json'))
    if manifest is None:
        raise DataPrepError(f'{build}/dataset.json is missing or unreadable; run python -m data_prep.build')
    return manifest


def training_data(features_dir, images, out, seed, epochs, batch_triplets=32, quiet=False):
    """A data folder that tools/ trains and extracts from like an image build, on the features of
    `features_dir` (a finished extraction of the image build `images`): lmdb/train -> the 2n-row LMDB of originals and
    mirrors (combined_lmdb), lmdb/query and lmdb/database -> the original features, and the
    seeded triplets.txt / shuffled.txt (data_prep.triplets, seed `seed`, `epochs` epochs) whose
    every entry names an image or its mirror by a seeded coin (mirror_choice): the paper's mirror
    augmentation, the same on every run of one seed. dataset.json (the completion marker) is the
    image build's record with these lists, the features' identity, the image build's folder
    (`images`) and `feature_training`."""
    from .triplets import write_shuffled, write_triplets
    fmarker, frecord = features_record(features_dir)
    images_marker = os.path.join(images, 'dataset.json')
    build = load_marker(images_marker)
    if build is None or sha256_file(images_marker) != frecord['inputs']['images_manifest_sha256']:
        raise DataPrepError(f'{features_dir} was not computed from the image build {images} as it is now '
                            f'({images_marker} is missing or changed); rerun python -m data_prep.features')
    build = {k: v for k, v in build.items() if k not in ('inputs', 'outputs', 'lmdb', 'mean')}
    inputs = {'features_sha256': sha256_file(fmarker), 'seed': int(seed), 'epochs': int(epochs),
              'batch_triplets': int(batch_triplets), 'mirror': 'per list entry'}
    marker = os.path.join(out, 'dataset.json')
    os.makedirs(out, exist_ok=True)
    with OutputLock(out, what='feature training data'):
        record = completed(marker, inputs)
        if record is not None:
            return record
        t0 = time.monotonic()
        train = combined_lmdb(features_dir, 'train')
        _, labels = read_feature_lmdb(os.path.join(features_dir, 'lmdb', 'train'))
        os.makedirs(os.path.join(out, 'lmdb'), exist_ok=True)
        atomic_symlink(os.path.abspath(train), os.path.join(out, 'lmdb', 'train'))
        for name in ('query', 'database'):
            atomic_symlink(os.path.realpath(os.path.join(features_dir, 'lmdb', name)),
                           os.path.join(out, 'lmdb', name))
        tmeta = write_triplets(out, labels, seed, epochs, batch_triplets, build.get('protocol'),
                               progress=not quiet, mirror_rows=True)
        smeta = write_shuffled(out, len(labels), seed, 3 * epochs, build.get('protocol'),
                               progress=not quiet, mirror_rows=True)
        counts = {'train': len(labels), 'query': frecord['counts']['query'],
                  'database': frecord['counts']['database']}
        return mark_complete(marker, inputs, outputs=['triplets.txt', 'shuffled.txt'],
                             **dict(build, counts=counts, seed=int(seed), triplets=tmeta, shuffled=smeta,
                                    images=os.path.abspath(images),
                                    features=dict(frecord['inputs'], dimension=frecord['dimension'],
                                                  folder=os.path.abspath(features_dir)),
                                    feature_training=dict(rows=2 * len(labels), layout='rows 0..n-1 originals, '
                                                          'n..2n-1 mirrors'),
                                    seconds=round(time.monotonic() - t0, 1)))


def caffe_net(deploy, weights):
    import caffe
    caffe.set_mode_cpu()
    return caffe.Net(deploy, caffe.TEST, weights=weights)


def _logged_net(log, deploy, weights):
    from .console import output_to_log
    with output_to_log(log):
        return caffe_net(deploy, weights)


def logged_net(log):
    """A net factory (caffe_net) whose pycaffe set-up log goes to `log`, not the console
    (picklable: the chunk workers are spawned processes)."""
    import functools
    return functools.partial(_logged_net, log)


def _forward(net, top, imgs, spec, mirror=True):
    """float32 [n, 2, D]: the features of each image and its mirror (mirror=False: [n, 1, D],
    the originals only)."""
    out = []
    bs = spec.batch_size
    views = 2 if mirror else 1
    x = np.stack([v for img in imgs for v in preprocess(img, spec.input_size, spec.mean_bgr, spec.std,
                                                         spec.channels)[:views]])
    for lo in range(0, len(x), bs):
        batch = x[lo:lo + bs]
        data = net.blobs['data']
        if data.data.shape[0] != len(batch):
            data.reshape(len(batch), *data.data.shape[1:])
        data.data[...] = batch
        net.forward()
        out.append(net.blobs[top].data.reshape(len(batch), -1).copy())
    feats = np.concatenate(out)
    if not np.isfinite(feats).all():
        raise DataPrepError('the backbone produced non-finite features; check its weights')
    return feats.reshape(len(imgs), views, -1)


def features_of_rows(spec, split, rows, net_factory=None):
    """The backbone's features of the originals (no mirror) of `rows` of `spec.images`'
    lmdb/<split>, for comparing backbones and input sizes on a sample: (float32 [n, D], labels,
    seconds per image of the forward passes alone). Nothing is written but a temporary deploy."""
    imgs, labels = _load_rows(os.path.join(spec.images, 'lmdb', split), rows)
    net, top = _feature_net(spec, net_factory)
    start = time.perf_counter()
    feats = _forward(net, top, imgs, spec, mirror=False)[:, 0]
    seconds = time.perf_counter() - start
    return feats, labels, seconds / max(1, len(imgs))


def _feature_net(spec, net_factory=None):
    """(net, feature blob name): spec's backbone as its feature net (feature_deploy), made from a
    temporary deploy file (Caffe reads it once, when the net is made)."""
    import tempfile
    text, top = feature_deploy(open(spec.deploy).read(), spec.input_size, spec.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        deploy = os.path.join(tmp, 'feature_deploy.prototxt')
        write_text(deploy, text)
        return (net_factory or caffe_net)(deploy, spec.weights), top


def cores():
    """The cores this process may run on (the default number of chunk workers)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)


def backbone_spec(images, out, backbone=None, input_size=None, own=None, quiet=False, cache=None):
    """The FeatureSpec of a features folder `out` for the image build `images`: the named, fetched
    `backbone`, or own = (deploy, weights, mean in its channel order) with BGR input and std 1;
    one chunk worker a core."""
    if own:
        deploy, weights, mean = own
        return FeatureSpec(images=images, out=out, deploy=deploy, weights=weights, input_size=input_size,
                           mean_bgr=tuple(mean), quiet=quiet, workers=cores())
    return spec_from_backbone(images, out, backbone, input_size, cache=cache, quiet=quiet, workers=cores())


def encode_image_lmdb(features_dir, images_lmdb, out_lmdb, net_factory=None):
    """New images through the backbone of a finished extraction `features_dir`, preprocessed as its
    images were (its recorded input size, mean, std and channel order; the originals, no
    mirror): the image LMDB `images_lmdb` -> the float-Datum LMDB `out_lmdb` (written
    atomically). For encoding images a features-scale model was not trained on (tools.search).
    The backbone's weights must be the recorded ones (sha256). Returns the number of rows."""
    _, record = features_record(features_dir)
    inputs, files = record['inputs'], record.get('files') or {}
    for what in ('deploy', 'weights'):
        path = files.get(what)
        if not path or not os.path.exists(path) or sha256_file(path) != inputs[f'{what}_sha256']:
            raise DataPrepError(f'{features_dir}/features.json: the backbone {what} file {path} is gone or '
                                f'changed since the features were computed; fetch that backbone again, or '
                                f'recompute the features and retrain')
    spec = FeatureSpec(images='', out=features_dir, deploy=files['deploy'], weights=files['weights'],
                       input_size=inputs['input_size'], mean_bgr=tuple(inputs['mean_bgr']),
                       backbone=inputs['backbone'], std=inputs.get('std', 1.0),
                       channels=inputs.get('channels', 'bgr'))
    n = lmdb_count(images_lmdb)
    net, top = _feature_net(spec, net_factory)
    with atomic_dir(out_lmdb) as out:
        w = None
        try:
            for lo in range(0, n, spec.chunk):
                imgs, labels = _load_images(images_lmdb, (lo, min(n, lo + spec.chunk)))
                feats = _forward(net, top, imgs, spec, mirror=False)[:, 0]
                if w is None:
                    w = LmdbWriter(out, n * (feats.shape[1] * 5 + 64) + (1 << 20))
                for row, (f_, lab) in enumerate(zip(feats, labels), lo):
                    w.put(key(row), float_datum(f_, lab).SerializeToString())
        finally:
            if w is not None:
                w.close()
    return n


def spec_from_backbone(images, out, backbone, input_size, cache=None, **kw):
    """A FeatureSpec for a named, fetched backbone (data_prep.backbones)."""
    from .backbones import caffe_backbone
    if backbone not in BACKBONE_MEANS:
        raise DataPrepError(f'backbone {backbone!r} has no Caffe deploy net here; choose one of '
                            f'{", ".join(sorted(BACKBONE_MEANS))} or pass --deploy and --weights')
    files = caffe_backbone(backbone, input_size=input_size, cache=cache)
    return FeatureSpec(images=images, out=out, deploy=files['deploy'], weights=files['weights'],
                       input_size=input_size, mean_bgr=BACKBONE_MEANS[backbone], backbone=backbone,
                       std=BACKBONE_STD.get(backbone, 1.0), channels=BACKBONE_CHANNELS.get(backbone, 'bgr'), **kw)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--images', required=True, help='a data_prep build folder')
    ap.add_argument('--out', required=True)
    ap.add_argument('--backbone', default=DEFAULT_BACKBONE[0],
                    help=f'a named backbone (default {DEFAULT_BACKBONE[0]}): ' + ', '.join(sorted(BACKBONE_MEANS)))
    ap.add_argument('--input-size', type=int, default=DEFAULT_BACKBONE[1],
                    help=f'default {DEFAULT_BACKBONE[1]}')
    ap.add_argument('--deploy', help='another backbone: its deploy.prototxt (with --weights, --mean)')
    ap.add_argument('--weights')
    ap.add_argument('--mean', default='104,117,123', help='mean for --deploy, in its channel order '
                    '(default 104,117,123)')
    ap.add_argument('--std', type=float, default=1.0, help='(x - mean) / std for --deploy (default 1)')
    ap.add_argument('--channels', choices=('bgr', 'rgb'), default='bgr', help="--deploy's channel order")
    ap.add_argument('--batch-size', type=int, default=50)
    ap.add_argument('--chunk', type=int, default=2000)
    ap.add_argument('--workers', type=int, default=0,
                    help='processes computing chunks, one BLAS thread each (default 0: one a core)')
    ap.add_argument('--quiet', action='store_true')
    ap.add_argument('--training-data', metavar='DIR',
                    help='then write DIR: the data folder `caffe train` and tools/ read at the features scale '
                         '(mirrored seeded triplet lists, links to the feature LMDBs)')
    ap.add_argument('--seed', type=int, default=0, help='--training-data: the lists\' seed (default 0)')
    ap.add_argument('--epochs', type=int, default=80,
                    help='--training-data: epochs of triplets (default 80: both TQN steps)')
    args = ap.parse_args(argv)
    try:
        kw = dict(batch_size=args.batch_size, chunk=args.chunk, quiet=args.quiet,
                  workers=args.workers or cores())
        if args.deploy or args.weights:
            if not (args.deploy and args.weights):
                raise DataPrepError('--deploy and --weights go together')
            spec = FeatureSpec(images=args.images, out=args.out, deploy=args.deploy, weights=args.weights,
                               input_size=args.input_size, mean_bgr=tuple(float(v) for v in args.mean.split(',')),
                               std=args.std, channels=args.channels, **kw)
        else:
            spec = spec_from_backbone(args.images, args.out, args.backbone, args.input_size, **kw)
        rec = extract(spec, net_factory=logged_net(os.path.join(args.out, 'caffe.log')))
        if args.training_data:
            training_data(args.out, args.images, args.training_data, args.seed, args.epochs, quiet=args.quiet)
            print(f'features: training data (seed {args.seed}) -> {args.training_data}')
    except DataPrepError as e:
        print(f'data_prep.features: error: {e}', file=sys.stderr)
        return 2
    print(f'features: {rec["dimension"]}-d, {rec["counts"]} -> {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
