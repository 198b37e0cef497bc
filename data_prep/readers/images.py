"""Generic image sources: a folder with one subfolder per class, or a `path label` list file.

Folder: classes are the subfolder names in sorted order (label 0, 1, ...); images are the files with an
image extension anywhere below each class folder; ids are their paths relative to the root ('/'-separated).
List file: one `path label` line per image (label a non-negative integer, kept as given; the path may
contain spaces; blank lines and lines starting with '#' are skipped); relative paths are taken from `root`
or else from the list file's folder, and no path may leave that folder (`..`, absolute paths or links
elsewhere are refused, naming the line); ids are the paths as written. Images are decoded (as 3-channel colour)
only when LMDBs are written; an unreadable one is then a DataPrepError naming the file.
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


def read_image_list(list_file, root=None, channels=3):
    try:
        with open(list_file, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataPrepError(f'{list_file}: cannot read the list file ({e})') from None
    base = os.path.abspath(root if root else os.path.dirname(os.path.abspath(list_file)))
    ids, labels, paths, origins = [], [], [], []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith('#'):
            continue
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
    n_classes = max(labels) + 1
    return Dataset(name='images', source=os.path.abspath(list_file), ids=ids, labels=np.array(labels),
                   class_names=[str(i) for i in range(n_classes)], paths=paths, channels=channels,
                   origins=origins)
