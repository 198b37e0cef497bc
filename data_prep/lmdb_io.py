"""LMDBs of Caffe Datum records: image LMDBs, the stock triplet LMDB, the train mean; and readers.

Image LMDBs: record i of split S has key b'%08d' % i and holds line i of splits/<protocol>/S.txt, so a data
layer can fetch row i by key. A Datum is either raw (channels, height, width, label, data = C x H x W bytes)
or encoded (data = PNG/JPEG bytes from cv2.imencode, encoded=True), always in Caffe's channel order: BGR for
3-channel images, as convert_imageset writes them. Raw LMDBs need one image size (use --resize); encoded
ones may mix sizes (mean.binaryproto is then not written). With --encode jpg/png, an image file already in
that format is stored as its original bytes when no --resize is asked (as convert_imageset does).

Stock triplet LMDB (for Caffe's plain `Data` layer, batch_size = 3 * bs): per batch of bs triplets the
records are the bs anchors, then the bs positives, then the bs negatives, so a Slice layer (axis 0, points
bs, 2bs) yields a / p / n. K epochs of triplets are materialised, each cut to whole batches (the last
`n % bs` triplets of each epoch are left out), so the record count is a multiple of 3 * bs and the Data
layer's wrap-around at the end keeps the layout. Disk cost: 3 * K * floor(n / bs) * bs records of one image
each, i.e. about three times the train LMDB per epoch: CIFAR-10 raw 32x32 takes 618 MB per epoch (the train
LMDB 206 MB; a 3,085-byte Datum fills a 4 kB LMDB overflow page). Use it with one solver (no multi-GPU data
sharding) and without rand_skip; triplets.txt with a triplet-aware data layer costs nothing of the kind.

Every LMDB is written into `<path>.tmp-<pid>` and renamed when complete.
"""
import os

import numpy as np

from .outputs import atomic_dir, write_json
from .datum import (datum_to_image, decode_image, encode_image, make_datum, mean_blob, parse_datum,
                    read_mean_blob)
from .errors import DataPrepError
from .progress import Progress

KEY_FORMAT = '%08d'
_CHUNK_RECORDS = 1000
_CHUNK_BYTES = 64 << 20


def key(i):
    return (KEY_FORMAT % i).encode('ascii')


class LmdbWriter:
    """Sequential puts in chunked transactions; the map grows (doubles) when full."""

    def __init__(self, path, estimate_bytes):
        import lmdb
        self._lmdb = lmdb
        self.map_size = max(1 << 24, int(estimate_bytes * 1.3) + (1 << 22))
        self.env = lmdb.open(path, map_size=self.map_size, subdir=True, sync=False, metasync=False,
                             readahead=False, meminit=False, max_dbs=0)
        self.chunk, self.chunk_bytes, self.count, self.bytes = [], 0, 0, 0

    def put(self, k, v):
        self.chunk.append((k, v))
        self.chunk_bytes += len(v)
        if len(self.chunk) >= _CHUNK_RECORDS or self.chunk_bytes >= _CHUNK_BYTES:
            self.flush()

    def flush(self):
        while self.chunk:
            try:
                with self.env.begin(write=True) as txn:
                    for k, v in self.chunk:
                        if not txn.put(k, v, overwrite=False):
                            raise DataPrepError(f'duplicate LMDB key {k!r}')
            except self._lmdb.MapFullError:
                self.map_size *= 2
                self.env.set_mapsize(self.map_size)
                continue
            self.count += len(self.chunk)
            self.bytes += self.chunk_bytes
            self.chunk, self.chunk_bytes = [], 0

    def close(self):
        self.flush()
        self.env.sync(True)
        self.env.close()


class MeanAccumulator:
    """Sums images in datum order (C x H x W, BGR): a mean image when all share one size, and per channel."""

    def __init__(self):
        self.sum = None
        self.shape = None
        self.uniform = True
        self.count = 0
        self.channel_sum = None
        self.pixels = 0

    def add(self, bgr):
        chw = bgr.transpose(2, 0, 1)
        if self.shape is None:
            self.shape = chw.shape
            self.sum = np.zeros(chw.shape, np.float64)
            self.channel_sum = np.zeros(chw.shape[0], np.float64)
        if chw.shape[0] != self.shape[0]:
            raise DataPrepError('images with different channel counts in one LMDB')
        if chw.shape != self.shape:
            self.uniform = False
        elif self.uniform:
            self.sum += chw
        self.channel_sum += chw.reshape(chw.shape[0], -1).sum(axis=1, dtype=np.float64)
        self.pixels += chw.shape[1] * chw.shape[2]
        self.count += 1

    def mean_image(self):
        return self.sum / self.count if (self.uniform and self.count) else None

    def channel_mean(self):
        return self.channel_sum / self.pixels


def _resize(img, resize):
    if resize is None:
        return img
    import cv2
    h, w = resize
    out = cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=cv2.INTER_LINEAR)
    return out[:, :, None] if out.ndim == 2 else out


def _original_bytes(path, encode, bgr):
    """The file's own bytes when it already is a `encode` image decoding to exactly `bgr`'s shape."""
    if path is None or os.path.splitext(path)[1].lower() not in {'jpg': ('.jpg', '.jpeg'),
                                                                 'png': ('.png',)}[encode]:
        return None, None
    with open(path, 'rb') as f:
        raw = f.read()
    try:
        dec = decode_image(raw, path)
    except DataPrepError:
        return None, None
    return (raw, dec) if (dec.shape == bgr.shape and dec.dtype == np.uint8) else (None, None)


def write_image_lmdb(path, dataset, rows, encode='raw', resize=None, mean=None, progress=True, what=None):
    """Writes dataset items `rows` (in that order) to the LMDB folder `path` (atomically).

    mean: a MeanAccumulator to add each stored image to (as Caffe will see it), or None.
    Returns {'count', 'encoded', 'shapes' (distinct H,W,C), 'bytes'}.
    """
    if encode not in ('raw', 'png', 'jpg'):
        raise ValueError(encode)
    rows = np.asarray(rows)
    if len(rows) >= 10 ** 8:
        raise DataPrepError(f'{path}: {len(rows):,} records do not fit the %08d keys')
    what = what or os.path.basename(path)
    first = dataset.image(int(rows[0])) if len(rows) else None
    per_image = first.size if first is not None else 0
    if resize is not None and first is not None:
        per_image = resize[0] * resize[1] * first.shape[2]
    shapes = {}
    prog = Progress(len(rows), f'lmdb/{what}', enabled=progress)
    with atomic_dir(path) as tmp:
        w = LmdbWriter(tmp, len(rows) * (per_image + 64))
        try:
            for out_row, i in enumerate(rows):
                i = int(i)
                name = dataset.image_path(i) or f'{dataset.source}: item {dataset.ids[i]}'
                img = _resize(dataset.image(i), resize)
                bgr = img[:, :, ::-1] if img.shape[2] == 3 else img
                if encode == 'raw':
                    if shapes and bgr.shape not in shapes:
                        raise DataPrepError(
                            f'{name}: size {bgr.shape[1]}x{bgr.shape[0]} differs from the first image '
                            f'({next(iter(shapes))[1]}x{next(iter(shapes))[0]}); a raw LMDB needs one size: '
                            'pass --resize HxW, or --encode png/jpg')
                    d = make_datum(bgr, dataset.labels[i])
                    stored = bgr
                else:
                    data, stored = (None, None) if resize is not None else \
                        _original_bytes(dataset.image_path(i), encode, bgr)
                    if data is None:
                        data = encode_image(bgr, encode)
                        stored = decode_image(data, name) if encode == 'jpg' else bgr
                    d = make_datum(bgr, dataset.labels[i], encoded_bytes=data)
                shapes[bgr.shape] = shapes.get(bgr.shape, 0) + 1
                if mean is not None:
                    mean.add(stored)
                w.put(key(out_row), d.SerializeToString())
                prog.update()
        finally:
            w.close()
        nbytes = w.bytes
    return {'count': int(len(rows)), 'encoded': encode != 'raw', 'encoding': encode,
            'shapes': [list(s) for s in sorted(shapes)], 'bytes': int(nbytes), 'disk_bytes': _disk(path)}


def _disk(path):
    return int(os.path.getsize(os.path.join(path, 'data.mdb')))


def write_mean(folder, acc, protocol=None):
    """mean.binaryproto (1 x C x H x W, when sizes are uniform) and mean.json; returns the json dict."""
    from .outputs import atomic_file
    img = acc.mean_image()
    if img is not None:
        with atomic_file(os.path.join(folder, 'mean.binaryproto'), 'wb') as f:
            f.write(mean_blob(img).SerializeToString())
    cm = acc.channel_mean()
    info = {
        'protocol': protocol,
        'images': int(acc.count),
        'channel_order': 'BGR' if len(cm) == 3 else 'gray',
        'mean_value': [float(x) for x in cm],
        'binaryproto': 'mean.binaryproto' if img is not None else None,
        'shape_chw': list(acc.shape) if img is not None else None,
        'note': 'over the train split, as stored in lmdb/train (Caffe channel order); mean_value is in that '
                'order, ready for transform_param { mean_value: ... } (one per channel)',
    }
    if len(cm) == 3:
        info['mean_value_rgb'] = [float(x) for x in cm[::-1]]
    if img is None:
        info['note'] += '; no mean.binaryproto: the train images differ in size'
    write_json(os.path.join(folder, 'mean.json'), info)
    return info


def write_stock_triplet_lmdb(path, train_lmdb, triplets, per_epoch, batch_size, epochs=1, progress=True):
    """Materialises the first `epochs` epochs of `triplets` ([E * per_epoch, 3] rows of train_lmdb), for a stock
    Data layer with batch_size 3 * batch_size.

    Returns {'records', 'epochs', 'batches_per_epoch', 'batch_size', 'data_layer_batch_size', 'bytes'}.
    """
    triplets = np.asarray(triplets)
    nb = per_epoch // batch_size
    if nb == 0:
        raise DataPrepError(f'{per_epoch} triplets per epoch do not fill one batch of {batch_size}; lower '
                            '--batch-triplets')
    if epochs * per_epoch > len(triplets):
        raise DataPrepError(f'only {len(triplets) // max(per_epoch, 1)} epochs of triplets, {epochs} asked')
    order = np.concatenate([
        triplets[e * per_epoch:e * per_epoch + nb * batch_size].reshape(nb, batch_size, 3)
        .transpose(0, 2, 1).reshape(-1) for e in range(epochs)])
    src = open_lmdb(train_lmdb)
    prog = Progress(len(order), 'lmdb/train_triplets_stock', enabled=progress)
    try:
        with src.begin() as rtxn, atomic_dir(path) as tmp:
            first = rtxn.get(key(0)) or b''
            w = LmdbWriter(tmp, len(order) * (len(first) + 32))
            try:
                for out_row, r in enumerate(order):
                    v = rtxn.get(key(int(r)))
                    if v is None:
                        raise DataPrepError(f'{train_lmdb}: no record {int(r)} (key {key(int(r)).decode()}) '
                                            'for the triplets; rebuild the train LMDB')
                    w.put(key(out_row), v)
                    prog.update()
            finally:
                w.close()
            nbytes = w.bytes
    finally:
        src.close()
    return {'records': int(len(order)), 'epochs': int(epochs), 'batches_per_epoch': int(nb),
            'batch_size': int(batch_size), 'data_layer_batch_size': 3 * int(batch_size),
            'dropped_per_epoch': int(per_epoch - nb * batch_size), 'bytes': int(nbytes), 'disk_bytes': _disk(path),
            'layout': 'per batch: batch_size anchors, then positives, then negatives'}


# ---------------------------------------------------------------- readers

def _damaged(path, e):
    return DataPrepError(f'{path}: the LMDB is damaged ({e}); rebuild it: rerun data_prep.build with the '
                         'same options (its completion check sees the damage and rebuilds)')


def open_lmdb(path):
    import lmdb
    if not os.path.isfile(os.path.join(path, 'data.mdb')):
        raise DataPrepError(f'{path}: not an LMDB folder (no data.mdb)')
    try:
        return lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=True)
    except lmdb.Error as e:
        raise _damaged(path, e) from None


def lmdb_count(path):
    import lmdb
    env = open_lmdb(path)
    try:
        return env.stat()['entries']
    except lmdb.Error as e:
        raise _damaged(path, e) from None
    finally:
        env.close()


def iter_records(path):
    """Yields (key bytes, value bytes) in key order; a damaged file is a DataPrepError naming it."""
    import lmdb
    env = open_lmdb(path)
    try:
        with env.begin() as txn:
            yield from txn.cursor()
    except lmdb.Error as e:
        raise _damaged(path, e) from None
    finally:
        env.close()


def read_image_lmdb(path):
    """-> (keys [str], images [uint8 H x W x C as stored, BGR], labels int64, datums [Datum])."""
    keys, images, labels, datums = [], [], [], []
    for k, v in iter_records(path):
        d = parse_datum(v)
        keys.append(k.decode('ascii'))
        images.append(datum_to_image(d, f'{path}: {k.decode()}'))
        labels.append(d.label)
        datums.append(d)
    return keys, images, np.array(labels, dtype=np.int64), datums


def read_mean(path):
    with open(path, 'rb') as f:
        return read_mean_blob(f.read())
