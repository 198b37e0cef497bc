"""Protocols: deterministic train / query / database index lists, and their list files.

Every protocol is a function of (labels, official partition, seed) returning index arrays into the
Dataset, each sorted ascending (so list files and LMDB rows follow the reader's order). Random draws use
numpy.random.default_rng(seed), visiting classes in ascending label order.

CIFAR-10 (`--dataset cifar10`):
  paper      pooled 60,000; per class 5,000 train and 1,000 test drawn at random; query = database = test
             (as DSH, beside which the TQN paper sets its figures).
  dsh        train = official 50,000 training images; query = database = official 10,000 test images.
  cifar10-2  train = official 50,000; query = official 10,000 test; database = the 50,000 training images.
  cifar10-1  pooled 60,000; query = 100 per class (1,000); database = the other 59,000;
             train = 500 per class (5,000) drawn from the database.
In-shop (`--dataset inshop`):
  inshop        official: train / query / gallery (= database).
  inshop-paper  the paper's 38,494 "training" images = train + gallery, its 14,218 test images = query;
                database = gallery. The database overlaps training: a property of the paper's protocol.
digits:         `digits`: per class 20 % (rounded half up) as query, the rest is database and train.
images:         `stratified`: per class a share (--query-share, default 0.2) as query, rest = database = train.
                `given`: the user's own sets (train/ + test/ or query/ [+ database/] folders, or list files per
                set, or a list with a set column); database = the given database set, else the training
                images (as cifar10-2).
                `stratified-dsh`, `given-dsh`: the same, with database = query (each query left out of its
                own ranking at evaluation, as DSH's protocol).

Files: splits/<protocol>/{train,query,database}.txt, one `item_id label` line per item, and split.json
(protocol, seed, counts per split and per class, whether database is train / overlaps train).
"""
import os
from dataclasses import dataclass, field

import numpy as np

from .outputs import sha256_file, write_json, write_text
from .errors import DataPrepError

PROTOCOLS = {
    'cifar10': ('paper', 'dsh', 'cifar10-2', 'cifar10-1', 'cifar10-holdout'),
    'inshop': ('inshop', 'inshop-paper'),
    'digits': ('digits',),
    'images': ('stratified', 'given', 'stratified-dsh', 'given-dsh'),
}
DEFAULT_PROTOCOL = {'cifar10': 'paper', 'inshop': 'inshop', 'digits': 'digits', 'images': 'stratified'}
SPLIT_NAMES = ('train', 'query', 'database')
SINGLETON_POLICIES = ('error', 'negatives')


@dataclass
class Split:
    protocol: str
    seed: int
    train: np.ndarray
    query: np.ndarray
    database: np.ndarray
    notes: list = field(default_factory=list)
    singleton_classes: list = field(default_factory=list)   # train classes with one image ('negatives')

    def rows(self, name):
        return getattr(self, name)

    @property
    def database_is_train(self):
        return np.array_equal(self.database, self.train)

    @property
    def database_is_query(self):
        return np.array_equal(self.database, self.query)


def _by_class(labels, rng):
    """Yields (label, indices of that class in random order) for each class in ascending label order."""
    for c in np.unique(labels):
        yield int(c), rng.permutation(np.flatnonzero(labels == c))


def _need_partition(dataset, allowed, protocol):
    if dataset.partition is None or not set(np.unique(dataset.partition)) <= set(allowed):
        raise DataPrepError(f'{dataset.source}: protocol {protocol} needs the official partition '
                            f'({"/".join(allowed)}) of the archive')
    return dataset.partition


def _per_class_draw(labels, rng, counts, source, protocol):
    """Per class, consecutive slices of a random permutation: counts = (n_0, n_1, ...) -> tuple of lists."""
    outs = [[] for _ in counts]
    for c, perm in _by_class(labels, rng):
        if len(perm) < sum(counts):
            raise DataPrepError(f'{source}: protocol {protocol} draws {sum(counts):,} images of each class but '
                                f'class {c} has {len(perm):,}; use the full CIFAR-10 archive or another protocol')
        start = 0
        for out, n in zip(outs, counts):
            out.append(perm[start:start + n])
            start += n
    return [np.sort(np.concatenate(o)) for o in outs]


def _stratified(labels, rng, share):
    if not 0 < share < 1:
        raise DataPrepError(f'query share must be between 0 and 1 (exclusive), got {share}')
    query = []
    for c, perm in _by_class(labels, rng):
        query.append(perm[:int(np.floor(share * len(perm) + 0.5))])
    query = np.sort(np.concatenate(query))
    rest = np.setdiff1d(np.arange(len(labels)), query)
    return query, rest


def make_split(dataset, protocol=None, seed=0, query_share=0.2, singletons='error'):
    protocol = protocol or DEFAULT_PROTOCOL[dataset.name]
    if protocol not in PROTOCOLS.get(dataset.name, ()):
        raise DataPrepError(f'protocol {protocol!r} does not apply to dataset {dataset.name}; choose one of '
                            f'{", ".join(PROTOCOLS.get(dataset.name, ()))}')
    if singletons not in SINGLETON_POLICIES:
        raise ValueError(f'singletons must be one of {SINGLETON_POLICIES}')
    labels = dataset.labels
    rng = np.random.default_rng(seed)
    notes = []
    if protocol == 'paper':
        _need_partition(dataset, ('train', 'test'), protocol)
        train, test = _per_class_draw(labels, rng, (5000, 1000), dataset.source, protocol)
        query = database = test
        notes.append('pooled 60,000; per class 5,000 train / 1,000 test at random; query = database = test')
    elif protocol in ('dsh', 'cifar10-2'):
        part = _need_partition(dataset, ('train', 'test'), protocol)
        train = np.flatnonzero(part == 'train')
        query = np.flatnonzero(part == 'test')
        database = query if protocol == 'dsh' else train
        notes.append('official train / test; ' + ('query = database = test' if protocol == 'dsh'
                                                  else 'query = test, database = train'))
    elif protocol == 'cifar10-holdout':
        # For choices (model selection) only: never touches the official test set.
        part = _need_partition(dataset, ('train', 'test'), protocol)
        official = np.flatnonzero(part == 'train')
        sub = labels[official]
        query_local, rest_local = _per_class_draw(sub, rng, (100, 400), dataset.source, protocol)
        query, database = official[query_local], official[rest_local]
        train = np.setdiff1d(official, np.concatenate([query, database]))
        notes.append('official train only: 500 a class held out (query 100 a class, database 400 a '
                     'class), train = the other 45,000; for choosing settings without the test set')
    elif protocol == 'cifar10-1':
        _need_partition(dataset, ('train', 'test'), protocol)
        query, train = _per_class_draw(labels, rng, (100, 500), dataset.source, protocol)
        database = np.setdiff1d(np.arange(len(labels)), query)
        notes.append('pooled; query 100 per class; database = the rest; train 500 per class from database')
    elif protocol in ('inshop', 'inshop-paper'):
        part = _need_partition(dataset, ('train', 'query', 'gallery'), protocol)
        query = np.flatnonzero(part == 'query')
        database = np.flatnonzero(part == 'gallery')
        if protocol == 'inshop':
            train = np.flatnonzero(part == 'train')
            notes.append('official In-shop: train / query / gallery = database')
        else:
            train = np.flatnonzero((part == 'train') | (part == 'gallery'))
            notes.append('paper: training = train + gallery, test = query; database = gallery, which '
                         'overlaps training (a property of the paper\'s protocol)')
    elif protocol in ('digits', 'stratified', 'stratified-dsh'):
        share = 0.2 if protocol == 'digits' else query_share
        query, train = _stratified(labels, rng, share)
        database = query if protocol == 'stratified-dsh' else train
        notes.append(f'stratified: {share:g} of each class as query, rest = train; database = '
                     + ('query (self-match excluded)' if protocol == 'stratified-dsh' else 'train'))
    elif protocol in ('given', 'given-dsh'):
        part = dataset.partition
        if part is None or not {'train', 'query'} <= set(np.unique(part)):
            raise DataPrepError(f'{dataset.source}: protocol {protocol} needs the given sets: train/ and test/ '
                                '(or query/) folders, --train-list and --query-list, or a list with a set column')
        train = np.flatnonzero(part == 'train')
        query = np.flatnonzero(part == 'query')
        given_db = np.flatnonzero(part == 'database')
        if given_db.size and protocol == 'given-dsh':
            raise DataPrepError(f'{dataset.source}: a database set is given, so the database cannot be the '
                                'query set; drop the database set or the database-is-query choice')
        database = given_db if given_db.size else (query if protocol == 'given-dsh' else train)
        notes.append('given sets: train / query; database = ' +
                     ('the given database set' if given_db.size else
                      'query (self-match excluded)' if protocol == 'given-dsh' else 'train'))
    else:  # pragma: no cover - PROTOCOLS and this chain are kept in step
        raise AssertionError(protocol)
    split = Split(protocol, int(seed), train, query, database, notes)
    validate_split(dataset, split, singletons)
    return split


def validate_split(dataset, split, singletons='error'):
    for name in SPLIT_NAMES:
        if len(split.rows(name)) == 0:
            raise DataPrepError(f'{dataset.source}: protocol {split.protocol} leaves the {name} split empty; '
                                'add images or choose another protocol / query share')
    train_labels = dataset.labels[split.train]
    classes, counts = np.unique(train_labels, return_counts=True)
    if len(classes) < 2:
        raise DataPrepError(f'{dataset.source}: the train split has {len(classes)} class; triplets need at '
                            'least 2 classes (a negative of another class)')
    single = classes[counts == 1]
    if single.size and singletons == 'error':
        names = [dataset.class_names[c] if c < len(dataset.class_names) else str(c) for c in single[:5]]
        rows = [dataset.ids[split.train[np.flatnonzero(train_labels == c)[0]]] for c in single[:5]]
        raise DataPrepError(
            f'{dataset.source}: {single.size} class(es) have a single image in the train split of protocol '
            f'{split.protocol}, so no positive exists for a triplet: ' +
            ', '.join(f'{n} ({r})' for n, r in zip(names, rows)) + (' ...' if single.size > 5 else '') +
            '. Add images, or pass --singletons negatives to keep them in train only as negatives '
            '(never as anchors)')
    split.singleton_classes = [int(c) for c in single]
    if single.size:
        split.notes.append(f'{single.size} train classes with a single image are used only as negatives')


def class_counts(labels):
    c, n = np.unique(labels, return_counts=True)
    return {str(int(a)): int(b) for a, b in zip(c, n)}


def save_split(dataset, split, folder):
    """Writes train/query/database.txt and split.json into `folder`; returns {file name: sha256}."""
    os.makedirs(folder, exist_ok=True)
    hashes = {}
    for name in SPLIT_NAMES:
        rows = split.rows(name)
        path = os.path.join(folder, f'{name}.txt')
        write_text(path, ''.join(f'{dataset.ids[i]} {int(dataset.labels[i])}\n' for i in rows))
        hashes[f'{name}.txt'] = sha256_file(path)
    overlap = int(np.intersect1d(split.database, split.train).size)
    write_json(os.path.join(folder, 'split.json'), {
        'protocol': split.protocol,
        'seed': split.seed,
        'dataset': dataset.name,
        'source': dataset.source,
        'counts': {name: int(len(split.rows(name))) for name in SPLIT_NAMES},
        'counts_per_class': {name: class_counts(dataset.labels[split.rows(name)]) for name in SPLIT_NAMES},
        'classes': len(dataset.class_names),
        'class_names': list(dataset.class_names),
        'database_is_train': bool(split.database_is_train),
        'database_is_query': bool(split.database_is_query),
        'database_train_overlap': overlap,
        'singleton_train_classes': split.singleton_classes,
        'notes': split.notes,
        'files': hashes,
        'format': 'one line per item: "<item_id> <label>"; line i = row i of the matching LMDB',
    })
    return hashes


def load_list(path):
    """Reads a list file -> (ids, int64 labels). Ids may contain spaces (the label is the last field)."""
    ids, labels = [], []
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, start=1):
            cols = line.rstrip('\n').rsplit(' ', 1)
            if len(cols) != 2 or not cols[1].lstrip('-').isdigit():
                raise DataPrepError(f'{path}: line {lineno}: expected "<item_id> <label>", found {line[:80]!r}')
            ids.append(cols[0])
            labels.append(int(cols[1]))
    return ids, np.array(labels, dtype=np.int64)
