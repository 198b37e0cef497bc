"""Generic image sources: a folder with one subfolder per class, or a `path label` list file; and the
user-given splits: a root holding set folders (train/ and test/, or train/, query/ and database/) of class
folders, or one list file per set, or one list with a set column (`path label set`).

Folder: classes are the subfolder names in sorted order (label 0, 1, ...); images are the files with an
image extension anywhere below each class folder; ids are their paths relative to the root ('/'-separated).
List file: one `path label` line per image (label a non-negative integer, kept as given; the path may
contain spaces; blank lines and lines starting with '#' are skipped); relative paths are taken from `root`
or else from the list file's folder, and no path may leave that folder (`..`, absolute paths or links
elsewhere are refused, naming the line); ids are the paths as written. Images are decoded (as 3-channel colour)
only when LMDBs are written; an unreadable one is then a DataPrepError naming the file and its list line.

Set folders and set lists give the Dataset a partition: 'train', 'query' (from test/ or query/) and, when
given, 'database'; the classes are the union of the set folders' class folders (sorted), so a class has one
label in every set. An image may be listed in one set only.
"""
import os

import numpy as np

from ..dataset import IMAGE_EXTENSIONS, Dataset, path_under
from ..errors import DataPrepError


def read_image_folder(root, channels=3):
    if not os.path.isdir(root):
        raise DataPrepError(f'{root}: not a folder; pass a folder with one subfolder per class as --root')
    root = os.path.abspath(root)
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith('.'))
    if not classes:
        raise DataPrepError(f'{root}: no class subfolders; expected <root>/<class>/<image files>')
    ids, labels, paths = [], [], []
    for label, cls in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, cls)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
            found += [os.path.join(dirpath, f) for f in sorted(filenames)
                      if not f.startswith('.') and f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise DataPrepError(f'{os.path.join(root, cls)}: class folder without images '
                                f'({", ".join(IMAGE_EXTENSIONS)}); remove it or add images')
        for p in found:
            ids.append(os.path.relpath(p, root).replace(os.sep, '/'))
            labels.append(label)
            paths.append(p)
    return Dataset(name='images', source=root, ids=ids, labels=np.array(labels), class_names=classes,
                   paths=paths, channels=channels)


def detect_channels(paths, sample=50):
    """1 when every one of the first `sample` images is stored grey, else 3 (read as colour)."""
    import cv2
    for p in paths[:sample]:
        img = cv2.imread(p, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise DataPrepError(f'{p}: cannot decode this image (corrupt or not an image); replace or remove it')
        if img.ndim == 3 and img.shape[2] > 1:
            return 3
    return 1


SET_FOLDERS = {'train': 'train', 'test': 'query', 'query': 'query', 'database': 'database'}


def set_folders(root):
    """The set folders of `root` ({folder name: partition}) when it holds train/ and test/ or query/,
    else None (a plain class-folder tree)."""
    if not os.path.isdir(root):
        return None
    names = {e.name for e in os.scandir(root) if e.is_dir()}
    if 'train' not in names or not names & {'test', 'query'}:
        return None
    if {'test', 'query'} <= names:
        raise DataPrepError(f'{root}: holds both test/ and query/; keep one (test/ is read as the query set)')
    return {n: SET_FOLDERS[n] for n in sorted(names) if n in SET_FOLDERS}


def read_image_sets(root, channels=3):
    """A root of set folders (set_folders) of class folders -> Dataset with partition."""
    root = os.path.abspath(root)
    sets = set_folders(root)
    if sets is None:
        raise DataPrepError(f'{root}: expected train/ and test/ (or train/, query/, database/) folders of '
                            'class folders')
    parts = {name: read_image_folder(os.path.join(root, name), channels) for name in sets}
    classes = sorted(set().union(*(p.class_names for p in parts.values())))
    index = {c: i for i, c in enumerate(classes)}
    ids, labels, paths, partition = [], [], [], []
    for name, ds in parts.items():
        ids += [f'{name}/{i}' for i in ds.ids]
        labels += [index[ds.class_names[lab]] for lab in ds.labels]
        paths += ds.paths
        partition += [sets[name]] * len(ds)
    return Dataset(name='images', source=root, ids=ids, labels=np.array(labels), class_names=classes,
                   paths=paths, channels=channels, partition=np.array(partition))


def read_image_lists(lists, root=None, channels=3):
    """{partition ('train', 'query', 'database'): list file} -> one Dataset with partition."""
    ids, labels, paths, partition, origins, seen = [], [], [], [], [], {}
    for name, path in lists.items():
        ds = read_image_list(path, root, channels)
        for i, p in zip(ds.ids, ds.paths):
            if p in seen:
                raise DataPrepError(f'{path}: {i} is also in the {seen[p]} list; an image belongs to one set '
                                    '(the database defaults to the training images: omit --database-list)')
            seen[p] = name
        ids += ds.ids
        labels += list(ds.labels)
        paths += ds.paths
        origins += ds.origins
        partition += [name] * len(ds)
    n_classes = max(labels) + 1
    return Dataset(name='images', source=os.path.abspath(lists['train']), ids=ids, labels=np.array(labels),
                   class_names=[str(i) for i in range(n_classes)], paths=paths, channels=channels,
                   partition=np.array(partition), origins=origins)


def read_image_list(list_file, root=None, channels=3):
    try:
        with open(list_file, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataPrepError(f'{list_file}: cannot read the list file ({e})') from None
    base = os.path.abspath(root if root else os.path.dirname(os.path.abspath(list_file)))
    ids, labels, paths, sets, origins = [], [], [], [], []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith('#'):
            continue
        three = line.strip().rsplit(None, 2)
        if len(three) == 3 and three[2] in SET_FOLDERS and three[1].lstrip('-').isdigit():
            sets.append(SET_FOLDERS[three[2]])
            cols = three[:2]
        else:
            cols = line.strip().rsplit(None, 1)
        if len(cols) != 2:
            raise DataPrepError(f'{list_file}: line {lineno}: expected "path label", found {line[:100]!r}')
        rel, lab = cols
        try:
            label = int(lab)
        except ValueError:
            label = -1
        if label < 0:
            raise DataPrepError(f'{list_file}: line {lineno}: unknown label {lab!r}: labels must be '
                                'non-negative integers')
        p = path_under(base, rel, f'{list_file}: line {lineno}')
        if not os.path.isfile(p):
            raise DataPrepError(f'{list_file}: line {lineno}: image {p} does not exist; fix the path or '
                                'pass the folder the paths are relative to with --root')
        ids.append(rel)
        labels.append(label)
        paths.append(p)
        origins.append(f'{list_file}: line {lineno}')
    if not ids:
        raise DataPrepError(f'{list_file}: no images listed; expected "path label" lines')
    if sets and len(sets) != len(ids):
        raise DataPrepError(f'{list_file}: some lines have a set column (train/test/query/database) and some '
                            'do not; give every line one, or none')
    n_classes = max(labels) + 1
    return Dataset(name='images', source=os.path.abspath(list_file), ids=ids, labels=np.array(labels),
                   class_names=[str(i) for i in range(n_classes)], paths=paths, channels=channels,
                   partition=np.array(sets) if sets else None, origins=origins)
