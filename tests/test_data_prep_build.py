"""data_prep.build CLI end to end: digits, a fake CIFAR-10 archive, a fake In-shop folder, image folders."""
import json
import os
import time

import cv2
import lmdb
import numpy as np
import pytest

import data_prep.readers
from data_prep import build
from data_prep.fakes import fake_cifar10, write_cifar10_binary
from data_prep.lmdb_io import read_image_lmdb
from data_prep.splits import load_list
from data_prep.triplets import check_triplets, load_triplets


def _run(*argv):
    return build.main([*argv, '--quiet'])


def _tree(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for f in dirs + files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = os.lstat(p).st_mtime_ns
    return out


def _leftovers(root):
    return [p for p in _tree(root) if '.tmp-' in p or '.old-' in p]


@pytest.fixture(scope='module')
def digits_out(tmp_path_factory):
    out = tmp_path_factory.mktemp('digits') / 'out'
    t = time.monotonic()
    assert _run('--dataset', 'digits', '--out', str(out), '--stock-triplet-epochs', '1', '--epochs', '5') == 0
    assert time.monotonic() - t < 10
    return out


def test_digits_layout_and_contents(digits_out):
    out = digits_out
    for rel in ('dataset.json', 'splits/digits/train.txt', 'splits/digits/query.txt', 'splits/digits/database.txt',
                'splits/digits/split.json', 'triplets.txt', 'triplets.json', 'mean.binaryproto', 'mean.json',
                'lmdb/train/data.mdb', 'lmdb/query/data.mdb', 'lmdb/train_triplets_stock/data.mdb'):
        assert (out / rel).is_file(), rel
    assert os.readlink(out / 'lmdb' / 'database') == 'train'                   # not written twice
    m = json.loads((out / 'dataset.json').read_text())
    assert m['protocol'] == 'digits' and m['inputs']['seed'] == 0 and m['database_is_train']
    assert m['lmdb']['database']['same_as'] == 'train' and m['counts']['query'] == 359
    ids, labels = load_list(str(out / 'splits/digits/train.txt'))
    keys, images, lmdb_labels, datums = read_image_lmdb(str(out / 'lmdb/train'))
    assert keys[:2] == ['00000000', '00000001'] and lmdb_labels.tolist() == labels.tolist()
    assert images[0].shape == (8, 8, 1) and datums[0].channels == 1
    trip = load_triplets(str(out / 'triplets.txt'))
    assert trip.shape == (5 * len(ids), 3) and trip.max() < len(ids)
    check_triplets(trip, lmdb_labels)                                          # rows index the train LMDB
    shuffled = np.loadtxt(str(out / 'shuffled.txt'), dtype=np.int64, ndmin=2)
    per_epoch = len(ids) // 3
    assert shuffled.shape == (3 * 5 * per_epoch, 3)                            # 3 x --epochs epochs
    for e in range(3):                                                         # each epoch: distinct rows
        rows = shuffled[e * per_epoch:(e + 1) * per_epoch].ravel()
        assert len(np.unique(rows)) == rows.size == 3 * per_epoch and rows.max() < len(ids)
    assert m['shuffled']['lines_per_epoch'] == per_epoch
    for f in ('triplets.json', 'shuffled.json', 'mean.json', 'splits/digits/split.json'):
        assert json.loads((out / f).read_text())['protocol'] == 'digits'
    assert not _leftovers(out)


def test_rerun_does_nothing(digits_out, capsys):
    before = _tree(digits_out)
    assert _run('--dataset', 'digits', '--out', str(digits_out), '--stock-triplet-epochs', '1', '--epochs', '5') == 0
    assert 'nothing to do' in capsys.readouterr().out
    assert _tree(digits_out) == before


def test_other_parameters_refused_then_force(tmp_path, capsys):
    out = tmp_path / 'o'
    assert _run('--dataset', 'digits', '--out', str(out), '--epochs', '2') == 0
    first = (out / 'triplets.txt').read_text()
    assert _run('--dataset', 'digits', '--out', str(out), '--epochs', '2', '--seed', '1') == 2
    err = capsys.readouterr().err
    assert 'other parameters (seed: 0 -> 1)' in err and '--force' in err
    assert (out / 'triplets.txt').read_text() == first
    assert _run('--dataset', 'digits', '--out', str(out), '--epochs', '2', '--seed', '1', '--force') == 0
    assert (out / 'triplets.txt').read_text() != first
    assert json.loads((out / 'dataset.json').read_text())['inputs']['seed'] == 1
    (out / 'triplets.txt').unlink()                                            # incomplete -> rebuilt
    assert _run('--dataset', 'digits', '--out', str(out), '--epochs', '2', '--seed', '1') == 0
    assert (out / 'triplets.txt').is_file()


def test_cifar10_fake_archive_dsh_png(tmp_path, monkeypatch):
    real = data_prep.readers.read_cifar10
    monkeypatch.setattr(data_prep.readers, 'read_cifar10', lambda p: real(p, expected=None))
    images, labels = fake_cifar10(20, seed=2)
    archive = write_cifar10_binary(str(tmp_path / 'cifar-10-binary.tar.gz'), images, labels)
    out = tmp_path / 'c'
    assert _run('--dataset', 'cifar10', '--archive', archive, '--protocol', 'dsh', '--out', str(out),
                '--encode', 'png', '--epochs', '2', '--batch-triplets', '8', '--stock-triplet-epochs', '1') == 0
    assert os.readlink(out / 'lmdb' / 'database') == 'query'
    _, q_images, q_labels, datums = read_image_lmdb(str(out / 'lmdb/query'))
    assert datums[0].encoded and len(q_images) == 20
    np.testing.assert_array_equal(q_images[3], images[100 + 3][:, :, ::-1])   # test_batch, BGR
    assert q_labels.tolist() == labels[100:].tolist()
    stock = json.loads((out / 'dataset.json').read_text())['stock_triplets']
    assert stock['records'] == 3 * 8 * (100 // 8) and stock['data_layer_batch_size'] == 24


def _inshop(root, with_images):
    rows = []
    for item in range(1, 5):
        for k in range(3):
            status = 'train' if item <= 2 else ('query' if k == 0 else 'gallery')
            rows.append((f'img/MEN/Tees/id_{item:08d}/{k + 1:02d}_1_front.jpg', f'id_{item:08d}', status))
    (root / 'Eval').mkdir(parents=True)
    (root / 'Eval' / 'list_eval_partition.txt').write_text(
        f'{len(rows)}\nimage_name item_id evaluation_status\n' + ''.join(f'{a}   {b}  {c}\n' for a, b, c in rows))
    if with_images:
        for i, (name, _, _) in enumerate(rows):
            p = root / 'Img' / name
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), np.full((12, 10, 3), 20 * i, np.uint8))
    return root


def test_inshop_splits_only_and_jpg(tmp_path):
    root = _inshop(tmp_path / 'In-shop', with_images=False)
    out = tmp_path / 's'
    assert _run('--dataset', 'inshop', '--root', str(root), '--out', str(out), '--splits-only', '--epochs', '3') == 0
    assert not (out / 'lmdb').exists() and (out / 'triplets.txt').is_file()
    assert len((out / 'splits/inshop/query.txt').read_text().splitlines()) == 2
    assert _run('--dataset', 'inshop', '--root', str(root), '--out', str(tmp_path / 'x')) == 2  # no images
    assert not _leftovers(tmp_path / 'x') and not (tmp_path / 'x' / 'dataset.json').exists()
    root2 = _inshop(tmp_path / 'In-shop2', with_images=True)
    out2 = tmp_path / 'p'
    assert _run('--dataset', 'inshop', '--root', str(root2), '--protocol', 'inshop-paper', '--out', str(out2),
                '--encode', 'jpg', '--epochs', '2') == 0
    m = json.loads((out2 / 'dataset.json').read_text())
    assert m['counts'] == {'train': 10, 'query': 2, 'database': 4} and not m['database_is_train']
    env = lmdb.open(str(out2 / 'lmdb/train'), readonly=True, lock=False)
    with env.begin() as txn:
        from data_prep.datum import parse_datum
        d = parse_datum(txn.get(b'00000000'))
    env.close()
    first = (out2 / 'splits/inshop-paper/train.txt').read_text().split()[0]
    assert d.encoded and d.data == (root2 / 'Img' / first).read_bytes()        # original JPEG bytes


def test_images_folder_failure_is_atomic(tmp_path, capsys):
    root = tmp_path / 'imgs'
    for cls in ('a', 'b'):
        for i in range(4):
            p = root / cls / f'{i}.png'
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), np.full((6, 6, 3), i, np.uint8))
    (root / 'b' / '3.png').write_bytes(b'broken')
    out = tmp_path / 'o'
    assert _run('--dataset', 'images', '--root', str(root), '--out', str(out), '--query-share', '0.25') == 2
    assert 'b/3.png: cannot decode this image' in capsys.readouterr().err
    assert not _leftovers(out) and not (out / 'dataset.json').exists()
    cv2.imwrite(str(root / 'b' / '3.png'), np.zeros((6, 6, 3), np.uint8))
    assert _run('--dataset', 'images', '--root', str(root), '--out', str(out), '--query-share', '0.25') == 0
    assert json.loads((out / 'dataset.json').read_text())['counts'] == {'train': 6, 'query': 2, 'database': 6}
    capsys.readouterr()
    cv2.imwrite(str(root / 'a' / '0.png'), np.ones((6, 6, 3), np.uint8))    # the source changed
    assert _run('--dataset', 'images', '--root', str(root), '--out', str(out), '--query-share', '0.25') == 2
    assert 'other parameters (source:' in capsys.readouterr().err
    assert _run('--dataset', 'images', '--root', str(root), '--out', str(out), '--query-share', '0.25',
                '--force') == 0
