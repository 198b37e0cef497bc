"""tools/caffe_build/caffe_source.py: pinned-hash verification, the extracted-folder tree hash, the guarded
extraction, and reading the mirror from apt's own configuration (no network needed)."""
import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tools.caffe_build import caffe_source as S


def test_tree_hash_ignores_order_and_sees_content():
    a = S.tree_hash([("x/a.txt", b"1"), ("b.txt", b"2")])
    assert a == S.tree_hash([("b.txt", b"2"), ("x/a.txt", b"1")])
    assert a != S.tree_hash([("b.txt", b"2"), ("x/a.txt", b"1 ")])
    assert a != S.tree_hash([("b.txt", b"2"), ("x/b.txt", b"1")])


def test_folder_tree_hash_matches_the_tarball_form_and_skips_debian(tmp_path):
    (tmp_path / "src" / "caffe").mkdir(parents=True)
    (tmp_path / "src" / "caffe" / "a.cpp").write_bytes(b"int a;")
    (tmp_path / "README.md").write_bytes(b"readme")
    (tmp_path / "debian").mkdir()
    (tmp_path / "debian" / "control").write_bytes(b"not part of the orig tarball")
    want = S.tree_hash([("src/caffe/a.cpp", b"int a;"), ("README.md", b"readme")])
    assert S.folder_tree_hash(str(tmp_path)) == want


def test_wrong_tarball_is_refused_by_name(tmp_path):
    bad = tmp_path / S.ORIG_NAME
    bad.write_bytes(b"not caffe")
    with pytest.raises(S.SourceError, match="does not match the pinned e0eb3f06"):
        S.verify_tarball(str(bad))


def test_modified_source_folder_is_refused(tmp_path):
    (tmp_path / "src" / "caffe" / "proto").mkdir(parents=True)
    (tmp_path / "src" / "caffe" / "proto" / "caffe.proto").write_text("syntax = 'proto2';")
    with pytest.raises(S.SourceError, match="are not the pristine"):
        S.locate_sources(str(tmp_path), str(tmp_path / "downloads"))


def test_missing_debian_tarball_is_named(tmp_path):
    (tmp_path / S.ORIG_NAME).write_bytes(b"x")
    with pytest.raises(S.SourceError, match="Debian's patch tarball must sit beside"):
        S.locate_sources(str(tmp_path / S.ORIG_NAME), str(tmp_path / "dl"))


def tar_with(tmp_path, name, member, data=b"x", link=None):
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        if link:
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
        else:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.mark.parametrize("member, link", [("../escape.txt", None), ("/etc/evil", None),
                                          ("ok/../../escape", None), ("link", "../../outside")])
def test_extraction_refuses_path_traversal(tmp_path, member, link):
    archive = tar_with(tmp_path, "bad.tar.gz", member, link=link)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(S.SourceError, match="outside"):
        S.safe_extract(archive, str(dest))
    assert not (tmp_path / "escape.txt").exists() and list(dest.iterdir()) == []


def test_extraction_of_a_plain_member(tmp_path):
    archive = tar_with(tmp_path, "ok.tar.gz", "dir/file.txt", b"hello")
    S.safe_extract(archive, str(tmp_path / "out"))
    assert (tmp_path / "out" / "dir" / "file.txt").read_bytes() == b"hello"


def test_mirror_comes_from_the_system_configuration(monkeypatch, tmp_path):
    sources = tmp_path / "debian.sources"
    sources.write_text("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\n"
                       "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n")
    monkeypatch.setattr(S.glob, "glob", lambda pattern: [str(sources)] if pattern.endswith(".sources") else [])
    assert S.apt_mirror_uri() == "http://mirror.example/debian"


def test_repository_names_no_mirror_host():
    """The mirror is read from apt's configuration at run time: the host this machine's apt uses
    appears in no file of the repository."""
    import subprocess
    from urllib.parse import urlparse
    try:
        host = urlparse(S.apt_mirror_uri()).hostname
    except S.SourceError:
        pytest.skip("this machine's apt configuration names no Debian mirror")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = subprocess.run(["git", "-C", root, "ls-files"], capture_output=True, text=True).stdout.split()
    assert files, "not a git checkout"
    offenders = [f for f in files if os.path.isfile(os.path.join(root, f))
                 and host.encode() in open(os.path.join(root, f), "rb").read()]
    assert offenders == [], f"{host} is written in {offenders}"


def test_source_key_covers_every_patch():
    patches = S.patch_files()
    names = [os.path.basename(p) for p in patches]
    assert "caffe.proto.patch" in names and "0005-extra-layers-hook.patch" in names
    assert len(S.source_key("a", "b")) == 16 and S.source_key("a", "b") != S.source_key("a", "c")


def _sync(src, dst):
    root = Path(__file__).resolve().parents[1]
    return subprocess.run(["cmake", f"-DFROM={src}", f"-DTO={dst}", "-P",
                           str(root / "tools" / "caffe_build" / "sync_layers.cmake")], capture_output=True, text=True)


def test_layer_sync_writes_only_files_whose_content_differs(tmp_path):
    """The build compiles a mirror of layers/include and layers/src (tools/caffe_build/sync_layers.cmake):
    an unchanged file keeps its time stamp (ninja does not recompile it, so a fresh clone of the
    same commit compiles nothing), a changed one is rewritten, a removed one is deleted."""
    src, dst = tmp_path / "layers", tmp_path / "mirror"
    for name, text in {"include/caffe/a.hpp": "a", "src/caffe/a.cpp": "1", "src/caffe/b.cu": "2",
                       "python/skip.py": "not mirrored"}.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    assert _sync(src, dst).returncode == 0
    files = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert files == ["include/caffe/a.hpp", "src/caffe/a.cpp", "src/caffe/b.cu"]
    old = {p: os.stat(dst / p).st_mtime_ns for p in files}
    # A fresh clone: same content, newer time stamps everywhere.
    time.sleep(0.02)
    for p in files:
        os.utime(src / p)
    (src / "src/caffe/a.cpp").write_text("changed")
    (src / "src/caffe/b.cu").unlink()
    assert _sync(src, dst).returncode == 0
    assert os.stat(dst / "include/caffe/a.hpp").st_mtime_ns == old["include/caffe/a.hpp"]
    assert (dst / "src/caffe/a.cpp").read_text() == "changed"
    assert os.stat(dst / "src/caffe/a.cpp").st_mtime_ns > old["src/caffe/a.cpp"]
    assert not (dst / "src/caffe/b.cu").exists()


def test_layer_sync_refuses_a_folder_without_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _sync(tmp_path / "empty", tmp_path / "mirror")
    assert result.returncode != 0
    assert "has no include/ or src/ files: is it this project's layers folder?" in " ".join(result.stderr.split())
