"""scikit-learn's bundled digits (1,797 8x8 grey images, 10 classes): the embedded default dataset.

Pixel values 0-16 become uint8 0-255 by x * 255 / 16, rounded; 1 channel. Ids `digits/NNNN`.
"""
import numpy as np

from ..dataset import Dataset


def read_digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, :, :, None]
    labels = d.target.astype(np.int64)
    return Dataset(name='digits', source='sklearn.datasets.load_digits', ids=[f'digits/{i:04d}' for i in
                   range(len(labels))], labels=labels, class_names=[str(i) for i in range(10)],
                   images=images, channels=1)
