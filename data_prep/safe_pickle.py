"""Restricted unpicklers (never plain pickle.load): the CIFAR-10 python archive; torch .pth state dicts (below).

The batch files are Python 2 pickles of dicts {b'data': uint8 ndarray, b'labels': [int], b'batch_label',
b'filenames'}. Besides plain containers they reference exactly three globals: numpy's array
reconstruction function, numpy.ndarray and numpy.dtype. Every other global (os.system, builtins.eval,
subprocess..., even harmless ones) is refused before anything is called, so a malicious file cannot run
code. Persistent ids are refused too (Unpickler's default).
"""
import collections
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


# ---------------------------------------------------------------- torch .pth state dicts (no torch)
#
# A torch checkpoint is either a zip (torch >= 1.6: `<name>/data.pkl` + `<name>/data/<key>` raw
# storages) or the legacy stream (five pickles: magic number, protocol version, sys_info, the object,
# the sorted storage keys; then per key an int64 element count and the raw little-endian elements).
# The object pickle references storages through persistent ids ('storage', <StorageType>, key,
# location, numel[, view_metadata]) and rebuilds tensors with torch._utils._rebuild_tensor_v2(storage,
# offset, size, stride, requires_grad, backward_hooks[, metadata]). `load_torch_state_dict` admits
# exactly those globals, collections.OrderedDict and the torch.<T>Storage type names, each resolved
# to a stand-in of ours (torch is never imported); tensors come back as numpy arrays (copies).

TORCH_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
TORCH_LEGACY_PROTOCOL = 1001

_TORCH_STORAGE_DTYPES = {
    'FloatStorage': '<f4', 'DoubleStorage': '<f8', 'HalfStorage': '<f2', 'LongStorage': '<i8',
    'IntStorage': '<i4', 'ShortStorage': '<i2', 'CharStorage': 'i1', 'ByteStorage': 'u1',
    'BoolStorage': '?',
}


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(_TORCH_STORAGE_DTYPES[name])


class _StorageRef:
    def __init__(self, key, dtype, numel, view=None):
        self.key, self.dtype, self.numel, self.view = key, dtype, numel, view


class _TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _is_int_tuple(t):
    return isinstance(t, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in t)


class TorchStateUnpickler(pickle.Unpickler):
    """Admits only the records of a tensor state dict; everything else is refused before any call."""

    def __init__(self, file, source):
        super().__init__(file)
        self.source = source

    def _refuse(self, what):
        raise DataPrepError(
            f'{self.source}: refusing {what}: a torch state dict holds only tensors '
            '(torch._utils._rebuild_tensor_v2 over torch.<T>Storage records) in OrderedDicts. This file is '
            'not a plain weights file (it may run code when loaded with torch.load); do not load it, '
            'fetch the pinned backbone again')

    def find_class(self, module, name):
        if (module, name) == ('collections', 'OrderedDict'):
            return collections.OrderedDict
        if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
            return self._rebuild_tensor_v2
        if module == 'torch' and name in _TORCH_STORAGE_DTYPES:
            return _StorageType(name)
        self._refuse(f'the global {module}.{name}')

    def _rebuild_tensor_v2(self, storage, offset, size, stride, requires_grad=False, hooks=None, *metadata):
        if not (isinstance(storage, _StorageRef) and isinstance(offset, int) and _is_int_tuple(size)
                and _is_int_tuple(stride) and len(size) == len(stride) and isinstance(requires_grad, bool)):
            self._refuse('a _rebuild_tensor_v2 record with unexpected arguments')
        if hooks:
            self._refuse('a tensor with backward hooks')
        return _TensorRef(storage, offset, size, stride)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == 'storage'
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[3], str)
                and isinstance(pid[4], int)):
            self._refuse(f'the persistent id {pid!r:.120}')
        view = pid[5] if len(pid) == 6 else None
        if view is not None and not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                                     and isinstance(view[1], int) and isinstance(view[2], int)):
            self._refuse(f'the storage view {view!r:.120}')
        return _StorageRef(pid[2], pid[1].dtype, pid[4], view)


def _torch_error(source, e):
    return DataPrepError(f'{source}: not a readable torch weights file ({type(e).__name__}: {e}); the file '
                         'is truncated or corrupt, fetch it again')


def _resolve(obj, storages, source):
    """Replaces every _TensorRef (in dicts, lists, tuples) by a numpy array copied from its storage."""
    if isinstance(obj, _TensorRef):
        arr = storages.get(obj.storage.key)
        if arr is None:
            raise DataPrepError(f'{source}: tensor storage {obj.storage.key!r} is missing from the file')
        if obj.storage.view is not None:
            _, off, n = obj.storage.view
            arr = arr[off:off + n]
        need = obj.offset + sum((s - 1) * st for s, st in zip(obj.size, obj.stride)) + 1 if all(obj.size) else 0
        if obj.offset < 0 or any(st < 0 for st in obj.stride) or need > arr.size:
            raise DataPrepError(f'{source}: a tensor of size {obj.size} reaches past its storage '
                                f'{obj.storage.key!r} ({arr.size} elements); the file is corrupt')
        isz = arr.dtype.itemsize
        return np.lib.stride_tricks.as_strided(arr[obj.offset:], shape=obj.size,
                                               strides=tuple(st * isz for st in obj.stride)).copy()
    if isinstance(obj, dict):
        out = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _resolve(v, storages, source)
        return out
    if isinstance(obj, list):
        return [_resolve(v, storages, source) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v, storages, source) for v in obj)
    return obj


def _collect_storages(obj, found):
    if isinstance(obj, _TensorRef):
        found[obj.storage.key] = obj.storage
    elif isinstance(obj, dict):
        for v in obj.values():
            _collect_storages(v, found)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _collect_storages(v, found)
    return found


def _storage_array(data, ref, source):
    n = ref.numel * ref.dtype.itemsize
    if len(data) < n:
        raise DataPrepError(f'{source}: storage {ref.key!r} has {len(data)} bytes, its record says '
                            f'{ref.numel} x {ref.dtype.itemsize}; the file is truncated, fetch it again')
    return np.frombuffer(data[:n], dtype=ref.dtype)


def load_torch_state_dict(path):
    """{name: numpy array} of a torch .pth weights file (zip or legacy format), read without torch
    and without running anything the file names: see TorchStateUnpickler."""
    source = str(path)
    try:
        with open(path, 'rb') as f:
            head = f.read(4)
            f.seek(0)
            if head == b'PK\x03\x04':
                import zipfile
                with zipfile.ZipFile(f) as z:
                    pkl = [n for n in z.namelist() if n.endswith('/data.pkl') or n == 'data.pkl']
                    if len(pkl) != 1:
                        raise DataPrepError(f'{source}: a torch zip file holds exactly one data.pkl; '
                                            f'found {len(pkl)}')
                    prefix = pkl[0][:-len('data.pkl')]
                    obj = TorchStateUnpickler(io.BytesIO(z.read(pkl[0])), source).load()
                    names = set(z.namelist())
                    storages = {}
                    for key, ref in _collect_storages(obj, {}).items():
                        member = f'{prefix}data/{key}'
                        if member not in names:
                            raise DataPrepError(f'{source}: storage {member} is missing from the zip')
                        storages[key] = _storage_array(z.read(member), ref, source)
            else:
                magic = TorchStateUnpickler(f, source).load()
                if magic != TORCH_LEGACY_MAGIC:
                    raise DataPrepError(f'{source}: not a torch weights file (neither a zip nor the legacy '
                                        'magic number)')
                protocol = TorchStateUnpickler(f, source).load()
                if protocol != TORCH_LEGACY_PROTOCOL:
                    raise DataPrepError(f'{source}: legacy torch protocol {protocol!r}, expected '
                                        f'{TORCH_LEGACY_PROTOCOL}')
                sys_info = TorchStateUnpickler(f, source).load()
                if isinstance(sys_info, dict) and sys_info.get('little_endian') is False:
                    raise DataPrepError(f'{source}: written on a big-endian machine; not supported')
                obj = TorchStateUnpickler(f, source).load()
                keys = TorchStateUnpickler(f, source).load()
                if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
                    raise DataPrepError(f'{source}: the legacy storage key list is malformed')
                refs = _collect_storages(obj, {})
                storages = {}
                for key in keys:
                    count = np.frombuffer(f.read(8), '<i8')
                    ref = refs.get(key)
                    if count.size != 1:
                        raise DataPrepError(f'{source}: truncated before storage {key!r}; fetch it again')
                    if ref is None:  # a storage no tensor uses: skip its bytes (element size unknown)
                        raise DataPrepError(f'{source}: storage {key!r} is used by no tensor; refusing an '
                                            'unexpected layout')
                    numel = int(count[0])
                    if numel != ref.numel:
                        raise DataPrepError(f'{source}: storage {key!r} holds {numel} elements, its record '
                                            f'says {ref.numel}; the file is corrupt')
                    storages[key] = _storage_array(f.read(numel * ref.dtype.itemsize), ref, source)
    except DataPrepError:
        raise
    except Exception as e:  # truncated / corrupt: UnpicklingError, EOFError, BadZipFile, ...
        raise _torch_error(source, e) from None
    result = _resolve(obj, storages, source)
    if not isinstance(result, dict):
        raise DataPrepError(f'{source}: holds a {type(result).__name__}, not a state dict of tensors')
    return result
