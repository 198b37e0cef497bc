"""The in-memory dataset every reader returns, and the checks shared by readers and splits.

A `Dataset` holds, per item (in the reader's stable order): a stable string id, an integer label and, when
the source has one, the official partition name ('train'/'test' for CIFAR-10, 'train'/'query'/'gallery'
for In-shop). Pixels are either in memory (`images`, uint8 [n, H, W, C], RGB for C=3) or on disk (`paths`,
read with OpenCV on demand by `image(i)`, returned as RGB too).
"""
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import DataPrepError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.pbm', '.tif', '.tiff', '.webp')


@dataclass
class Dataset:
    name: str
    source: str
    ids: list
    labels: np.ndarray
    class_names: list
    partition: np.ndarray = None      # official partition per item (str), or None
    images: np.ndarray = None         # uint8 [n, H, W, C] (RGB when C=3), or None
    paths: list = None                # absolute image paths, or None
    channels: int = 3
    notes: list = field(default_factory=list)
    origins: list = None              # where each item was listed ("list.txt: line 7"), or None

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.ids)
        if len(self.labels) != n:
            raise ValueError('ids and labels differ in length')
        if self.images is not None and len(self.images) != n:
            raise ValueError('ids and images differ in length')
        if self.paths is not None and len(self.paths) != n:
            raise ValueError('ids and paths differ in length')
        if self.partition is not None:
            self.partition = np.asarray(self.partition)
        check_ids(self.ids, self.source)

    def __len__(self):
        return len(self.ids)

    @property
    def has_pixels(self):
        return self.images is not None or self.paths is not None

    def image(self, i):
        """Item i as uint8 [H, W, C], RGB for C=3."""
        if self.images is not None:
            return self.images[i]
        if self.paths is None:
            raise DataPrepError(f'{self.source}: this dataset has no pixels (splits only)')
        return read_image(self.paths[i], self.channels,
                          None if self.origins is None else self.origins[i])

    def image_path(self, i):
        return None if self.paths is None else self.paths[i]


def read_image(path, channels=3, origin=None):
    """Reads an image file as uint8 [H, W, C] (RGB for C=3); DataPrepError naming the file (and
    `origin`, where it was listed, e.g. "list.txt: line 7") if unreadable."""
    import cv2
    listed = f' (listed at {origin})' if origin else ''
    if not os.path.isfile(path):
        raise DataPrepError(f'{path}{listed}: image file is missing; check --root / the list file, or build '
                            'with --splits-only when the images are not available')
    img = cv2.imread(path, cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise DataPrepError(f'{path}{listed}: cannot decode this image (corrupt, empty or not an image); '
                            'replace it, or remove it' + (' and its line' if origin else ''))
    if channels == 3:
        return img[:, :, ::-1]
    return img[:, :, None]


def path_under(root, name, where):
    """`root`/`name` for a path read from a list file or archive, refused (a DataPrepError naming
    `where`, e.g. "list.txt: line 7") when it would leave `root`: `..` components, an absolute path
    outside `root`, or a symbolic link below `root` that points out of it."""
    root = os.path.realpath(root)
    path = os.path.normpath(os.path.join(root, name))
    inside = os.path.commonpath([root, path]) == root
    if inside and os.path.lexists(path):
        inside = os.path.commonpath([root, os.path.realpath(path)]) == root
    if not inside:
        raise DataPrepError(f'{where}: {name!r} leaves the data root {root}; paths in a list must stay '
                            'below the root (no "..", no absolute path or link pointing elsewhere): fix the '
                            'list, or pass the folder holding the images with --root')
    return path


def check_ids(ids, source):
    seen = set()
    for i, s in enumerate(ids):
        if not s or any(c in s for c in '\n\r\t') or s != s.strip():
            raise DataPrepError(f'{source}: item {i} has id {s!r}, which cannot be written to a list file '
                                '(empty, or with a tab, newline or surrounding spaces); rename that file')
        if s in seen:
            raise DataPrepError(f'{source}: item id {s!r} occurs twice; every item needs a unique id')
        seen.add(s)
