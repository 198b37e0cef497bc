"""data_prep readers: CIFAR-10 binary / python archives, In-shop partition, image folder / list, digits."""
import io
import os
import pickle
import tarfile

import cv2
import numpy as np
import pytest

from data_prep import DataPrepError
from data_prep.fakes import (fake_cifar10, py2_pickle_dumps, write_cifar10_binary, write_cifar10_python)
from data_prep.readers import (read_cifar10, read_cifar10_binary, read_cifar10_python, read_digits,
                               read_image_folder, read_image_list, read_inshop)
from data_prep.readers.cifar10 import RECORD_BYTES

N = 10  # records per fake batch


@pytest.fixture(scope='module')
def fake():
    return fake_cifar10(N, seed=1)


# ---------------------------------------------------------------- CIFAR-10 binary

@pytest.mark.parametrize('as_tar', [True, False])
def test_cifar_binary_reads_tar_and_folder(tmp_path, fake, as_tar):
    images, labels = fake
    dest = tmp_path / ('cifar-10-binary.tar.gz' if as_tar else 'extracted')
    write_cifar10_binary(str(dest), images, labels)
    src = str(dest) if as_tar else str(dest / 'cifar-10-batches-bin')
    d = read_cifar10_binary(src, expected=(5 * N, N))
    assert d.images.shape == (6 * N, 32, 32, 3) and d.images.dtype == np.uint8
    np.testing.assert_array_equal(d.images, images)
    np.testing.assert_array_equal(d.labels, labels)
    assert d.ids[0] == 'data_batch_1/00000' and d.ids[-1] == f'test_batch/{N - 1:05d}'
    assert list(d.partition).count('train') == 5 * N and list(d.partition).count('test') == N
    assert read_cifar10(src, expected=(5 * N, N)).notes == ['CIFAR-10 binary layout']
    assert not any(p.name.startswith('data_batch') for p in tmp_path.iterdir())  # nothing extracted


def test_cifar_binary_record_layout_is_label_then_rgb_planes(tmp_path):
    rec = bytes([7]) + bytes([10]) * 1024 + bytes([20]) * 1024 + bytes([30]) * 1024
    folder = tmp_path / 'cifar-10-batches-bin'
    folder.mkdir()
    for b in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        (folder / f'{b}.bin').write_bytes(rec)
    d = read_cifar10_binary(str(folder), expected=(5, 1))
    assert d.images[0, 5, 5].tolist() == [10, 20, 30] and d.labels[0] == 7


def _binary_folder(tmp_path, fake):
    write_cifar10_binary(str(tmp_path / 'x'), *fake)
    return tmp_path / 'x' / 'cifar-10-batches-bin'


def test_cifar_binary_truncated_file_names_file_and_record(tmp_path, fake):
    folder = _binary_folder(tmp_path, fake)
    p = folder / 'data_batch_3.bin'
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataPrepError, match=r'data_batch_3\.bin.*record 9 is cut short.*download'):
        read_cifar10_binary(str(folder), expected=None)


def test_cifar_binary_bad_label_names_file_and_record(tmp_path, fake):
    folder = _binary_folder(tmp_path, fake)
    p = folder / 'test_batch.bin'
    data = bytearray(p.read_bytes())
    data[4 * RECORD_BYTES] = 12
    p.write_bytes(bytes(data))
    with pytest.raises(DataPrepError, match=r'test_batch\.bin: record 4 has label 12, expected 0-9'):
        read_cifar10_binary(str(folder), expected=None)


def test_cifar_binary_missing_batch_and_wrong_count(tmp_path, fake):
    folder = _binary_folder(tmp_path, fake)
    with pytest.raises(DataPrepError, match=r'data_batch_1\.bin: holds 10 records, expected 10,000'):
        read_cifar10_binary(str(folder))  # the real 50,000 / 10,000 expectation
    (folder / 'data_batch_4.bin').unlink()
    with pytest.raises(DataPrepError, match=r'missing data_batch_4\.bin'):
        read_cifar10_binary(str(folder), expected=None)


def test_cifar_truncated_archive(tmp_path, fake):
    dest = tmp_path / 'cifar-10-binary.tar.gz'
    write_cifar10_binary(str(dest), *fake)
    data = dest.read_bytes()
    dest.write_bytes(data[:len(data) // 2])
    with pytest.raises(DataPrepError, match=r'cifar-10-binary\.tar\.gz.*truncated or corrupt'):
        read_cifar10_binary(str(dest), expected=None)


def test_cifar_archive_link_member_refused(tmp_path, fake):
    dest = tmp_path / 'evil.tar.gz'
    with tarfile.open(dest, 'w:gz') as t:
        info = tarfile.TarInfo('cifar-10-batches-bin/data_batch_1.bin')
        info.type = tarfile.SYMTYPE
        info.linkname = '/etc/passwd'
        t.addfile(info)
    with pytest.raises(DataPrepError, match=r'data_batch_1\.bin is not a regular file'):
        read_cifar10_binary(str(dest), expected=None)


# ---------------------------------------------------------------- CIFAR-10 python

@pytest.mark.parametrize('numpy_module', ['numpy.core.multiarray', 'numpy._core.multiarray'])
def test_cifar_python_archive_matches_binary(tmp_path, fake, numpy_module):
    images, labels = fake
    dest = tmp_path / 'cifar-10-python.tar.gz'
    write_cifar10_python(str(dest), images, labels, numpy_module)
    d = read_cifar10(str(dest), expected=(5 * N, N))
    assert d.notes == ['CIFAR-10 python layout']
    np.testing.assert_array_equal(d.images, images)
    np.testing.assert_array_equal(d.labels, labels)
    b = read_cifar10(write_cifar10_binary(str(tmp_path / 'b.tar.gz'), images, labels), expected=(5 * N, N))
    assert b.ids == d.ids


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_cifar_python_malicious_pickle_refused_without_running(tmp_path, fake):
    images, labels = fake
    folder = tmp_path / 'cifar-10-batches-py'
    write_cifar10_python(str(tmp_path), images, labels)
    marker = tmp_path / 'pwned'
    (folder / 'data_batch_2').write_bytes(pickle.dumps({'data': _Evil(marker), 'labels': []}, protocol=2))
    with pytest.raises(DataPrepError, match=r'data_batch_2: refusing to unpickle the global (posix|os|nt)\.system'):
        read_cifar10_python(str(tmp_path), expected=None)
    assert not marker.exists()


def test_cifar_python_refuses_even_harmless_globals(tmp_path, fake):
    folder = tmp_path / 'cifar-10-batches-py'
    write_cifar10_python(str(tmp_path), *fake)
    (folder / 'test_batch').write_bytes(pickle.dumps({'data': io.BytesIO(), 'labels': []}, protocol=2))
    with pytest.raises(DataPrepError, match=r'test_batch: refusing to unpickle the global _io\.BytesIO'):
        read_cifar10_python(str(tmp_path), expected=None)


def test_cifar_python_corrupt_and_bad_content(tmp_path, fake):
    folder = tmp_path / 'cifar-10-batches-py'
    write_cifar10_python(str(tmp_path), *fake)
    p = folder / 'data_batch_5'
    good = p.read_bytes()
    p.write_bytes(good[:len(good) // 2])
    with pytest.raises(DataPrepError, match=r'data_batch_5: not a readable CIFAR-10 python batch.*truncated'):
        read_cifar10_python(str(tmp_path), expected=None)
    p.write_bytes(py2_pickle_dumps({'data': np.zeros((N, 3072), np.uint8), 'labels': [3] * (N - 1) + [10]}))
    with pytest.raises(DataPrepError, match=rf'data_batch_5: record {N - 1} has label 10'):
        read_cifar10_python(str(tmp_path), expected=None)
    p.write_bytes(py2_pickle_dumps({'data': np.zeros((N, 100), np.uint8), 'labels': [0] * N}))
    with pytest.raises(DataPrepError, match=r'data_batch_5: data is ndarray \(10, 100\)'):
        read_cifar10_python(str(tmp_path), expected=None)


def test_cifar_layout_detection_error(tmp_path):
    (tmp_path / 'readme.txt').write_text('hello')
    with pytest.raises(DataPrepError, match='neither the CIFAR-10 binary layout'):
        read_cifar10(str(tmp_path))


# ---------------------------------------------------------------- In-shop

ROWS = [('img/WOMEN/Dresses/id_00000002/01_1_front.jpg', 'id_00000002', 'train'),
        ('img/WOMEN/Dresses/id_00000002/01_2_side.jpg', 'id_00000002', 'train'),
        ('img/MEN/Tees/id_00000001/01_1_front.jpg', 'id_00000001', 'query'),
        ('img/MEN/Tees/id_00000001/02_1_front.jpg', 'id_00000001', 'gallery')]


def _partition(root, rows=ROWS, count=None, header='image_name item_id evaluation_status'):
    (root / 'Eval').mkdir(parents=True, exist_ok=True)
    lines = [str(len(rows) if count is None else count), header]
    lines += [f'{n:<60}{i}  {s}' for n, i, s in rows]  # runs of spaces, as the real file
    (root / 'Eval' / 'list_eval_partition.txt').write_text('\n'.join(lines) + '\n')
    return root


def test_inshop_reader(tmp_path):
    d = read_inshop(str(_partition(tmp_path)))
    assert d.ids == [r[0] for r in ROWS]
    assert d.class_names == ['id_00000001', 'id_00000002']     # sorted item ids -> 0, 1
    assert d.labels.tolist() == [1, 1, 0, 0]
    assert d.partition.tolist() == ['train', 'train', 'query', 'gallery']
    assert d.paths[0] == str(tmp_path / 'Img' / ROWS[0][0])
    with pytest.raises(DataPrepError, match=r'01_1_front\.jpg: image file is missing.*--splits-only'):
        d.image(0)


def test_inshop_bad_files(tmp_path):
    with pytest.raises(DataPrepError, match=r"line 1 says 5 rows but the file has 4"):
        read_inshop(str(_partition(tmp_path, count=5)))
    bad = ROWS[:2] + [(ROWS[2][0], ROWS[2][1], 'test')] + ROWS[3:]
    with pytest.raises(DataPrepError, match=r"list_eval_partition\.txt: line 5: unknown evaluation_status 'test'"):
        read_inshop(str(_partition(tmp_path, bad)))
    with pytest.raises(DataPrepError, match=r'line 2 should be the header'):
        read_inshop(str(_partition(tmp_path, header='name id status')))
    with pytest.raises(DataPrepError, match=r'no Eval/list_eval_partition\.txt'):
        read_inshop(str(tmp_path / 'nowhere'))


# ---------------------------------------------------------------- image folder / list file

def _png(path, value, size=(6, 5)):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((size[0], size[1], 3), np.uint8)
    img[:] = value  # BGR as cv2 writes
    assert cv2.imwrite(str(path), img)


def test_image_folder_and_unreadable_image(tmp_path):
    _png(tmp_path / 'cats' / 'a.png', (1, 2, 3))
    _png(tmp_path / 'cats' / 'sub' / 'b.png', (4, 5, 6))
    _png(tmp_path / 'dogs' / 'c.png', (7, 8, 9))
    (tmp_path / 'dogs' / 'notes.txt').write_text('not an image')
    (tmp_path / 'dogs' / 'broken.jpg').write_bytes(b'not a jpeg')
    d = read_image_folder(str(tmp_path))
    assert d.ids == ['cats/a.png', 'cats/sub/b.png', 'dogs/broken.jpg', 'dogs/c.png']
    assert d.labels.tolist() == [0, 0, 1, 1] and d.class_names == ['cats', 'dogs']
    assert d.image(0)[0, 0].tolist() == [3, 2, 1]  # RGB
    with pytest.raises(DataPrepError, match=r'broken\.jpg: cannot decode this image'):
        d.image(2)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DataPrepError, match=r'empty: class folder without images'):
        read_image_folder(str(tmp_path))


def test_image_list(tmp_path):
    _png(tmp_path / 'im' / 'a b.png', 1)
    _png(tmp_path / 'im' / 'c.png', 2)
    lst = tmp_path / 'list.txt'
    lst.write_text('# comment\nim/a b.png 0\n\nim/c.png 3\n')
    d = read_image_list(str(lst))
    assert d.ids == ['im/a b.png', 'im/c.png'] and d.labels.tolist() == [0, 3]
    lst.write_text('im/a b.png 0\nim/c.png cat\n')
    with pytest.raises(DataPrepError, match=r"list\.txt: line 2: unknown label 'cat'"):
        read_image_list(str(lst))
    lst.write_text('im/missing.png 0\n')
    with pytest.raises(DataPrepError, match=r'line 1: image .*missing\.png does not exist'):
        read_image_list(str(lst))


def test_digits():
    d = read_digits()
    assert d.images.shape == (1797, 8, 8, 1) and d.images.dtype == np.uint8
    assert d.images.max() == 255 and d.images.min() == 0
    from sklearn.datasets import load_digits
    raw = load_digits().images
    np.testing.assert_array_equal(d.images[..., 0], np.rint(raw * 255 / 16).astype(np.uint8))
    assert len(set(d.ids)) == 1797 and np.bincount(d.labels).size == 10


@pytest.mark.parametrize('layout', ['binary', 'python'])
def test_cifar_layout_repack_keeps_its_own_class_names(tmp_path, fake, layout):
    """A data set repacked into the CIFAR-10 layout: batches.meta.txt / batches.meta name its
    classes; a malformed list is an error naming the file; without the file, CIFAR-10's names."""
    from data_prep.readers.cifar10 import CLASS_NAMES
    images, labels = fake
    names = [f'kind {c}' for c in range(10)]
    write = write_cifar10_binary if layout == 'binary' else write_cifar10_python
    meta = 'batches.meta.txt' if layout == 'binary' else 'batches.meta'
    d = read_cifar10(write(str(tmp_path / 'own.tar.gz'), images, labels, class_names=names),
                     expected=(5 * N, N))
    assert d.class_names == names
    d = read_cifar10(write(str(tmp_path / 'std.tar.gz'), images, labels), expected=(5 * N, N))
    assert d.class_names == CLASS_NAMES
    bad = tmp_path / 'bad'
    write(str(bad), images, labels, class_names=names[:9])
    folder = bad / ('cifar-10-batches-bin' if layout == 'binary' else 'cifar-10-batches-py')
    with pytest.raises(DataPrepError, match=meta.replace('.', r'\.')):
        read_cifar10(str(folder), expected=(5 * N, N))
    os.unlink(folder / meta)
    assert read_cifar10(str(folder), expected=(5 * N, N)).class_names == CLASS_NAMES
