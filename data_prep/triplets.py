"""Training triplets (anchor, positive, negative) as row indices into the train LMDB.

As in the paper: for each anchor a random positive of its class (In-shop: its item), never the anchor
itself, and a random negative of another class. Epoch e draws with numpy.random.default_rng([seed, e])
(a SeedSequence of the recorded seed and the epoch number): a fresh shuffled order of the anchors, then
per anchor a uniform positive among the other members of its class and a uniform negative among all rows
of other classes. Every train row whose class has >= 2 rows is an anchor once per epoch; rows of classes
with a single row (kept only with --singletons negatives) serve only as negatives.

Files: triplets.txt, `a p n` per line (0-based rows of lmdb/train, key %08d), epochs concatenated in order;
triplets.json: seed, epochs, count per epoch, batch size, seed derivation.
"""
import json
import os

import numpy as np

from .outputs import atomic_file, write_json
from .errors import DataPrepError
from .progress import Progress


class _Classes:
    def __init__(self, labels):
        labels = np.asarray(labels, dtype=np.int64)
        self.n = len(labels)
        self.order = np.argsort(labels, kind='stable')            # rows grouped by class
        classes, self.starts, self.counts = np.unique(labels[self.order], return_index=True, return_counts=True)
        self.cls = np.searchsorted(classes, labels)                # class index of each row
        self.pos = np.empty(self.n, dtype=np.int64)                # position of each row within its class
        self.pos[self.order] = np.arange(self.n) - np.repeat(self.starts, self.counts)
        if len(classes) < 2:
            raise DataPrepError('triplets need at least 2 classes in the train split (no negative exists)')
        self.anchors = np.flatnonzero(self.counts[self.cls] >= 2)
        if self.anchors.size == 0:
            raise DataPrepError('no train class has 2 or more images: no positive exists for any triplet')


def epoch_rng(seed, epoch):
    return np.random.default_rng([int(seed), int(epoch)])


def epoch_triplets(labels, seed, epoch, _classes=None):
    """int32 [n_anchors, 3] for one epoch."""
    k = _classes or _Classes(labels)
    rng = epoch_rng(seed, epoch)
    a = rng.permutation(k.anchors)
    c = k.cls[a]
    size = k.counts[c]
    p_pos = (k.pos[a] + rng.integers(1, size)) % size                   # any member but the anchor
    p = k.order[k.starts[c] + p_pos]
    r = rng.integers(0, k.n - size)                                    # any row outside the class
    n = k.order[np.where(r >= k.starts[c], r + size, r)]
    return np.stack([a, p, n], axis=1).astype(np.int32)


def generate_triplets(labels, seed=0, epochs=40):
    """int32 [epochs * n_anchors, 3]: epochs 0..epochs-1 concatenated."""
    k = _Classes(labels)
    return np.concatenate([epoch_triplets(labels, seed, e, k) for e in range(epochs)]) if epochs else \
        np.zeros((0, 3), np.int32)


def anchors_per_epoch(labels):
    return int(_Classes(labels).anchors.size)


def check_triplets(triplets, labels):
    """DataPrepError unless every positive shares the anchor's class (and is not it) and every negative not."""
    labels = np.asarray(labels)
    t = np.asarray(triplets)
    bad = np.flatnonzero((labels[t[:, 0]] != labels[t[:, 1]]) | (t[:, 0] == t[:, 1]) |
                         (labels[t[:, 0]] == labels[t[:, 2]]))
    if bad.size:
        raise DataPrepError(f'triplet {int(bad[0])} {t[bad[0]].tolist()} is invalid ({bad.size} invalid)')


def mirror_choice(rows, n, seed, epoch, stream):
    """`rows` (int [m, 3], rows 0..n-1) with each entry moved to n + row (its mirror, as the
    feature LMDBs of data_prep.features store it) by a fair coin of
    numpy.random.default_rng([seed, epoch, stream]) (stream 2: triplets, 3: shuffled rows)."""
    coins = np.random.default_rng([int(seed), int(epoch), int(stream)]).integers(0, 2, size=rows.shape)
    return (rows + n * coins).astype(np.int32)


def write_triplets(folder, labels, seed=0, epochs=40, batch_size=32, protocol=None, progress=True,
                   mirror_rows=False):
    """Writes triplets.txt and triplets.json into `folder`; returns the metadata dict. With
    `mirror_rows`, each entry names row r or its mirror n + r (mirror_choice)."""
    k = _Classes(labels)
    n = int(k.anchors.size)
    prog = Progress(epochs, 'triplets (epochs)', enabled=progress and n * epochs >= 500000, min_total=1)
    with atomic_file(os.path.join(folder, 'triplets.txt'), 'w') as f:
        for e in range(epochs):
            t = epoch_triplets(labels, seed, e, k)
            if mirror_rows:
                t = mirror_choice(t, k.n, seed, e, 2)
            f.write(('%d %d %d\n' * len(t)) % tuple(t.ravel().tolist()))
            prog.update()
    meta = {
        'seed': int(seed),
        'epochs': int(epochs),
        'count_per_epoch': [n] * int(epochs),
        'triplets_per_epoch': n,
        'total': n * int(epochs),
        'batch_size': int(batch_size),
        'full_batches_per_epoch': n // batch_size,
        'train_rows': int(k.n),
        'anchor_rows': n,
        'negative_only_rows': int(k.n - n),
        'protocol': protocol,
        'seed_derivation': 'epoch e: numpy.random.default_rng([seed, e]) -> permutation of anchors, '
                           'then integers() for positives, then integers() for negatives',
        'file': 'triplets.txt',
        'format': '"a p n" per line: 0-based row indices into lmdb/train (key %08d); epochs concatenated',
        'mirror_rows': bool(mirror_rows),
    }
    if mirror_rows:
        meta['mirror_derivation'] = ('each entry r becomes n + r (the mirror) where '
                                     'numpy.random.default_rng([seed, e, 2]).integers(0, 2, size=(count, 3)) is 1')
    write_json(os.path.join(folder, 'triplets.json'), meta)
    return meta


def epoch_shuffled_rows(n, seed, epoch):
    """int32 [n // 3, 3]: epoch e's batches for the pairwise methods (DSH, DQN), read through
    the same TripletData layer as triplets: numpy.random.default_rng([seed, e, 1]).permutation(n)
    cut into consecutive triples (the last n % 3 rows of the permutation wait for another epoch;
    a fresh permutation each epoch, so every row keeps its turn)."""
    if n < 3:
        raise DataPrepError(f'the pairwise batches need at least 3 train rows, got {n}')
    order = np.random.default_rng([int(seed), int(epoch), 1]).permutation(n)
    return order[:n - n % 3].reshape(-1, 3).astype(np.int32)


def write_shuffled(folder, n, seed=0, epochs=120, protocol=None, progress=True, mirror_rows=False):
    """Writes shuffled.txt and shuffled.json (the pairwise methods' image order) into `folder`;
    `mirror_rows` as write_triplets (coin stream 3)."""
    prog = Progress(epochs, 'shuffled rows (epochs)', enabled=progress and n * epochs >= 1500000,
                    min_total=1)
    with atomic_file(os.path.join(folder, 'shuffled.txt'), 'w') as f:
        for e in range(epochs):
            t = epoch_shuffled_rows(n, seed, e)
            if mirror_rows:
                t = mirror_choice(t, n, seed, e, 3)
            f.write(('%d %d %d\n' * len(t)) % tuple(t.ravel().tolist()))
            prog.update()
    meta = {
        'seed': int(seed), 'epochs': int(epochs), 'lines_per_epoch': n // 3, 'total': (n // 3) * int(epochs),
        'train_rows': int(n), 'protocol': protocol,
        'seed_derivation': 'epoch e: numpy.random.default_rng([seed, e, 1]).permutation(train rows), '
                           'cut into consecutive triples',
        'file': 'shuffled.txt',
        'format': 'three 0-based rows of lmdb/train per line (not triplets: any labels); epochs concatenated',
        'mirror_rows': bool(mirror_rows),
    }
    if mirror_rows:
        meta['mirror_derivation'] = ('each entry r becomes n + r (the mirror) where '
                                     'numpy.random.default_rng([seed, e, 3]).integers(0, 2, size=(lines, 3)) is 1')
    write_json(os.path.join(folder, 'shuffled.json'), meta)
    return meta


def load_triplets(path):
    """Reads triplets.txt -> int32 [N, 3]."""
    t = np.loadtxt(path, dtype=np.int64, ndmin=2)
    if t.size == 0:
        return np.zeros((0, 3), np.int32)
    if t.shape[1] != 3:
        raise DataPrepError(f'{path}: expected 3 columns "a p n", found {t.shape[1]}')
    return t.astype(np.int32)


def load_triplets_meta(folder):
    with open(os.path.join(folder, 'triplets.json')) as f:
        return json.load(f)
