"""Small labelled image collections on disk for the `--dataset images` tests: scikit-learn's digits
written as PNG files (10 classes, 8x8 grey, upscaled to 16x16 so the CPU net's pools have room)."""
import os

import numpy as np


def _digits(per_class):
    from sklearn.datasets import load_digits
    d = load_digits()
    images = (d.images * (255.0 / 16)).astype(np.uint8)
    keep = np.concatenate([np.flatnonzero(d.target == c)[:per_class] for c in range(10)])
    return images[keep], d.target[keep]


def _write(path, image):
    import cv2
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, cv2.resize(image, (16, 16), interpolation=cv2.INTER_NEAREST)):
        raise OSError(f"cannot write {path}")


def class_tree(root, per_class=20):
    """root/<digit name>/<n>.png; returns root."""
    images, labels = _digits(per_class)
    for i, (img, lab) in enumerate(zip(images, labels)):
        _write(os.path.join(root, f"digit{lab}", f"{i:04d}.png"), img)
    return root


def set_tree(root, per_class=20, test_share=0.25, sets=("train", "test")):
    """root/train/<class>/, root/test/<class>/ (a quarter of each class); returns root."""
    images, labels = _digits(per_class)
    seen = {}
    for i, (img, lab) in enumerate(zip(images, labels)):
        k = seen.get(lab, 0)
        seen[lab] = k + 1
        name = sets[1] if k < int(per_class * test_share) else sets[0]
        _write(os.path.join(root, name, f"digit{lab}", f"{i:04d}.png"), img)
    return root


def list_files(root, per_class=20, test_share=0.25):
    """Images under root/img/ and root/train.txt, root/query.txt ("path label", relative to root),
    and root/all.txt with a set column; returns root."""
    images, labels = _digits(per_class)
    lines = {"train": [], "query": []}
    seen = {}
    for i, (img, lab) in enumerate(zip(images, labels)):
        rel = f"img/{i:04d} {lab}.png"   # a space in the path, as list files allow
        _write(os.path.join(root, rel), img)
        k = seen.get(lab, 0)
        seen[lab] = k + 1
        lines["query" if k < int(per_class * test_share) else "train"].append(f"{rel} {lab}")
    for name, rows in lines.items():
        with open(os.path.join(root, f"{name}.txt"), "w") as f:
            f.write("\n".join(rows) + "\n")
    with open(os.path.join(root, "all.txt"), "w") as f:
        f.write("".join(f"{r} {'test' if n == 'query' else n}\n" for n, rows in lines.items() for r in rows))
    return root
