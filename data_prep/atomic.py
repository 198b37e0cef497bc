"""Atomic outputs: write under a temporary name, rename when complete.

Files go to `<name>.tmp-<pid>` and are os.replace()d; directories (LMDBs) go to `<dir>.tmp-<pid>` and are
renamed over the old one (which is first moved aside to `<dir>.old-<pid>` and removed after). A failure
removes the temporary. `OutputLock` serialises builds into one folder, so that leftovers of crashed runs
(`*.tmp-*`, `*.old-*`) can be removed safely by `remove_stale_temporaries`.
"""
import contextlib
import fcntl
import hashlib
import json
import os
import shutil

from .errors import DataPrepError


def tmp_name(path):
    return f'{path}.tmp-{os.getpid()}'


def _remove(path):
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


@contextlib.contextmanager
def atomic_file(path, mode='w'):
    """Yields an open file at a temporary name; renames it to `path` on success."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = tmp_name(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


def write_text(path, text):
    with atomic_file(path, 'w') as f:
        f.write(text)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')


@contextlib.contextmanager
def atomic_dir(path):
    """Yields a fresh temporary directory path; renames it to `path` on success (replacing `path`)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tmp_name(path)
    if os.path.lexists(tmp):
        _remove(tmp)
    try:
        yield tmp
        replace_path(tmp, path)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


def replace_path(src, dst):
    """Renames src (file, dir or symlink) to dst, replacing whatever dst is."""
    if os.path.isdir(dst) and not os.path.islink(dst):
        old = f'{dst}.old-{os.getpid()}'
        os.rename(dst, old)
        os.rename(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)


def atomic_symlink(target, path):
    tmp = tmp_name(path)
    if os.path.lexists(tmp):
        _remove(tmp)
    os.symlink(target, tmp)
    replace_path(tmp, path)


def remove_stale_temporaries(folder):
    """Removes `*.tmp-<pid>` / `*.old-<pid>` left in `folder` (recursively) by an interrupted build."""
    removed = []
    for root, dirs, files in os.walk(folder):
        for name in list(dirs) + files:
            stem, _, pid = name.rpartition('.')
            if (pid.startswith('tmp-') or pid.startswith('old-')) and pid[4:].isdigit():
                p = os.path.join(root, name)
                _remove(p)
                removed.append(p)
                if name in dirs:
                    dirs.remove(name)
    return removed


class OutputLock:
    """An exclusive flock on `<folder>/.data_prep.lock` for the duration of a build."""

    def __init__(self, folder):
        self.path = os.path.join(folder, '.data_prep.lock')
        self.fd = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise DataPrepError(f'{os.path.dirname(self.path)}: another data_prep build is writing into this '
                                'folder; wait for it to finish or choose another --out') from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
