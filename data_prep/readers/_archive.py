"""Named files from a .tar(.gz) archive, read in memory (nothing is extracted), or from a folder.

Only regular files are read: a wanted member that is a symlink, hardlink or device is refused, and member
names never become paths on disk, so a hostile archive cannot write outside anything.
"""
import os
import tarfile
import zlib

from ..errors import DataPrepError


def read_named_files(path, folder_name, wanted, optional=()):
    """Returns {name: bytes} for each name in `wanted` (and in `optional`, where present).

    `path` is a tar archive holding `<folder_name>/<name>` (or `<name>` at the top), the folder
    `<folder_name>` itself, or a folder that contains `<folder_name>/`. Missing names of `wanted` ->
    DataPrepError.
    """
    required = list(wanted)
    wanted = required + [n for n in optional if n not in required]
    if os.path.isdir(path):
        inner = os.path.join(path, folder_name)
        base = inner if os.path.isdir(inner) else path
        out = {}
        for name in wanted:
            p = os.path.join(base, name)
            if os.path.isfile(p):
                with open(p, 'rb') as f:
                    out[name] = f.read()
        _require(out, required, base)
        return out
    if not os.path.isfile(path):
        raise DataPrepError(f'{path}: no such archive or folder; pass the downloaded archive with --archive')
    out = {}
    try:
        with tarfile.open(path, 'r:*') as tar:
            for m in tar:
                parts = m.name.replace('\\', '/').strip('/').split('/')
                if parts[0] == '.':
                    parts = parts[1:]
                name = parts[-1]
                if name not in wanted or not (len(parts) == 1 or (len(parts) == 2 and parts[0] == folder_name)):
                    continue
                if not m.isfile():
                    raise DataPrepError(f'{path}: member {m.name} is not a regular file (a link or device); '
                                        'refusing it. Use the official archive')
                if name in out:
                    raise DataPrepError(f'{path}: member {name} occurs twice; use the official archive')
                f = tar.extractfile(m)
                data = f.read()
                if len(data) != m.size:
                    raise EOFError(f'{m.name} is cut short')
                out[name] = data
    except DataPrepError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataPrepError(f'{path}: cannot read the archive ({type(e).__name__}: {e}); it is truncated or '
                            'corrupt: download it again') from None
    _require(out, required, path)
    return out


def _require(found, wanted, where):
    missing = [n for n in wanted if n not in found]
    if missing:
        raise DataPrepError(f'{where}: missing {", ".join(missing)}; the archive/folder is incomplete or not '
                            'the expected layout: download the official archive again')


def member_names(path):
    """Yields the member names of a tar archive (lazily: stop early to avoid reading it all), or the
    relative file paths of a folder (two levels)."""
    if os.path.isdir(path):
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            if entry.is_file():
                yield entry.name
            elif entry.is_dir():
                for e in sorted(os.scandir(entry.path), key=lambda e: e.name):
                    if e.is_file():
                        yield entry.name + '/' + e.name
        return
    if not os.path.isfile(path):
        raise DataPrepError(f'{path}: no such archive or folder; pass the downloaded archive with --archive')
    try:
        with tarfile.open(path, 'r:*') as tar:
            for m in tar:
                yield m.name
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataPrepError(f'{path}: cannot read the archive ({type(e).__name__}: {e}); it is truncated or '
                            'corrupt: download it again') from None
