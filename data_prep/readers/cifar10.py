"""CIFAR-10 readers: the official binary archive and the official python (pickle) archive.

Both give the same Dataset: 60,000 RGB 32x32 images in the order data_batch_1..5 then test_batch, ids
`<batch>/<record index, 5 digits>` (identical for the two layouts, whose record orders are the same), labels
0-9, partition 'train' (the 50,000 of data_batch_*) or 'test' (test_batch).
"""
import numpy as np

from ..dataset import Dataset
from ..errors import DataPrepError
from ..safe_pickle import safe_loads
from ._archive import member_names, read_named_files

CLASS_NAMES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
TRAIN_BATCHES = [f'data_batch_{i}' for i in range(1, 6)]
TEST_BATCH = 'test_batch'
RECORD_BYTES = 1 + 3 * 32 * 32
FULL = (50000, 10000)


def read_cifar10(path, layout=None, expected=FULL):
    """Reads either layout; `layout` is 'binary', 'python' or None (detected from the member names)."""
    layout = layout or detect_layout(path)
    if layout == 'binary':
        return read_cifar10_binary(path, expected)
    if layout == 'python':
        return read_cifar10_python(path, expected)
    raise ValueError(f'unknown CIFAR-10 layout {layout!r}')


def detect_layout(path):
    for name in member_names(path):
        parts = name.replace('\\', '/').strip('/').split('/')
        if 'cifar-10-batches-bin' in parts or parts[-1].endswith('.bin'):
            return 'binary'
        if 'cifar-10-batches-py' in parts or parts[-1] in TRAIN_BATCHES + [TEST_BATCH, 'batches.meta']:
            return 'python'
    raise DataPrepError(f'{path}: neither the CIFAR-10 binary layout (cifar-10-batches-bin/data_batch_1.bin ...) '
                        'nor the python layout (cifar-10-batches-py/data_batch_1 ...); pass '
                        'cifar-10-binary.tar.gz or cifar-10-python.tar.gz (or its extracted folder)')


def _expected_per_file(expected):
    if expected is None:
        return None
    n_train, n_test = expected
    if n_train % len(TRAIN_BATCHES):
        raise ValueError('expected training count must split evenly over 5 batches')
    return dict({b: n_train // len(TRAIN_BATCHES) for b in TRAIN_BATCHES}, **{TEST_BATCH: n_test})


def _check_count(where, n, per_file, batch):
    if per_file is not None and n != per_file[batch]:
        raise DataPrepError(f'{where}: holds {n:,} records, expected {per_file[batch]:,} (CIFAR-10 has 50,000 '
                            'training and 10,000 test images in 5+1 batches of 10,000); the archive is '
                            'incomplete or not CIFAR-10: download it again')


def _check_labels(where, labels):
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        i = int(bad[0])
        raise DataPrepError(f'{where}: record {i} has label {int(labels[i])}, expected 0-9 '
                            f'({bad.size} such records); the file is corrupt or not CIFAR-10: download it again')


def _class_names(where, names):
    """The archive's own class names (batches.meta.txt / batches.meta), used where they are 10
    distinct non-empty names (a data set repacked into the CIFAR-10 layout); else CIFAR-10's."""
    names = [str(n).strip() for n in names or [] if str(n).strip()]
    if len(names) == len(CLASS_NAMES) and len(set(names)) == len(names):
        return names
    if names:
        raise DataPrepError(f'{where}: {len(names)} class names ({len(set(names))} distinct), expected '
                            f'{len(CLASS_NAMES)} distinct ones, one a line; fix or remove the file')
    return list(CLASS_NAMES)


def _assemble(path, parts, layout, class_names=CLASS_NAMES):
    ids, labels, images, partition = [], [], [], []
    for batch, (imgs, labs) in parts:
        ids += [f'{batch}/{i:05d}' for i in range(len(labs))]
        labels.append(labs.astype(np.int64))
        images.append(imgs)
        partition += ['test' if batch == TEST_BATCH else 'train'] * len(labs)
    return Dataset(name='cifar10', source=path, ids=ids, labels=np.concatenate(labels), class_names=list(class_names),
                   partition=np.array(partition), images=np.concatenate(images), channels=3,
                   notes=[f'CIFAR-10 {layout} layout'])


def read_cifar10_binary(path, expected=FULL):
    """`cifar-10-binary.tar.gz` or the folder `cifar-10-batches-bin/` (or its parent)."""
    per_file = _expected_per_file(expected)
    names = [b + '.bin' for b in TRAIN_BATCHES + [TEST_BATCH]]
    files = read_named_files(path, 'cifar-10-batches-bin', names, optional=['batches.meta.txt'])
    parts = []
    for batch, name in zip(TRAIN_BATCHES + [TEST_BATCH], names):
        data = files[name]
        where = f'{path}: {name}'
        n, rest = divmod(len(data), RECORD_BYTES)
        if rest:
            raise DataPrepError(f'{where}: {len(data):,} bytes is not a multiple of the {RECORD_BYTES:,}-byte '
                                f'record: record {n} is cut short after {rest} bytes; the file is truncated or '
                                'corrupt: download the archive again')
        _check_count(where, n, per_file, batch)
        rec = np.frombuffer(data, dtype=np.uint8).reshape(n, RECORD_BYTES)
        labels = rec[:, 0]
        _check_labels(where, labels)
        imgs = rec[:, 1:].reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
        parts.append((batch, (imgs, labels)))
    meta = files.get('batches.meta.txt')
    where = f'{path}: batches.meta.txt'
    try:
        text = meta.decode('utf-8').splitlines() if meta is not None else []
    except UnicodeDecodeError:
        raise DataPrepError(f'{where}: not UTF-8 text; expected one class name a line') from None
    return _assemble(path, parts, 'binary', _class_names(where, text))


def _get(d, key):
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    return None


def read_cifar10_python(path, expected=FULL):
    """`cifar-10-python.tar.gz` or the folder `cifar-10-batches-py/` (or its parent); restricted unpickling."""
    per_file = _expected_per_file(expected)
    names = TRAIN_BATCHES + [TEST_BATCH]
    files = read_named_files(path, 'cifar-10-batches-py', names, optional=['batches.meta'])
    parts = []
    for batch in names:
        where = f'{path}: {batch}'
        d = safe_loads(files[batch], where)
        data = _get(d, 'data') if isinstance(d, dict) else None
        labels = _get(d, 'labels') if isinstance(d, dict) else None
        if data is None or labels is None:
            raise DataPrepError(f'{where}: not a CIFAR-10 batch (expected a dict with data and labels); '
                                'download the archive again')
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == 3072):
            shape = getattr(data, 'shape', None)
            raise DataPrepError(f'{where}: data is {type(data).__name__} {shape} {getattr(data, "dtype", "")}, '
                                'expected a uint8 array of n x 3072; the file is corrupt: download it again')
        try:
            labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            raise DataPrepError(f'{where}: labels are not a list of integers; the file is corrupt: '
                                'download it again') from None
        if len(labels) != len(data):
            raise DataPrepError(f'{where}: {len(data):,} images but {len(labels):,} labels; the file is '
                                'corrupt: download it again')
        _check_count(where, len(data), per_file, batch)
        _check_labels(where, labels)
        imgs = np.ascontiguousarray(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        parts.append((batch, (imgs, labels)))
    names_ = []
    if 'batches.meta' in files:
        where = f'{path}: batches.meta'
        meta = safe_loads(files['batches.meta'], where)
        names_ = _get(meta, 'label_names') if isinstance(meta, dict) else None
        if not isinstance(names_, (list, tuple)):
            raise DataPrepError(f'{where}: expected a dict with label_names (a list); fix or remove the file')
        names_ = [n.decode('utf-8', 'replace') if isinstance(n, bytes) else n for n in names_]
    return _assemble(path, parts, 'python', _class_names(f'{path}: batches.meta', names_))
