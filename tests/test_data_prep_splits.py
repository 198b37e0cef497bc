"""data_prep.splits protocols and data_prep.triplets."""
import json

import numpy as np
import pytest

from data_prep import DataPrepError
from data_prep.dataset import Dataset
from data_prep.readers import read_digits
from data_prep.splits import load_list, make_split, save_split
from data_prep.triplets import (check_triplets, epoch_triplets, generate_triplets, load_triplets,
                                write_triplets)


def _cifar_like():
    """Labels only (no pixels): 60,000 items, 6,000 a class; official train 50,000 / test 10,000."""
    rng = np.random.default_rng(123)
    labels = rng.permutation(np.repeat(np.arange(10), 6000))
    # the official partition: 5,000 train / 1,000 test per class, as CIFAR-10's
    order = np.argsort(labels, kind='stable')
    part = np.empty(60000, dtype='<U5')
    for c in range(10):
        idx = order[c * 6000:(c + 1) * 6000]
        part[idx[:5000]], part[idx[5000:]] = 'train', 'test'
    return Dataset('cifar10', 'fake', [f'i{i}' for i in range(60000)], labels, [str(c) for c in range(10)],
                   partition=part)


@pytest.fixture(scope='module')
def cifar():
    return _cifar_like()


def _per_class(ds, rows):
    return np.bincount(ds.labels[rows], minlength=10).tolist()


def test_cifar_paper(cifar):
    s = make_split(cifar, 'paper', seed=0)
    assert _per_class(cifar, s.train) == [5000] * 10 and _per_class(cifar, s.query) == [1000] * 10
    assert s.database_is_query and np.intersect1d(s.train, s.query).size == 0
    assert not np.array_equal(np.sort(s.query), np.flatnonzero(cifar.partition == 'test'))  # pooled redraw
    again, other = make_split(cifar, 'paper', seed=0), make_split(cifar, 'paper', seed=1)
    assert np.array_equal(again.train, s.train) and not np.array_equal(other.train, s.train)


def test_cifar_dsh_and_cifar10_2(cifar):
    official_train, official_test = np.flatnonzero(cifar.partition == 'train'), np.flatnonzero(cifar.partition == 'test')
    s = make_split(cifar, 'dsh', seed=0)
    assert np.array_equal(s.train, official_train) and np.array_equal(s.query, official_test)
    assert s.database_is_query
    s2 = make_split(cifar, 'cifar10-2', seed=5)
    assert np.array_equal(s2.train, official_train) and np.array_equal(s2.query, official_test)
    assert s2.database_is_train and len(s2.database) == 50000


def test_cifar10_holdout_never_touches_the_test_set(cifar):
    s = make_split(cifar, 'cifar10-holdout', seed=0)
    official_train = np.flatnonzero(cifar.partition == 'train')
    assert _per_class(cifar, s.query) == [100] * 10 and _per_class(cifar, s.database) == [400] * 10
    assert len(s.train) == 45000
    held = np.concatenate([s.query, s.database, s.train])
    assert np.array_equal(np.sort(held), official_train)                   # a partition of train
    assert not s.database_is_train and not s.database_is_query
    assert not np.array_equal(make_split(cifar, 'cifar10-holdout', seed=1).query, s.query)


def test_cifar10_1(cifar):
    s = make_split(cifar, 'cifar10-1', seed=0)
    assert _per_class(cifar, s.query) == [100] * 10 and _per_class(cifar, s.train) == [500] * 10
    assert len(s.database) == 59000 and np.intersect1d(s.query, s.database).size == 0
    assert np.isin(s.train, s.database).all()
    assert not np.array_equal(make_split(cifar, 'cifar10-1', seed=1).query, s.query)


def _inshop_like():
    # items 0-2 train only; items 3-4 query + gallery
    rows = [(0, 'train')] * 3 + [(1, 'train')] * 2 + [(2, 'train')] * 4 + \
        [(3, 'query'), (3, 'gallery'), (3, 'gallery'), (4, 'query'), (4, 'query'), (4, 'gallery')]
    labels = [r[0] for r in rows]
    return Dataset('inshop', 'fake', [f'img/{i}.jpg' for i in range(len(rows))], labels,
                   [f'id_{i:08d}' for i in range(5)], partition=np.array([r[1] for r in rows]))


def test_inshop_protocols():
    ds = _inshop_like()
    s = make_split(ds, 'inshop', seed=0)
    assert len(s.train) == 9 and len(s.query) == 3 and len(s.database) == 3
    with pytest.raises(DataPrepError, match=r'id_00000004 \(img/14\.jpg\)'):  # one gallery image
        make_split(ds, 'inshop-paper', seed=0)
    p = make_split(ds, 'inshop-paper', seed=0, singletons='negatives')
    assert p.singleton_classes == [4]
    assert len(p.train) == 12 and np.array_equal(p.database, s.database)   # train + gallery
    assert np.isin(p.database, p.train).all() and np.intersect1d(p.query, p.train).size == 0
    assert any('overlaps training' in n for n in p.notes)


def test_digits_and_stratified():
    ds = read_digits()
    s = make_split(ds, 'digits', seed=0)
    counts = np.bincount(ds.labels)
    q = np.bincount(ds.labels[s.query], minlength=10)
    assert (q == np.floor(counts * 0.2 + 0.5)).all() and len(s.query) + len(s.train) == len(ds)
    assert s.database_is_train and np.intersect1d(s.query, s.train).size == 0
    assert np.array_equal(make_split(ds, 'digits', seed=0).query, s.query)
    assert not np.array_equal(make_split(ds, 'digits', seed=1).query, s.query)
    ds.name = 'images'
    s3 = make_split(ds, 'stratified', seed=0, query_share=0.5)
    assert abs(len(s3.query) - len(ds) / 2) < 10


def test_split_errors():
    ds = Dataset('images', 'src', list('abcdefg'), [0, 0, 0, 1, 1, 1, 2], ['x', 'y', 'z'])
    with pytest.raises(DataPrepError, match=r'leaves the query split empty'):
        make_split(ds, 'stratified', seed=0, query_share=0.01)
    with pytest.raises(DataPrepError, match=r'1 class\(es\) have a single image .*: z \(g\)\. .*--singletons negatives'):
        make_split(ds, 'stratified', seed=0, query_share=0.2)
    with pytest.raises(DataPrepError, match=r'does not apply to dataset images'):
        make_split(ds, 'paper')
    with pytest.raises(DataPrepError, match=r'draws 6,000 images of each class but class 0 has 5;'):
        make_split(Dataset('cifar10', 'src', [f'{i}' for i in range(5)], [0] * 5, ['0'],
                           partition=np.array(['train'] * 5)), 'paper')


def test_save_split_files(tmp_path):
    ds = read_digits()
    s = make_split(ds, 'digits', seed=3)
    hashes = save_split(ds, s, str(tmp_path))
    ids, labels = load_list(str(tmp_path / 'train.txt'))
    assert ids == [ds.ids[i] for i in s.train] and labels.tolist() == ds.labels[s.train].tolist()
    meta = json.loads((tmp_path / 'split.json').read_text())
    assert meta['protocol'] == 'digits' and meta['seed'] == 3 and meta['counts']['query'] == len(s.query)
    assert sum(meta['counts_per_class']['train'].values()) == len(s.train) and meta['database_is_train']
    assert set(hashes) == {'train.txt', 'query.txt', 'database.txt'}
    assert (tmp_path / 'database.txt').read_text() == (tmp_path / 'train.txt').read_text()
    assert save_split(ds, make_split(ds, 'digits', seed=3), str(tmp_path / 'same')) == hashes
    other = save_split(ds, make_split(ds, 'digits', seed=4), str(tmp_path / 'other'))
    assert other['query.txt'] != hashes['query.txt'] and other['train.txt'] != hashes['train.txt']


# ---------------------------------------------------------------- triplets

LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 1])


def test_triplets_valid_and_reproducible():
    t = generate_triplets(LABELS, seed=7, epochs=5)
    assert t.dtype == np.int32 and t.shape == (5 * len(LABELS), 3)
    a, p, n = t.T
    assert (LABELS[a] == LABELS[p]).all() and (a != p).all() and (LABELS[a] != LABELS[n]).all()
    check_triplets(t, LABELS)
    for e in range(5):  # every anchor once per epoch, in a fresh order
        assert sorted(t[e * 12:(e + 1) * 12, 0]) == list(range(12))
    assert not np.array_equal(t[:12], t[12:24])
    np.testing.assert_array_equal(t, generate_triplets(LABELS, seed=7, epochs=5))
    np.testing.assert_array_equal(t[12:24], epoch_triplets(LABELS, 7, 1))
    assert not np.array_equal(t, generate_triplets(LABELS, seed=8, epochs=5))


def test_triplets_uniform_positive_never_anchor():
    labels = np.repeat([0, 1], 3)
    t = generate_triplets(labels, seed=0, epochs=300)
    for anchor in range(6):
        pos = t[t[:, 0] == anchor, 1]
        assert set(pos.tolist()) == set(np.flatnonzero(labels == labels[anchor]).tolist()) - {anchor}


def test_triplets_singletons_only_negatives_and_errors():
    labels = np.array([0, 0, 1, 2, 2])
    t = generate_triplets(labels, seed=0, epochs=3)
    assert 2 not in t[:, 0] and len(t) == 3 * 4
    with pytest.raises(DataPrepError, match='at least 2 classes'):
        generate_triplets(np.zeros(4, int), seed=0, epochs=1)
    with pytest.raises(DataPrepError, match='invalid'):
        check_triplets(np.array([[0, 2, 3]]), labels)


def test_write_and_load_triplets(tmp_path):
    meta = write_triplets(str(tmp_path), LABELS, seed=3, epochs=4, batch_size=5, protocol='x', progress=False)
    t = load_triplets(str(tmp_path / 'triplets.txt'))
    np.testing.assert_array_equal(t, generate_triplets(LABELS, seed=3, epochs=4))
    assert (tmp_path / 'triplets.txt').read_text().splitlines()[0] == ' '.join(map(str, t[0]))
    j = json.loads((tmp_path / 'triplets.json').read_text())
    assert j == meta and j['seed'] == 3 and j['epochs'] == 4 and j['count_per_epoch'] == [12] * 4
    assert j['batch_size'] == 5 and j['full_batches_per_epoch'] == 2


def test_shuffled_rows_are_fresh_seeded_permutations():
    from data_prep.triplets import epoch_shuffled_rows
    a, b = epoch_shuffled_rows(100, 0, 0), epoch_shuffled_rows(100, 0, 1)
    assert a.shape == (33, 3) and len(np.unique(a)) == 99 and a.max() < 100
    assert not np.array_equal(a, b)                                      # a fresh order each epoch
    assert np.array_equal(a, epoch_shuffled_rows(100, 0, 0))             # seeded
    assert not np.array_equal(a, epoch_shuffled_rows(100, 1, 0))
    with pytest.raises(Exception, match="at least 3 train rows"):
        epoch_shuffled_rows(2, 0, 0)
