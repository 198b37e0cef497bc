"""data_prep.safe_pickle.load_torch_state_dict: torch .pth files read without torch, code refused.

The .pth files are made here by hand, opcode by opcode, exactly as torch.save writes them (the zip
format and the legacy stream), so the test needs neither torch nor a download."""
import collections
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from data_prep.errors import DataPrepError
from data_prep.safe_pickle import TORCH_LEGACY_MAGIC, TORCH_LEGACY_PROTOCOL, load_torch_state_dict


class G:  # a GLOBAL opcode
    def __init__(self, module, name):
        self.module, self.name = module, name


class Call:  # REDUCE: func(*args)
    def __init__(self, func, *args):
        self.func, self.args = func, args


class PersId:
    def __init__(self, value):
        self.value = value


def emit(obj, out):
    P = pickle
    if isinstance(obj, G):
        out += P.GLOBAL + f'{obj.module}\n{obj.name}\n'.encode()
    elif isinstance(obj, Call):
        emit(obj.func, out)
        emit(tuple(obj.args), out)
        out += P.REDUCE
    elif isinstance(obj, PersId):
        emit(obj.value, out)
        out += P.BINPERSID
    elif obj is None:
        out += P.NONE
    elif obj is True or obj is False:
        out += P.NEWTRUE if obj else P.NEWFALSE
    elif isinstance(obj, int):
        out += P.BININT + struct.pack('<i', obj)
    elif isinstance(obj, str):
        b = obj.encode()
        out += P.BINUNICODE + struct.pack('<I', len(b)) + b
    elif isinstance(obj, tuple):
        out += P.MARK
        for v in obj:
            emit(v, out)
        out += P.TUPLE
    elif isinstance(obj, dict):
        out += P.EMPTY_DICT + P.MARK
        for k, v in obj.items():
            emit(k, out)
            emit(v, out)
        out += P.SETITEMS
    else:
        raise TypeError(obj)


def dumps(obj):
    out = bytearray(pickle.PROTO + b'\x02')
    emit(obj, out)
    out += pickle.STOP
    return bytes(out)


STORAGE = {np.dtype('float32'): 'FloatStorage', np.dtype('int64'): 'LongStorage',
           np.dtype('float64'): 'DoubleStorage'}


def tensor_record(key, arr, storage_numel, offset=0, legacy=False, stride=None):
    arr = np.asarray(arr)
    stride = stride or tuple(s // arr.itemsize for s in arr.strides)
    pid = ('storage', G('torch', STORAGE[arr.dtype]), key, 'cpu', storage_numel) + ((None,) if legacy else ())
    hooks = Call(G('collections', 'OrderedDict'))
    return Call(G('torch._utils', '_rebuild_tensor_v2'), PersId(pid), offset, tuple(arr.shape), stride,
                False, hooks)


def state(tensors, legacy=False):
    """(state-dict pickle bytes, {key: storage bytes}) for {name: array}; each tensor its own storage,
    the second one at an offset inside a larger storage."""
    records, storages = {}, {}
    for i, (name, arr) in enumerate(tensors.items()):
        arr = np.array(arr, order="C")
        pad = np.zeros(3, arr.dtype) if i == 1 else np.zeros(0, arr.dtype)
        flat = np.concatenate([pad, arr.ravel()])
        storages[str(i)] = flat
        records[name] = tensor_record(str(i), arr, flat.size, offset=pad.size, legacy=legacy)
    return dumps(Call(G('collections', 'OrderedDict'), tuple((k, v) for k, v in records.items()))), storages


def write_zip(path, obj_pickle, storages):
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('archive/data.pkl', obj_pickle)
        z.writestr('archive/version', '3\n')
        for key, arr in storages.items():
            z.writestr(f'archive/data/{key}', arr.astype(arr.dtype.newbyteorder('<')).tobytes())


def write_legacy(path, obj_pickle, storages):
    with open(path, 'wb') as f:
        for v in (TORCH_LEGACY_MAGIC, TORCH_LEGACY_PROTOCOL,
                  {'protocol_version': 1001, 'little_endian': True, 'type_sizes': {'int': 4}}):
            pickle.dump(v, f, protocol=2)
        f.write(obj_pickle)
        keys = sorted(storages)
        pickle.dump(keys, f, protocol=2)
        for k in keys:
            f.write(struct.pack('<q', storages[k].size))
            f.write(storages[k].tobytes())


TENSORS = collections.OrderedDict([
    ('conv.weight', np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3) / 7),
    ('bn.running_mean', np.array([0.5, -1.25], np.float32)),
    ('bn.num_batches_tracked', np.array(17, np.int64)),
    ('fc.bias', np.array([1e-3, 2.0, -3.5], np.float64)),
])


@pytest.mark.parametrize('layout', ['zip', 'legacy'])
def test_hand_made_pth_reads_back_exactly(tmp_path, layout):
    obj, storages = state(TENSORS, legacy=layout == 'legacy')
    path = tmp_path / 'w.pth'
    (write_zip if layout == 'zip' else write_legacy)(path, obj, storages)
    got = load_torch_state_dict(path)
    assert list(got) == list(TENSORS)
    for k, want in TENSORS.items():
        assert got[k].dtype == want.dtype and got[k].shape == want.shape, k
        np.testing.assert_array_equal(got[k], want)


def test_non_contiguous_stride_is_honoured(tmp_path):
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    want = base.T  # (4, 3), strides (1, 4) in elements
    rec = tensor_record('0', want, 12, stride=(1, 4))
    obj = dumps(Call(G('collections', 'OrderedDict'), (('t', rec),)))
    write_zip(tmp_path / 't.pth', obj, {'0': base.ravel()})
    np.testing.assert_array_equal(load_torch_state_dict(tmp_path / 't.pth')['t'], want)


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


@pytest.mark.parametrize('layout', ['zip', 'legacy'])
def test_code_running_payload_is_refused_and_never_runs(tmp_path, layout):
    marker = tmp_path / 'pwned'
    payload = pickle.dumps(collections.OrderedDict([('w', Evil(marker))]), protocol=2)
    pickle.loads(pickle.dumps(0))  # (sanity: plain pickle works here)
    path = tmp_path / 'evil.pth'
    (write_zip if layout == 'zip' else write_legacy)(path, payload, {})
    with pytest.raises(DataPrepError, match=r'refusing the global (posix|os)\.system'):
        load_torch_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize('payload', [
    dumps(Call(G('builtins', 'eval'), '1+1')),
    dumps(Call(G('torch', 'load'), 'x')),
    dumps(Call(G('torch._utils', '_rebuild_parameter'), None, False, None)),
    dumps(Call(G('collections', 'OrderedDict'), (('w', PersId(('module', 'os'))),))),
    dumps(Call(G('collections', 'OrderedDict'),
               (('w', PersId(('storage', 'FloatStorage', '0', 'cpu', 1))),))),  # storage type not a global
    dumps(Call(G('torch._utils', '_rebuild_tensor_v2'), Call(G('collections', 'OrderedDict')), 0, (1,), (1,),
               False, None)),
], ids=['eval', 'torch.load', 'rebuild_parameter', 'bad-persid', 'persid-type-str', 'not-a-storage'])
def test_anything_but_tensor_records_is_refused(tmp_path, payload):
    write_zip(tmp_path / 'x.pth', payload, {})
    with pytest.raises(DataPrepError, match='refusing'):
        load_torch_state_dict(tmp_path / 'x.pth')


def test_truncated_and_inconsistent_files_are_clear_errors(tmp_path):
    obj, storages = state(TENSORS)
    write_zip(tmp_path / 'a.pth', obj, {k: v[:-1] for k, v in storages.items()})
    with pytest.raises(DataPrepError, match='truncated'):
        load_torch_state_dict(tmp_path / 'a.pth')
    obj, storages = state(TENSORS, legacy=True)
    write_legacy(tmp_path / 'b.pth', obj, storages)
    data = (tmp_path / 'b.pth').read_bytes()
    (tmp_path / 'c.pth').write_bytes(data[:len(data) - 5])
    with pytest.raises(DataPrepError, match='b.pth|c.pth'):
        load_torch_state_dict(tmp_path / 'c.pth')
    (tmp_path / 'd.pth').write_bytes(b'not a torch file at all')
    with pytest.raises(DataPrepError, match='d.pth'):
        load_torch_state_dict(tmp_path / 'd.pth')
    # a tensor claiming more elements than its storage holds
    rec = tensor_record('0', np.zeros((4, 4), np.float32), 16)
    write_zip(tmp_path / 'e.pth', dumps(Call(G('collections', 'OrderedDict'), (('t', rec),))),
              {'0': np.zeros(16, np.float32)})
    load_torch_state_dict(tmp_path / 'e.pth')
    rec = tensor_record('0', np.zeros((4, 5), np.float32), 16)
    write_zip(tmp_path / 'f.pth', dumps(Call(G('collections', 'OrderedDict'), (('t', rec),))),
              {'0': np.zeros(20, np.float32)})
    with pytest.raises(DataPrepError, match='reaches past|truncated'):
        load_torch_state_dict(tmp_path / 'f.pth')


def test_real_efficientnet_lite0_when_cached():
    from data_prep.backbones import cached_backbone
    files = cached_backbone('efficientnet-lite0')
    if files is None:
        pytest.skip('efficientnet-lite0 not cached (python -m data_prep.backbones efficientnet-lite0)')
    sd = load_torch_state_dict(files['efficientnet-lite0-57934424.pth'])
    assert sd['_conv_stem.weight'].shape == (32, 3, 3, 3)
    assert sd['_fc.weight'].shape == (1000, 1280)
    params = sum(v.size for k, v in sd.items() if not k.endswith(('running_mean', 'running_var',
                                                                  'num_batches_tracked')))
    assert 4.6e6 < params < 4.7e6  # EfficientNet-Lite0: 4.65 M parameters
    assert all(np.isfinite(v).all() for v in sd.values())
