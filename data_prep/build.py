"""The data_prep CLI: archive -> splits -> LMDBs -> triplets, into one output folder.

    python -m data_prep.build --dataset {digits,cifar10,inshop,images} [--archive PATH] [--root PATH]
        [--list FILE] [--train-list F --query-list F [--database-list F]] [--database-is-query] [--protocol NAME] --out DIR [--seed 0] [--epochs 40] [--batch-triplets 32]
        [--encode {raw,png,jpg}] [--resize HxW] [--stock-triplet-epochs 0] [--query-share 0.2]
        [--singletons {error,negatives}] [--splits-only] [--force] [--quiet]

Sources: cifar10 --archive cifar-10-binary.tar.gz | cifar-10-python.tar.gz | an extracted batches folder;
inshop --root <In-shop folder with Eval/ and Img/>; images --root <folder with one subfolder per class> or
--list <"path label" file> (paths relative to --root, else to the list's folder; they must stay inside it);
images with its own split: --root <folder with train/ and test/ (or train/, query/, database/) class folders>,
--train-list/--query-list/--database-list, or --list of "path label set" lines (protocol given; -dsh with
--database-is-query); digits: nothing.

Output folder DIR:
  dataset.json                  manifest and completion marker (data_prep.outputs): "inputs" (the
                                parameters), counts, LMDB facts, and "outputs": the size and sha256 of
                                every list file and LMDB data file; written last, so its presence means
                                the build completed
  splits/<protocol>/{train,query,database}.txt, split.json
  lmdb/train, lmdb/query        Datum LMDBs, key %08d = line of the list file
  lmdb/database                 an LMDB, or a symlink to train or query when the sets are identical
  lmdb/train_triplets_stock     only with --stock-triplet-epochs K > 0
  triplets.txt, triplets.json   E epochs of "a p n" train rows
  shuffled.txt, shuffled.json   3E epochs of train rows in a fresh random order, three a line
                                (the pairwise methods' batches: DSH, DQN)
  mean.binaryproto, mean.json   train mean (Caffe channel order)

Reruns: with the same parameters over a complete folder (dataset.json present, every output with its
recorded size and sha256, so damage inside an LMDB is seen too) nothing is done. Different parameters into a folder that holds a
build -> DataPrepError. The source is part of the parameters: an archive / list / partition file by path,
size and mtime; an image folder (and In-shop's Img/, and the images of a list file) by a hash of every
image's path, size and mtime; digits by scikit-learn's version. So a changed source is refused too;
choose another --out, or pass --force to rebuild in place. An incomplete folder (no dataset.json, e.g. after
a crash) is rebuilt. Each output appears atomically (temporary name, then rename); leftovers of interrupted
runs are removed; a lock keeps two builds out of one folder.
"""
import argparse
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from typing import Optional, Tuple

import numpy as np

from .readers.cifar10 import CLASS_NAMES as CIFAR10_CLASS_NAMES

from . import readers
from .outputs import (OutputLock, atomic_symlink, differences, incomplete_reasons, load_marker,
                      mark_complete, remove_stale_temporaries)
from .errors import DataPrepError, run_cli
from .splits import DEFAULT_PROTOCOL, PROTOCOLS, SINGLETON_POLICIES, make_split, save_split
from .triplets import check_triplets, generate_triplets, write_shuffled, write_triplets

FORMAT = 'tqn-data-prep/3'
DATASETS = ('digits', 'cifar10', 'inshop', 'images')


@dataclasses.dataclass(frozen=True)
class BuildSpec:
    """Every setting of a build, resolved (what `python -m data_prep.build` parses into)."""
    dataset: str
    out: str
    archive: Optional[str] = None
    root: Optional[str] = None
    list: Optional[str] = None
    train_list: Optional[str] = None       # images: one list file per set (with query_list)
    query_list: Optional[str] = None
    database_list: Optional[str] = None
    database_is_query: bool = False        # images: database = query, self-match excluded (-dsh)
    protocol: Optional[str] = None
    seed: int = 0
    epochs: int = 40
    batch_triplets: int = 32
    encode: str = 'raw'
    resize: Optional[Tuple[int, int]] = None
    stock_triplet_epochs: int = 0
    query_share: float = 0.2
    singletons: str = 'error'
    splits_only: bool = False
    force: bool = False
    quiet: bool = False


def parse_resize(text):
    if text is None:
        return None
    try:
        parts = [int(x) for x in text.lower().split('x')]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f'--resize expects HxW (e.g. 256x256) or N, got {text!r}')
    return tuple(parts)


def add_image_source_arguments(ap):
    """The `--dataset images` source options every runner shares (main job, compare): --list, the
    per-set lists and --database-is-query; `image_source_fields(args)` turns them into BuildSpec
    fields."""
    ap.add_argument('--list', help='images: a "path label" (or "path label set") list file')
    ap.add_argument('--train-list', help='images: the training set\'s "path label" list (with --query-list)')
    ap.add_argument('--query-list', help='images: the query set\'s list')
    ap.add_argument('--database-list', help='images: the database set\'s list (default: the training images)')
    ap.add_argument('--database-is-query', action='store_true',
                    help='images: database = the query set, each query left out of its own ranking (DSH style)')


def image_source_fields(args):
    return dict(list=args.list, train_list=args.train_list, query_list=args.query_list,
                database_list=args.database_list, database_is_query=args.database_is_query)


def parser():
    p = argparse.ArgumentParser(prog='python -m data_prep.build', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataset', required=True, choices=DATASETS)
    p.add_argument('--archive', help='cifar10: the binary or python archive (.tar.gz) or extracted folder')
    p.add_argument('--root', help='inshop: the In-shop folder (Eval/, Img/); images: the class folder root, or '
                                  'the base of relative paths in --list')
    add_image_source_arguments(p)
    p.add_argument('--protocol', help='; '.join(f'{d}: {"|".join(v)} (default {DEFAULT_PROTOCOL[d]})'
                                                 for d, v in PROTOCOLS.items()))
    p.add_argument('--out', required=True, help='output folder')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--epochs', type=int, default=40, help='epochs of triplets in triplets.txt (default 40)')
    p.add_argument('--batch-triplets', type=int, default=32, help='triplets per batch (default 32)')
    p.add_argument('--encode', choices=('raw', 'png', 'jpg'), default='raw')
    p.add_argument('--resize', type=parse_resize, help='HxW: resize every image (bilinear) before storing')
    p.add_argument('--stock-triplet-epochs', type=int, default=0,
                   help='K > 0: also write lmdb/train_triplets_stock with K epochs (3x the train LMDB per epoch)')
    p.add_argument('--query-share', type=float, default=0.2, help='images protocol stratified: query share')
    p.add_argument('--singletons', choices=SINGLETON_POLICIES, default='error',
                   help='train classes with one image: error (default), or negatives = keep them only as '
                        'negatives (real In-shop has such items)')
    p.add_argument('--splits-only', action='store_true',
                   help='write splits and triplets only (no pixels needed: In-shop without images)')
    p.add_argument('--force', action='store_true', help='rebuild into --out even if it holds another build')
    p.add_argument('--quiet', action='store_true', help='no progress lines')
    return p


# ---------------------------------------------------------------- parameters and manifest

def _fingerprint(path):
    st = os.stat(path)
    return {'path': os.path.realpath(path), 'size': st.st_size if os.path.isfile(path) else None,
            'mtime_ns': st.st_mtime_ns}


def _files_fingerprint(paths, base):
    """sha256 over (relative path, size, mtime_ns) of image files: changes when any image does."""
    h = hashlib.sha256()
    for p in sorted(paths):
        try:
            st = os.stat(p)
            h.update(f'{os.path.relpath(p, base)}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
        except OSError:
            h.update(f'{os.path.relpath(p, base)}\0missing\n'.encode())
    return h.hexdigest()


def _image_tree(root):
    from .dataset import IMAGE_EXTENSIONS
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith('.')]
        for f in filenames:
            if not f.startswith('.') and f.lower().endswith(IMAGE_EXTENSIONS):
                yield os.path.join(dirpath, f)


def source_of(spec):
    if spec.dataset == 'digits':
        import sklearn
        return {'path': 'sklearn.datasets.load_digits', 'sklearn': sklearn.__version__}
    if spec.dataset == 'cifar10':
        if not spec.archive:
            raise DataPrepError('--dataset cifar10 needs --archive (cifar-10-binary.tar.gz, '
                                'cifar-10-python.tar.gz or an extracted batches folder)')
        if not os.path.exists(spec.archive):
            raise DataPrepError(f'{spec.archive}: no such archive or folder')
        return _fingerprint(spec.archive)
    if spec.dataset == 'inshop':
        if not spec.root:
            raise DataPrepError('--dataset inshop needs --root (the In-shop folder holding Eval/ and Img/)')
        from .readers.inshop import find_partition_file
        src = dict(_fingerprint(find_partition_file(spec.root)), root=os.path.realpath(spec.root))
        img = os.path.join(spec.root, 'Img')
        if not spec.splits_only and os.path.isdir(img):
            src['images'] = _files_fingerprint(list(_image_tree(img)), img)
        return src
    set_lists = _set_lists(spec)
    if set_lists:
        src = {name: _fingerprint(path) for name, path in set_lists.items()}
        src['root'] = os.path.realpath(spec.root) if spec.root else None
        listed = readers.read_image_lists(set_lists, spec.root)
        src['images'] = _files_fingerprint(listed.paths, '/')
        return src
    if spec.list:
        src = _fingerprint(spec.list)
        src['root'] = os.path.realpath(spec.root) if spec.root else None
        listed = readers.read_image_list(spec.list, spec.root)
        src['images'] = _files_fingerprint(listed.paths, '/')
        return src
    if not spec.root:
        raise DataPrepError('--dataset images needs --root (a folder with one subfolder per class) or --list')
    if not os.path.isdir(spec.root):
        raise DataPrepError(f'{spec.root}: not a folder')
    return dict(_fingerprint(spec.root), images=_files_fingerprint(list(_image_tree(spec.root)), spec.root))


def _set_lists(spec):
    """images: {partition: list file} of --train-list / --query-list / --database-list, or None."""
    given = {'train': spec.train_list, 'query': spec.query_list, 'database': spec.database_list}
    given = {k: v for k, v in given.items() if v}
    if not given:
        return None
    if spec.dataset != 'images':
        raise DataPrepError('--train-list / --query-list / --database-list apply to --dataset images only')
    if spec.list or 'train' not in given or 'query' not in given:
        raise DataPrepError('per-set list files need --train-list and --query-list (and optionally '
                            '--database-list), without --list')
    return given


def _images_protocol(spec):
    """The default protocol of an images build: `given` when the source names its sets (set folders,
    set lists, a list with a set column), else `stratified`; -dsh with database_is_query."""
    if spec.protocol:
        base = spec.protocol
    elif _set_lists(spec) or (spec.root and not spec.list and readers.set_folders(spec.root)):
        base = 'given'
    elif spec.list and readers.read_image_list(spec.list, spec.root).partition is not None:
        base = 'given'
    else:
        base = 'stratified'
    if spec.database_is_query and not base.endswith('-dsh'):
        base += '-dsh'
    return base


def parameters(spec):
    if spec.dataset != 'images' and (spec.database_is_query or _set_lists(spec)):
        raise DataPrepError('--database-is-query and per-set lists apply to --dataset images only '
                            '(other data sets name it in --protocol, e.g. dsh)')
    protocol = _images_protocol(spec) if spec.dataset == 'images' else \
        (spec.protocol or DEFAULT_PROTOCOL[spec.dataset])
    if protocol not in PROTOCOLS[spec.dataset]:
        raise DataPrepError(f'--protocol {protocol} does not apply to --dataset {spec.dataset}; choose one of '
                            f'{", ".join(PROTOCOLS[spec.dataset])}')
    if spec.epochs < 1 or spec.batch_triplets < 1 or spec.stock_triplet_epochs < 0:
        raise DataPrepError('--epochs and --batch-triplets must be >= 1, --stock-triplet-epochs >= 0')
    if spec.stock_triplet_epochs > spec.epochs:
        raise DataPrepError(f'--stock-triplet-epochs {spec.stock_triplet_epochs} exceeds --epochs {spec.epochs}')
    if spec.splits_only and spec.stock_triplet_epochs:
        raise DataPrepError('--splits-only writes no LMDB: drop --stock-triplet-epochs')
    return {
        'dataset': spec.dataset, 'protocol': protocol, 'seed': spec.seed, 'epochs': spec.epochs,
        'batch_triplets': spec.batch_triplets, 'encode': spec.encode,
        'resize': list(spec.resize) if spec.resize else None,
        'stock_triplet_epochs': spec.stock_triplet_epochs,
        'query_share': spec.query_share if protocol.startswith('stratified') else None,
        'singletons': spec.singletons, 'splits_only': bool(spec.splits_only),
        'source': source_of(spec),
    }


def load_manifest(out):
    """The manifest (dataset.json) of a build folder of this format, or None."""
    m = load_marker(os.path.join(out, 'dataset.json'))
    return m if m is not None and m.get('format') == FORMAT else None


# ---------------------------------------------------------------- the build

def read_dataset(spec):
    ds = _read_dataset(spec)
    if spec.dataset == 'images':
        ds.channels = readers.detect_channels(ds.paths)   # grey images stay one channel
    return ds


def _read_dataset(spec):
    if spec.dataset == 'digits':
        return readers.read_digits()
    if spec.dataset == 'cifar10':
        return readers.read_cifar10(spec.archive)
    if spec.dataset == 'inshop':
        return readers.read_inshop(spec.root)
    set_lists = _set_lists(spec)
    if set_lists:
        return readers.read_image_lists(set_lists, spec.root)
    if spec.list:
        return readers.read_image_list(spec.list, spec.root)
    if readers.set_folders(spec.root):
        return readers.read_image_sets(spec.root)
    return readers.read_image_folder(spec.root)


def _say(quiet, *a):
    if not quiet:
        print(*a, flush=True)


def build(spec):
    """Runs the build of `spec` (a BuildSpec); returns the manifest dict (the existing one when
    nothing had to be done)."""
    t0 = time.monotonic()
    params = parameters(spec)
    out = os.path.abspath(spec.out)
    created = not os.path.isdir(out)
    os.makedirs(out, exist_ok=True)
    marker = os.path.join(out, 'dataset.json')
    with OutputLock(out):
        old = load_manifest(out)
        if old is not None:
            problems = incomplete_reasons(marker, params)
            if not problems:
                print(f'data_prep: {out} is complete with these parameters; nothing to do')
                return old
            if old['inputs'] == json.loads(json.dumps(params)):
                _say(spec.quiet, f'data_prep: {out} is incomplete ({"; ".join(problems[:3])}); rebuilding')
            elif not spec.force:
                raise DataPrepError(f'{out} holds a build with other parameters '
                                    f'({differences(old["inputs"], params)}); choose another '
                                    '--out, or pass --force to rebuild it in place')
            os.unlink(marker)
        for p in remove_stale_temporaries(out):
            _say(spec.quiet, f'  removed leftover {p}')
        try:
            outputs, manifest = _build(spec, params, out)
        except BaseException:  # a failure or Ctrl-C: no half-made data set is left behind
            removed = _remove_partial_outputs(out, created)
            if removed:
                print(f'data_prep: the build failed; removed its partial outputs ({", ".join(removed)})',
                      file=sys.stderr)
            raise
        manifest['elapsed_seconds'] = round(time.monotonic() - t0, 2)
        manifest = mark_complete(marker, params, outputs, **manifest)
    print(summary(out, manifest))
    return manifest


def _build(spec, params, out):
    from .lmdb_io import MeanAccumulator, write_image_lmdb, write_mean, write_stock_triplet_lmdb
    quiet = spec.quiet
    protocol = params['protocol']
    t = time.monotonic()
    ds = read_dataset(spec)
    _say(quiet, f'data_prep: read {ds.name}: {len(ds):,} images, {len(ds.class_names):,} classes from '
                f'{ds.source} ({time.monotonic() - t:.1f} s)')
    split = make_split(ds, protocol, spec.seed, spec.query_share, spec.singletons)
    split_dir = os.path.join(out, 'splits', protocol)
    written = save_split(ds, split, split_dir)
    outputs = [f'splits/{protocol}/{name}' for name in written] + [f'splits/{protocol}/split.json']
    _say(quiet, f'data_prep: protocol {protocol}: train {len(split.train):,}, query {len(split.query):,}, '
                f'database {len(split.database):,}')

    lmdb_info, mean_info, stock_info = {}, None, None
    made = set()
    if not spec.splits_only:
        if not ds.has_pixels:
            raise DataPrepError(f'{ds.source}: no pixels available; use --splits-only')
        acc = MeanAccumulator()
        for name in ('train', 'query', 'database'):
            rows = split.rows(name)
            same = next((o for o in ('train', 'query') if o in lmdb_info and o != name
                         and np.array_equal(rows, split.rows(o))), None)
            path = os.path.join(out, 'lmdb', name)
            if same:
                atomic_symlink(same, path)
                lmdb_info[name] = dict(lmdb_info[same], path=f'lmdb/{name}', same_as=same)
                _say(quiet, f'data_prep: lmdb/{name} = lmdb/{same} (identical set; symlink, not written twice)')
            else:
                info = write_image_lmdb(path, ds, rows, spec.encode, spec.resize,
                                        mean=acc if name == 'train' else None, progress=not quiet, what=name)
                lmdb_info[name] = dict(info, path=f'lmdb/{name}')
            made.add(name)
        mean_info = write_mean(out, acc, protocol)
        outputs.append('mean.json')
        if mean_info['binaryproto']:
            outputs.append('mean.binaryproto')

    train_labels = ds.labels[split.train]
    tmeta = write_triplets(out, train_labels, spec.seed, spec.epochs, spec.batch_triplets, protocol,
                           progress=not quiet)
    # The pairwise methods' batches: 3 x as many epochs of n/3 lines, as many lines as triplets.txt.
    smeta = write_shuffled(out, len(train_labels), spec.seed, 3 * spec.epochs, protocol,
                           progress=not quiet)
    outputs += ['triplets.txt', 'triplets.json', 'shuffled.txt', 'shuffled.json']
    if spec.stock_triplet_epochs:
        k = spec.stock_triplet_epochs
        trip = generate_triplets(train_labels, spec.seed, k)
        check_triplets(trip, train_labels)
        stock_info = write_stock_triplet_lmdb(os.path.join(out, 'lmdb', 'train_triplets_stock'),
                                              os.path.join(out, 'lmdb', 'train'), trip,
                                              tmeta['triplets_per_epoch'], spec.batch_triplets, epochs=k,
                                              progress=not quiet)
        lmdb_info['train_triplets_stock'] = {'path': 'lmdb/train_triplets_stock', 'count': stock_info['records'],
                                             'bytes': stock_info['bytes'], 'disk_bytes': stock_info['disk_bytes']}
        made.add('train_triplets_stock')
    _remove_outputs_of_other_builds(out, protocol, made, mean_info)
    # Every LMDB written (not the symlinks to another): its data file is hashed at completion,
    # so damage inside it (not only a changed record count) is seen on the rerun.
    outputs += [f'{info["path"]}/data.mdb' for info in lmdb_info.values() if not info.get('same_as')]

    from .datum import caffe_pb2_origin
    import cv2
    import lmdb
    return outputs, {
        'format': FORMAT,
        'dataset': ds.name,
        'protocol': protocol,
        'seed': spec.seed,
        'source': ds.source,
        'notes': ds.notes + split.notes,
        'counts': {n: int(len(split.rows(n))) for n in ('train', 'query', 'database')},
        'classes': len(ds.class_names),
        # another data set in CIFAR-10's archive layout (its own batches.meta class names): named by
        # its archive in tables, never shown beside the paper's CIFAR-10 figures
        'repacked': ds.name == 'cifar10' and list(ds.class_names) != list(CIFAR10_CLASS_NAMES),
        'channels': ds.channels,
        'database_is_train': bool(split.database_is_train),
        'database_is_query': bool(split.database_is_query),
        'lmdb': lmdb_info or None,
        'lmdb_key_format': '%08d (row = line of splits/<protocol>/<split>.txt)',
        'stock_triplets': stock_info,
        'triplets': {k: tmeta[k] for k in ('seed', 'epochs', 'triplets_per_epoch', 'total', 'batch_size')},
        'shuffled': {k: smeta[k] for k in ('seed', 'epochs', 'lines_per_epoch', 'total')},
        'mean': mean_info,
        'caffe_pb2': caffe_pb2_origin() if lmdb_info else None,
        'versions': {'python': platform.python_version(), 'numpy': np.__version__, 'opencv': cv2.__version__,
                     'lmdb': lmdb.__version__},
    }


PARTIAL_OUTPUTS = ('splits', 'lmdb', 'mean.json', 'mean.binaryproto', 'triplets.txt', 'triplets.json',
                   'shuffled.txt', 'shuffled.json')


def _remove_partial_outputs(out, created):
    """Removes what a failed build wrote into `out` (its own output names only; `out` too when the
    build created it and nothing else is in it); returns the names removed."""
    removed = []
    for name in PARTIAL_OUTPUTS:
        p = os.path.join(out, name)
        if os.path.islink(p) or os.path.isfile(p):
            os.unlink(p)
        elif os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            continue
        removed.append(name)
    removed += [os.path.relpath(p, out) for p in remove_stale_temporaries(out)]
    if created and set(os.listdir(out)) <= {'.data_prep.lock'}:
        shutil.rmtree(out, ignore_errors=True)
    return removed


def _remove_outputs_of_other_builds(out, protocol, made_lmdbs, mean_info):
    """Removes data_prep outputs a previous build with other parameters left (other protocols, LMDBs)."""
    splits = os.path.join(out, 'splits')
    for name in os.listdir(splits):
        if name != protocol:
            shutil.rmtree(os.path.join(splits, name), ignore_errors=True)
    lmdb_dir = os.path.join(out, 'lmdb')
    if os.path.isdir(lmdb_dir):
        for name in os.listdir(lmdb_dir):
            p = os.path.join(lmdb_dir, name)
            if name not in made_lmdbs:
                if os.path.islink(p) or os.path.isfile(p):
                    os.unlink(p)
                else:
                    shutil.rmtree(p, ignore_errors=True)
        if not made_lmdbs:
            os.rmdir(lmdb_dir)
    for name in ('mean.json', 'mean.binaryproto'):
        p = os.path.join(out, name)
        keep = mean_info is not None and (name == 'mean.json' or mean_info.get('binaryproto'))
        if not keep and os.path.isfile(p):
            os.unlink(p)


def _mb(n):
    return f'{n / 1e6:,.1f} MB'


def summary(out, m):
    lines = [f'data_prep: done: {m["dataset"]} / protocol {m["protocol"]} / seed {m["seed"]} -> {out} '
             f'({m.get("elapsed_seconds", 0):.1f} s)']
    c = m['counts']
    lines.append(f'  splits/{m["protocol"]}: train {c["train"]:,}, query {c["query"]:,}, database '
                 f'{c["database"]:,}' + (' (= train)' if m['database_is_train'] else '')
                 + (' (= query)' if m['database_is_query'] else '') + f'; {m["classes"]:,} classes')
    for name, info in (m['lmdb'] or {}).items():
        if info.get('same_as'):
            lines.append(f'  lmdb/{name} -> lmdb/{info["same_as"]}')
        elif name == 'train_triplets_stock':
            s = m['stock_triplets']
            lines.append(f'  lmdb/{name}: {s["records"]:,} records, {s["epochs"]} epoch(s) x {s["batches_per_epoch"]:,}'
                         f' batches; Data layer batch_size {s["data_layer_batch_size"]} ({_mb(s["disk_bytes"])})')
        else:
            shapes = ', '.join('x'.join(map(str, s)) for s in info['shapes'][:3])
            lines.append(f'  lmdb/{name}: {info["count"]:,} {info["encoding"]} HxWxC {shapes} ({_mb(info["disk_bytes"])})')
    t = m['triplets']
    lines.append(f'  triplets.txt: {t["epochs"]} epochs x {t["triplets_per_epoch"]:,} = {t["total"]:,} triplets, '
                 f'seed {t["seed"]}, batch {t["batch_size"]}')
    if m['mean']:
        lines.append(f'  mean ({m["mean"]["channel_order"]}): ' + ', '.join(f'{v:.2f}' for v in m['mean']['mean_value'])
                     + ('' if m['mean']['binaryproto'] else ' (no mean.binaryproto: sizes differ)'))
    if m['lmdb']:
        lines.append(f'  caffe_pb2: {m["caffe_pb2"]}')
    return '\n'.join(lines)


def main(argv=None):
    args = parser().parse_args(argv)
    return run_cli('data_prep', lambda: build(BuildSpec(**vars(args))))


if __name__ == '__main__':
    sys.exit(main())
