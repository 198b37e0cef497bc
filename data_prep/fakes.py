"""Small fake archives in the official layouts, for tests and smoke runs (never real data).

- fake_cifar10(n_per_batch): random images and labels for 5 train batches + 1 test batch.
- write_cifar10_binary(dest, ...): cifar-10-binary.tar.gz layout (tar.gz, or a folder when dest has no
  .tar.gz suffix): cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin + batches.meta.txt.
- write_cifar10_python(dest, ...): cifar-10-python.tar.gz layout, each batch a pickle as Python 2 writes it
  (protocol 2, str as BINSTRING so that encoding='bytes' yields bytes keys, numpy arrays through
  numpy.core.multiarray._reconstruct).
- py2_pickle_dumps(obj): that pickler.
"""
import io
import os
import pickle
import struct
import tarfile

import numpy as np

from .readers.cifar10 import CLASS_NAMES, TEST_BATCH, TRAIN_BATCHES
from .safe_pickle import _numpy_reconstruct

BATCHES = TRAIN_BATCHES + [TEST_BATCH]


def fake_cifar10(n_per_batch=20, seed=0):
    """-> images uint8 [6 n, 32, 32, 3] (RGB), labels uint8 [6 n]; batch b holds rows b*n .. (b+1)*n-1."""
    rng = np.random.default_rng(seed)
    n = 6 * n_per_batch
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    return images, labels


def _planes(images):
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def _write(dest, folder, files):
    """files {name: bytes} -> dest.tar.gz holding folder/name, or folder dest/folder/name."""
    if str(dest).endswith(('.tar.gz', '.tgz', '.tar')):
        with tarfile.open(dest, 'w:gz' if not str(dest).endswith('.tar') else 'w') as t:
            d = tarfile.TarInfo(folder)
            d.type = tarfile.DIRTYPE
            t.addfile(d)
            for name, data in files.items():
                info = tarfile.TarInfo(f'{folder}/{name}')
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    else:
        os.makedirs(os.path.join(dest, folder), exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(dest, folder, name), 'wb') as f:
                f.write(data)
    return dest


def write_cifar10_binary(dest, images, labels, class_names=CLASS_NAMES):
    n = len(images) // 6
    files = {}
    for b, batch in enumerate(BATCHES):
        sl = slice(b * n, (b + 1) * n)
        files[batch + '.bin'] = np.concatenate([labels[sl, None].astype(np.uint8), _planes(images[sl])],
                                               axis=1).tobytes()
    files['batches.meta.txt'] = ('\n'.join(class_names) + '\n\n').encode()
    return _write(dest, 'cifar-10-batches-bin', files)


class _Py2Pickler(pickle._Pickler):
    """Protocol 2, with str and bytes written as Python 2 str (BINSTRING)."""
    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file, numpy_module='numpy.core.multiarray'):
        super().__init__(file, protocol=2)
        self.numpy_module = numpy_module

    def save_py2_str(self, obj):
        data = obj.encode('latin-1') if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack('<i', len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        if obj is _numpy_reconstruct():
            self.write(pickle.GLOBAL + f'{self.numpy_module}\n_reconstruct\n'.encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def py2_pickle_dumps(obj, numpy_module='numpy.core.multiarray'):
    f = io.BytesIO()
    _Py2Pickler(f, numpy_module).dump(obj)
    return f.getvalue()


def write_cifar10_python(dest, images, labels, numpy_module='numpy.core.multiarray',
                         class_names=CLASS_NAMES):
    n = len(images) // 6
    files = {}
    for b, batch in enumerate(BATCHES):
        sl = slice(b * n, (b + 1) * n)
        files[batch] = py2_pickle_dumps({
            'batch_label': f'{"testing" if batch == TEST_BATCH else "training"} batch {b + 1} of 5',
            'labels': [int(x) for x in labels[sl]],
            'data': np.ascontiguousarray(_planes(images[sl])),
            'filenames': [f'fake_{i:06d}.png' for i in range(b * n, (b + 1) * n)],
        }, numpy_module)
    files['batches.meta'] = py2_pickle_dumps({'label_names': list(class_names), 'num_cases_per_batch': n,
                                              'num_vis': 3072})
    return _write(dest, 'cifar-10-batches-py', files)
