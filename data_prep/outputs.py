"""How every output of this project is written: atomically, hashed, and marked complete.

This is the one owner of three idioms that every stage (data_prep, the nets' generator, training,
extraction, evaluation, reports, the Caffe build) uses:

Atomic outputs. Files go to `<name>.tmp-<pid>` and are os.replace()d; directories (LMDBs, blob
folders) go to `<dir>.tmp-<pid>` and are renamed over the old one (which is first moved aside to
`<dir>.old-<pid>` and removed after). A failure removes the temporary, so a reader sees the old
output or the new one, never half of one. `OutputLock` serialises writers of one folder, so that
leftovers of crashed runs (`*.tmp-*`, `*.old-*`) can be removed safely by
`remove_stale_temporaries`.

Hashing. `sha256_file` (streamed) and `sha256_bytes`.

Completion markers ("skip if done"). A stage that may be skipped writes, last and atomically, a
JSON marker holding the inputs it was made from (parameters, and the sha256 of the files it read)
and the size and sha256 of every output it vouches for (paths relative to the marker's folder):

    {"inputs": {...}, "outputs": {"relative/path": {"bytes": n, "sha256": "..."}}, ...record}

`completed(marker, inputs)` returns that record when the marker exists, its inputs equal the
current ones (compared after a JSON round trip, so tuples and lists agree) and every listed output
still has its size and hash; otherwise None, and `incomplete_reasons` says why. A damaged output
(a truncated model, an LMDB overwritten in the middle) therefore makes the stage run again instead
of being reused. Re-hashing costs about 1 s per GB read.
"""
import contextlib
import fcntl
import hashlib
import json
import os
import shutil

from .errors import DataPrepError


# ---------------------------------------------------------------- atomic writes

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
    except OSError as e:
        if e.filename is None:  # write() and fsync() name no file: name the output
            raise OSError(e.errno, e.strerror, path) from None
        raise
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


def write_text(path, text):
    with atomic_file(path, 'w') as f:
        f.write(text)


def write_bytes(path, data):
    with atomic_file(path, 'wb') as f:
        f.write(data)


def write_json(path, obj, indent=2, sort_keys=True):
    write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + '\n')


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
    """An exclusive flock on `<folder>/<name>` for the duration of a write into the folder."""

    def __init__(self, folder, name='.data_prep.lock', what='data_prep build'):
        self.path = os.path.join(folder, name)
        self.what = what
        self.fd = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise DataPrepError(f'{os.path.dirname(self.path)}: another {self.what} is writing into this '
                                'folder; wait for it to finish or choose another --out') from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


# ---------------------------------------------------------------- hashing

def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- completion markers

def _as_json(obj):
    return json.loads(json.dumps(obj))


def load_marker(marker):
    """The marker's record (a dict with "inputs"), or None when it is missing or unreadable."""
    try:
        with open(marker) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and 'inputs' in record else None


def describe_outputs(folder, paths):
    """{relative path: {"bytes", "sha256"}} of `paths` (relative to `folder`)."""
    out = {}
    for rel in paths:
        p = os.path.join(folder, rel)
        out[rel] = {'bytes': os.path.getsize(p), 'sha256': sha256_file(p)}
    return out


def damaged_outputs(marker, record):
    """{relative path: what is wrong} of the outputs `record` lists that are missing or no longer
    have their recorded size and sha256 ({} = all as recorded)."""
    folder = os.path.dirname(os.path.abspath(marker))
    damaged = {}
    for rel, want in (record.get('outputs') or {}).items():
        p = os.path.join(folder, rel)
        if not os.path.isfile(p):
            damaged[rel] = 'is missing'
        elif os.path.getsize(p) != want.get('bytes') or sha256_file(p) != want.get('sha256'):
            damaged[rel] = 'changed since it was written (damaged or edited)'
    return damaged


def output_problems(marker, record):
    """What is missing or changed among the outputs `record` lists ([] = all as recorded)."""
    return [f'{rel} {what}' for rel, what in damaged_outputs(marker, record).items()]


def changed_keys(old, new):
    """The keys whose values differ between two dicts (compared after a JSON round trip)."""
    old, new = _as_json(old or {}), _as_json(new or {})
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def differences(old, new):
    """'key: old -> new, ...' of two dicts (what makes an input differ)."""
    old, new = _as_json(old or {}), _as_json(new or {})
    return ', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in changed_keys(old, new))


def incomplete_reasons(marker, inputs):
    """Why the stage of `marker` is not complete for `inputs` ([] = complete)."""
    record = load_marker(marker)
    if record is None:
        return [f'{os.path.basename(marker)} is missing or unreadable']
    if record['inputs'] != _as_json(inputs):
        return [f'made from other inputs ({differences(record["inputs"], inputs)})']
    return output_problems(marker, record)


def completed(marker, inputs):
    """The record of `marker` when the stage is complete for `inputs` (see the module docstring),
    else None."""
    record = load_marker(marker)
    if record is None or record['inputs'] != _as_json(inputs) or output_problems(marker, record):
        return None
    return record


def mark_complete(marker, inputs, outputs=(), **record):
    """Writes the marker (last, atomically): `inputs`, the size and sha256 of `outputs` (paths
    relative to the marker's folder) and `record`; returns what it wrote."""
    folder = os.path.dirname(os.path.abspath(marker))
    full = dict(record, inputs=_as_json(inputs), outputs=describe_outputs(folder, outputs))
    write_json(marker, full)
    return _as_json(full)
