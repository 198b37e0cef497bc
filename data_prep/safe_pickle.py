"""A restricted unpickler for the CIFAR-10 python archive (never plain pickle.load).

The batch files are Python 2 pickles of dicts {b'data': uint8 ndarray, b'labels': [int], b'batch_label',
b'filenames'}. Besides plain containers they reference exactly three globals: numpy's array
reconstruction function, numpy.ndarray and numpy.dtype. Every other global (os.system, builtins.eval,
subprocess..., even harmless ones) is refused before anything is called, so a malicious file cannot run
code. Persistent ids are refused too (Unpickler's default).
"""
import importlib
import io
import pickle

import numpy as np

from .errors import DataPrepError


def _numpy_reconstruct():
    for mod in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        try:
            return importlib.import_module(mod)._reconstruct
        except (ImportError, AttributeError):
            continue
    raise ImportError('numpy has no multiarray._reconstruct')


# (module, name) as written in the pickle -> the object it may resolve to.
_ALLOWED = {
    ('numpy.core.multiarray', '_reconstruct'): _numpy_reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _numpy_reconstruct,
    ('numpy', 'ndarray'): lambda: np.ndarray,
    ('numpy', 'dtype'): lambda: np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source):
        super().__init__(file, encoding='bytes')
        self.source = source

    def find_class(self, module, name):
        make = _ALLOWED.get((module, name))
        if make is None:
            raise DataPrepError(
                f'{self.source}: refusing to unpickle the global {module}.{name}: a CIFAR-10 batch holds only '
                'numpy arrays, lists and strings. This file is not an official CIFAR-10 python batch (it may be '
                'malicious); do not load it, download cifar-10-python.tar.gz again from the official site')
        return make()


def safe_loads(data, source):
    """Unpickles bytes with RestrictedUnpickler; any failure -> DataPrepError naming `source`."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source).load()
    except DataPrepError:
        raise
    except Exception as e:  # truncated / corrupt stream: UnpicklingError, EOFError, ValueError, ...
        raise DataPrepError(f'{source}: not a readable CIFAR-10 python batch ({type(e).__name__}: {e}); the '
                            'archive is truncated or corrupt, download it again') from None
