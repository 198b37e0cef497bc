"""DeepFashion In-shop Clothes Retrieval: Eval/list_eval_partition.txt (+ images under Img/).

File format: line 1 the row count, line 2 the header `image_name item_id evaluation_status`, then one row
per image `img/<GENDER>/<Category>/id_XXXXXXXX/NN_V_view.jpg  id_XXXXXXXX  train|query|gallery`, columns
padded with runs of spaces. Labels are the item ids mapped to integers in sorted-id order (id_00000001 -> 0,
...), over all 7,982 items. Ids are the image names. Images are `<root>/Img/<image_name>`; they are only
needed when LMDBs are written.
"""
import os

import numpy as np

from ..dataset import Dataset, path_under
from ..errors import DataPrepError

STATUSES = ('train', 'query', 'gallery')
HEADER = ['image_name', 'item_id', 'evaluation_status']


def find_partition_file(root):
    for cand in (os.path.join(root, 'Eval', 'list_eval_partition.txt'),
                 os.path.join(root, 'list_eval_partition.txt'), root):
        if os.path.isfile(cand):
            return cand
    raise DataPrepError(f'{root}: no Eval/list_eval_partition.txt here; pass the In-shop folder (the one '
                        'holding Eval/ and Img/) with --root')


def parse_partition(path):
    """-> (image_names, item_ids, statuses) as lists, validated (an image name may not leave the
    image folder: no `..`, no absolute path)."""
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataPrepError(f'{path}: cannot read ({e}); download list_eval_partition.txt again') from None
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) < 2:
        raise DataPrepError(f'{path}: too short: expected a count line, a header line and rows')
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise DataPrepError(f'{path}: line 1 should be the number of rows, found {lines[0][:60]!r}') from None
    if lines[1].split() != HEADER:
        raise DataPrepError(f'{path}: line 2 should be the header "{" ".join(HEADER)}", found {lines[1][:80]!r}')
    names, items, statuses = [], [], []
    for lineno, line in enumerate(lines[2:], start=3):
        cols = line.split()
        if len(cols) != 3:
            raise DataPrepError(f'{path}: line {lineno}: expected 3 columns (image_name item_id '
                                f'evaluation_status), found {len(cols)}: {line[:100]!r}')
        name, item, status = cols
        if status not in STATUSES:
            raise DataPrepError(f'{path}: line {lineno}: unknown evaluation_status {status!r} (expected train, '
                                'query or gallery); fix or re-download the file')
        if name.startswith('/') or '..' in name.replace('\\', '/').split('/'):
            raise DataPrepError(f'{path}: line {lineno}: image name {name!r} leaves the image folder (an absolute '
                                'path or a ".." component); In-shop names are img/<...>/<item>/<file>.jpg: fix '
                                'or re-download the file')
        if f'/{item}/' not in f'/{name}':
            raise DataPrepError(f'{path}: line {lineno}: image {name} is not in the folder of its item {item}')
        names.append(name)
        items.append(item)
        statuses.append(status)
    if count != len(names):
        raise DataPrepError(f'{path}: line 1 says {count:,} rows but the file has {len(names):,}; the file is '
                            'truncated or edited: download it again')
    return names, items, statuses


def read_inshop(root):
    """`root`: the In-shop folder (with Eval/ and Img/), or the folder / path of list_eval_partition.txt."""
    part = find_partition_file(root)
    names, items, statuses = parse_partition(part)
    item_ids = sorted(set(items))
    index = {s: i for i, s in enumerate(item_ids)}
    labels = np.array([index[s] for s in items], dtype=np.int64)
    if os.path.isdir(root):
        img_root = os.path.join(os.path.abspath(root), 'Img')
    else:  # root is <In-shop>/Eval/list_eval_partition.txt
        img_root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(part))), 'Img')
    paths = [path_under(img_root, n, f'{part}: line {i + 3}') for i, n in enumerate(names)]
    return Dataset(name='inshop', source=part, ids=names, labels=labels, class_names=item_ids,
                   partition=np.array(statuses), paths=paths, channels=3,
                   notes=[f'images expected under {img_root}'])
