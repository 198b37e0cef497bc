"""data_prep.lmdb_io / datum / inspect_lmdb: Datum LMDB round trips, stock triplet LMDB, mean, atomicity."""
import os

import cv2
import lmdb
import numpy as np
import pytest

from data_prep import DataPrepError, inspect_lmdb
from data_prep.dataset import Dataset
from data_prep.datum import builtin_caffe_pb2, parse_datum
from data_prep.lmdb_io import (MeanAccumulator, read_image_lmdb, read_mean, write_image_lmdb, write_mean,
                               write_stock_triplet_lmdb)
from data_prep.triplets import generate_triplets


def _rgb_dataset(n=6, h=4, w=5, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    labels = np.arange(n) % 3
    return Dataset('t', 'mem', [f'x{i}' for i in range(n)], labels, ['a', 'b', 'c'], images=images)


def _records(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        out = [(k, parse_datum(v)) for k, v in txn.cursor()]
    env.close()
    return out


def test_raw_round_trip_bgr_chw_keys(tmp_path):
    ds = _rgb_dataset()
    rows = np.array([4, 0, 2])
    info = write_image_lmdb(str(tmp_path / 'db'), ds, rows, 'raw', progress=False)
    assert info['count'] == 3 and info['shapes'] == [[4, 5, 3]] and not info['encoded']
    recs = _records(tmp_path / 'db')
    assert [k for k, _ in recs] == [b'00000000', b'00000001', b'00000002']
    for (k, d), i in zip(recs, rows):
        assert (d.channels, d.height, d.width, d.label, d.encoded) == (3, 4, 5, ds.labels[i], False)
        bgr = ds.images[i][:, :, ::-1]
        assert d.data == bgr.transpose(2, 0, 1).tobytes()    # C x H x W, blue plane first
    keys, images, labels, _ = read_image_lmdb(str(tmp_path / 'db'))
    np.testing.assert_array_equal(images[0], ds.images[4][:, :, ::-1])
    assert labels.tolist() == ds.labels[rows].tolist()
    assert os.listdir(tmp_path) == ['db']                     # no temporaries left


@pytest.mark.parametrize('channels', [3, 1])
def test_encoded_round_trip(tmp_path, channels):
    ds = _rgb_dataset(h=16, w=16)
    ds.images[:] = np.array([[200, 120, 20]], np.uint8) + np.arange(6, dtype=np.uint8)[:, None, None, None] * 5
    if channels == 1:
        ds.images, ds.channels = ds.images[:, :, :, :1].copy(), 1
    write_image_lmdb(str(tmp_path / 'png'), ds, np.arange(6), 'png', progress=False)
    write_image_lmdb(str(tmp_path / 'jpg'), ds, np.arange(6), 'jpg', progress=False)
    for (_, dp), (_, dj), img in zip(_records(tmp_path / 'png'), _records(tmp_path / 'jpg'), ds.images):
        assert dp.encoded and dp.data[:4] == b'\x89PNG' and dj.encoded and dj.data[:2] == b'\xff\xd8'
        flag = cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE
        dec = cv2.imdecode(np.frombuffer(dp.data, np.uint8), flag)   # what Caffe's data layer does
        expect = img[:, :, ::-1] if channels == 3 else img[:, :, 0]
        np.testing.assert_array_equal(dec, expect)                     # BGR, lossless
        decj = cv2.imdecode(np.frombuffer(dj.data, np.uint8), flag).astype(int)
        assert decj.shape == expect.shape and np.abs(decj - expect).max() < 6   # lossy, BGR too
        assert (dp.channels, dp.height, dp.width) == (channels, 16, 16)


def test_original_jpeg_bytes_kept(tmp_path):
    img = np.full((8, 8, 3), (10, 100, 200), np.uint8)
    p = tmp_path / 'a.jpg'
    cv2.imwrite(str(p), img)
    ds = Dataset('images', str(tmp_path), ['a.jpg', 'b.jpg'], [0, 1], ['0', '1'], paths=[str(p), str(p)])
    write_image_lmdb(str(tmp_path / 'db'), ds, [0, 1], 'jpg', progress=False)
    assert _records(tmp_path / 'db')[0][1].data == p.read_bytes()
    write_image_lmdb(str(tmp_path / 'db2'), ds, [0, 1], 'jpg', resize=(4, 6), progress=False)
    d = _records(tmp_path / 'db2')[0][1]
    assert d.data != p.read_bytes() and (d.height, d.width) == (4, 6)


def test_mean(tmp_path):
    ds = _rgb_dataset(n=5)
    acc = MeanAccumulator()
    write_image_lmdb(str(tmp_path / 'train'), ds, np.arange(5), 'raw', mean=acc, progress=False)
    info = write_mean(str(tmp_path), acc, 'p')
    m = read_mean(str(tmp_path / 'mean.binaryproto'))
    expect = ds.images[:, :, :, ::-1].transpose(0, 3, 1, 2).mean(axis=0)
    assert m.shape == (1, 3, 4, 5)
    np.testing.assert_allclose(m[0], expect, rtol=1e-6)
    np.testing.assert_allclose(info['mean_value'], expect.mean(axis=(1, 2)))
    assert info['channel_order'] == 'BGR' and info['mean_value_rgb'] == info['mean_value'][::-1]


def test_stock_triplet_lmdb_batch_layout(tmp_path):
    n, bs = 14, 4
    labels = np.arange(n) % 3
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 2, 2, 1)).copy()
    ds = Dataset('t', 'mem', [f'{i}' for i in range(n)], labels, ['a', 'b', 'c'], images=images, channels=1)
    write_image_lmdb(str(tmp_path / 'train'), ds, np.arange(n), 'raw', progress=False)
    trip = generate_triplets(labels, seed=1, epochs=2)
    info = write_stock_triplet_lmdb(str(tmp_path / 'stock'), str(tmp_path / 'train'), trip, n, bs, epochs=2,
                                    progress=False)
    assert info['batches_per_epoch'] == 3 and info['records'] == 2 * 3 * 3 * bs
    assert info['data_layer_batch_size'] == 12 and info['dropped_per_epoch'] == 2
    rows = [int(d.data[0]) for _, d in _records(tmp_path / 'stock')]        # pixel value = train row
    batches = np.array(rows).reshape(-1, 3, bs)                            # [batch, a/p/n, bs]
    expect = np.concatenate([trip[e * n:e * n + 3 * bs] for e in range(2)]).reshape(-1, bs, 3)
    np.testing.assert_array_equal(batches, expect.transpose(0, 2, 1))
    keys, _, stock_labels, _ = read_image_lmdb(str(tmp_path / 'stock'))
    assert keys[5] == '00000005' and stock_labels.tolist() == labels[rows].tolist()


def test_failure_leaves_no_temporaries_and_keeps_old(tmp_path):
    good = tmp_path / 'g.png'
    cv2.imwrite(str(good), np.zeros((3, 3, 3), np.uint8))
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'\x89PNG garbage')
    ds = Dataset('images', str(tmp_path), ['g', 'g2', 'bad'], [0, 1, 1], ['0', '1'],
                 paths=[str(good), str(good), str(bad)])
    out = tmp_path / 'out'
    write_image_lmdb(str(out / 'db'), ds, [0, 1], 'raw', progress=False)
    with pytest.raises(DataPrepError, match=r'bad\.png: cannot decode this image'):
        write_image_lmdb(str(out / 'db'), ds, [0, 1, 2], 'raw', progress=False)
    assert os.listdir(out) == ['db'] and len(_records(out / 'db')) == 2


def test_raw_needs_one_size(tmp_path):
    ds = Dataset('images', 'mem', ['a', 'b'], [0, 1], ['0', '1'],
                 images=np.zeros((2, 4, 4, 3), np.uint8))
    ds.images = [np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)]
    with pytest.raises(DataPrepError, match=r'item b: size 4x5 differs .*--resize'):
        write_image_lmdb(str(tmp_path / 'db'), ds, [0, 1], 'raw', progress=False)
    assert write_image_lmdb(str(tmp_path / 'db'), ds, [0, 1], 'raw', resize=(3, 3), progress=False)['count'] == 2
    assert os.listdir(tmp_path) == ['db']


def test_inspect_lmdb(tmp_path, capsys):
    ds = _rgb_dataset(n=7)
    write_image_lmdb(str(tmp_path / 'db'), ds, np.arange(7), 'png', progress=False)
    assert inspect_lmdb.main([str(tmp_path / 'db')]) == 0
    out = capsys.readouterr().out
    assert 'records: 7' in out and '%08d row keys 00000000..00000006' in out
    assert 'encoded png: 7' in out and 'datum shape CxHxW 3x4x5: 7' in out
    assert 'labels: 3 distinct' in out and '    0: 3' in out and '    2: 2' in out
    assert inspect_lmdb.main([str(tmp_path / 'nothing')]) == 2
    assert 'not an LMDB folder' in capsys.readouterr().err


def test_builtin_messages_match_pycaffe():
    caffe_pb2 = pytest.importorskip('caffe.proto.caffe_pb2')
    ours = builtin_caffe_pb2()
    kw = dict(channels=3, height=2, width=1, label=9, data=b'abcdef')
    assert ours.Datum(**kw).SerializeToString() == caffe_pb2.Datum(**kw).SerializeToString()
    assert ours.Datum(encoded=True, **kw).SerializeToString() == \
        caffe_pb2.Datum(encoded=True, **kw).SerializeToString()
    a, b = ours.BlobProto(num=1, channels=2), caffe_pb2.BlobProto(num=1, channels=2)
    a.data.extend([1.5, 2.5])
    b.data.extend([1.5, 2.5])
    assert a.SerializeToString() == b.SerializeToString()


def test_stock_lmdb_through_caffe_data_layer(tmp_path):
    """With pycaffe importable: the stock Data layer (batch 3 bs) + Slice yields a / p / n, also on wrap-around."""
    caffe = pytest.importorskip('caffe')
    n, bs = 10, 3
    labels = np.arange(n) % 2
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 2, 2, 3)).copy()
    ds = Dataset('t', 'mem', [f'{i}' for i in range(n)], labels, ['a', 'b'], images=images)
    write_image_lmdb(str(tmp_path / 'train'), ds, np.arange(n), 'png', progress=False)
    trip = generate_triplets(labels, seed=4, epochs=1)
    write_stock_triplet_lmdb(str(tmp_path / 'stock'), str(tmp_path / 'train'), trip, n, bs, progress=False)
    proto = tmp_path / 'net.prototxt'
    proto.write_text(f'''
layer {{ name: "d" type: "Data" top: "data" top: "label"
  data_param {{ source: "{tmp_path / 'stock'}" backend: LMDB batch_size: {3 * bs} }} }}
layer {{ name: "s" type: "Slice" bottom: "data" top: "a" top: "p" top: "n"
  slice_param {{ axis: 0 slice_point: {bs} slice_point: {2 * bs} }} }}''')
    caffe.set_mode_cpu()
    net = caffe.Net(str(proto), caffe.TEST)
    nb = n // bs
    for b in range(nb + 1):                      # the last forward wraps to batch 0
        net.forward()
        t = trip[(b % nb) * bs:(b % nb + 1) * bs]
        for blob, col in (('a', 0), ('p', 1), ('n', 2)):
            assert net.blobs[blob].data[:, 0, 0, 0].tolist() == t[:, col].tolist()
