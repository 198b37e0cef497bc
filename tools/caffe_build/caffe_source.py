#!/usr/bin/env python3
"""Get BVLC Caffe's source (Debian's `caffe` source package), verify it, patch it.

The source is Debian bullseye's `caffe 1.0.0+git20180821.99bd997-8`: BVLC master at
commit 99bd997 plus Debian's quilt patches. It is fetched with `apt-get source
--download-only` through a temporary deb-src list whose mirror is read from this
system's own apt configuration (nothing in the system configuration is changed, and
no mirror host is written anywhere in this repository). An offline user passes
`--source` with a folder holding the two tarballs (as `apt-get source` leaves them),
or the orig tarball (the Debian tarball beside it), or an extracted source folder.
Every tarball is checked against the sha256 pinned below; a folder against the pinned
tree hash of the orig tarball's files.

The patched tree is kept under the cache folder, named by a key over the sources and
every patch, so a rerun with nothing changed finds it and does nothing. This script
uses only the Python standard library: it runs before any virtual environment exists.

    python3 tools/caffe_build/caffe_source.py [--source PATH] [--cache DIR]   # prints the tree's path
"""
import argparse
import contextlib
import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

VERSION = "1.0.0+git20180821.99bd997-8"
ORIG_NAME = "caffe_1.0.0+git20180821.99bd997.orig.tar.gz"
DEBIAN_NAME = "caffe_1.0.0+git20180821.99bd997-8.debian.tar.xz"
PINNED_SHA256 = {
    ORIG_NAME: "e0eb3f06794f7402c77b7dec8e8480273ee1a1bb192e9122b621a69d4147ad0c",
    DEBIAN_NAME: "07cf073227494a6b07234e40cb5df91db566616593eef9baafdc4d06ad159f21",
}
# sha256 over "path\0sha256(content)\n" of every file of the orig tarball, sorted by path
# (what `tree_hash` computes); lets an extracted folder be verified like the tarball.
PINNED_ORIG_TREE_SHA256 = "27a6179b8be42995997e33bbb755ad1444ab0fae552243768d40153c5c198576"

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PATCH_DIRS = [os.path.join(REPO, "tools", "caffe_build", "patches"), os.path.join(REPO, "layers", "proto")]
if REPO not in sys.path:  # run as a script by CMake: the checkout's data_prep.outputs hashes files
    sys.path.insert(0, REPO)
from data_prep.outputs import sha256_bytes, sha256_file  # noqa: E402 (standard library only)


class SourceError(RuntimeError):
    pass


def default_cache():
    base = os.environ.get("TQN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tqn-caffe")
    return base


def tree_hash(files):
    """files: iterable of (relative path, bytes); order does not matter."""
    h = hashlib.sha256()
    for rel, data in sorted(files):
        h.update(rel.encode() + b"\0" + sha256_bytes(data).encode() + b"\n")
    return h.hexdigest()


def folder_tree_hash(root):
    def walk():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not (dirpath == root and d in ("debian", ".git", ".pc"))]
            for name in filenames:
                full = os.path.join(dirpath, name)
                if os.path.islink(full):
                    yield os.path.relpath(full, root), os.readlink(full).encode()
                else:
                    with open(full, "rb") as f:
                        yield os.path.relpath(full, root), f.read()
    return tree_hash(walk())


def patch_files():
    files = []
    for d in PATCH_DIRS:
        files += sorted(glob.glob(os.path.join(d, "*.patch")))
    return files


def source_key(orig_id, debian_id):
    """The key of the patched tree: the sources and every patch (by name and content, in the
    order they apply; not by folder, so moving the patches' folder keeps the key)."""
    h = hashlib.sha256()
    h.update(f"{VERSION}\n{orig_id}\n{debian_id}\n".encode())
    for p in patch_files():
        h.update(os.path.basename(p).encode() + b"\0")
        h.update(sha256_file(p).encode() + b"\n")
    return h.hexdigest()[:16]


def verify_tarball(path):
    name = os.path.basename(path)
    want = PINNED_SHA256[name]
    got = sha256_file(path)
    if got != want:
        raise SourceError(
            f"{path}: sha256 {got} does not match the pinned {want}. The file is corrupt or "
            f"not Debian's {name}; delete it and rerun (or pass the right file with --source).")
    return got


def apt_mirror_uri():
    """The Debian mirror this system's apt already uses (deb822 first, then sources.list)."""
    candidates = sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))
    for path in candidates:
        types, uris = [], []
        with open(path) as f:
            for line in f:
                if line.startswith("Types:"):
                    types = line.split()[1:]
                if line.startswith("URIs:"):
                    uris = line.split()[1:]
                if not line.strip():
                    if uris and ("deb" in types or "deb-src" in types) and "security" not in uris[0]:
                        return uris[0]
                    types, uris = [], []
        if uris and "security" not in uris[0]:
            return uris[0]
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                parts = line.split("#")[0].split()
                if parts and parts[0] in ("deb", "deb-src"):
                    uri = next((p for p in parts[1:] if not p.startswith("[")), None)
                    if uri and "debian" in uri and "security" not in uri:
                        return uri
    raise SourceError("No Debian mirror found in /etc/apt/sources.list.d/*.sources or "
                      "/etc/apt/sources.list; pass --source with Debian's caffe source tarballs.")


def download_with_apt(dest):
    """apt-get source --download-only through a temporary bullseye deb-src list."""
    uri = apt_mirror_uri()
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    opt = f"[signed-by={keyring}]" if os.path.exists(keyring) else "[trusted=yes]"
    with tempfile.TemporaryDirectory(prefix="caffe-apt-") as tmp:
        lists = os.path.join(tmp, "lists")
        os.makedirs(os.path.join(lists, "partial"))
        srclist = os.path.join(tmp, "bullseye-src.list")
        with open(srclist, "w") as f:
            f.write(f"deb-src {opt} {uri} bullseye main\n")
        apt = ["apt-get", "-q", "-o", f"Dir::Etc::SourceList={srclist}",
               "-o", "Dir::Etc::SourceParts=/dev/null", "-o", f"Dir::State::Lists={lists}",
               "-o", "APT::Sandbox::User=root"]
        print(f"caffe_source: fetching Debian's caffe {VERSION} source (bullseye deb-src on the "
              f"system's mirror)", file=sys.stderr)
        for cmd in (apt + ["update"], apt + ["source", "--download-only", f"caffe={VERSION}"]):
            r = subprocess.run(cmd, cwd=dest, stdout=sys.stderr, stderr=sys.stderr)
            if r.returncode != 0:
                raise SourceError(
                    f"`{' '.join(cmd[:1] + cmd[-2:])}` failed (exit {r.returncode}). Without network, "
                    f"download {ORIG_NAME} and {DEBIAN_NAME} elsewhere and pass their folder with --source.")


def locate_sources(source, downloads):
    """Returns (orig tarball or folder, debian tarball or None, orig id, debian id)."""
    if source:
        source = os.path.abspath(source)
        if os.path.isdir(source) and os.path.exists(os.path.join(source, ORIG_NAME)):
            source = os.path.join(source, ORIG_NAME)
        if os.path.isfile(source):
            if os.path.basename(source) != ORIG_NAME:
                raise SourceError(f"{source}: expected Debian's {ORIG_NAME} (or a folder holding it)")
            debian = os.path.join(os.path.dirname(source), DEBIAN_NAME)
            if not os.path.exists(debian):
                raise SourceError(f"{debian} is missing: Debian's patch tarball must sit beside {source}")
            return source, debian, verify_tarball(source), verify_tarball(debian)
        if os.path.isdir(source):
            if not os.path.exists(os.path.join(source, "src", "caffe", "proto", "caffe.proto")):
                raise SourceError(f"{source}: not a Caffe source folder (no src/caffe/proto/caffe.proto)")
            got = folder_tree_hash(source)
            if got != PINNED_ORIG_TREE_SHA256:
                raise SourceError(
                    f"{source}: its files (tree hash {got}) are not the pristine {ORIG_NAME} "
                    f"(tree hash {PINNED_ORIG_TREE_SHA256}); pass an unmodified, unpatched extraction.")
            debian = os.path.join(os.path.dirname(source), DEBIAN_NAME)
            if not os.path.exists(debian):
                debian = os.path.join(downloads, DEBIAN_NAME)
                if not os.path.exists(debian):
                    download_with_apt(downloads)
            return source, debian, got, verify_tarball(debian)
        raise SourceError(f"--source {source}: no such file or folder")
    orig = os.path.join(downloads, ORIG_NAME)
    debian = os.path.join(downloads, DEBIAN_NAME)
    if not (os.path.exists(orig) and os.path.exists(debian)):
        download_with_apt(downloads)
    return orig, debian, verify_tarball(orig), verify_tarball(debian)


def safe_extract(tar_path, dest):
    """Extract a tarball, refusing members that would land outside dest."""
    dest_real = os.path.realpath(dest)
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            target = os.path.realpath(os.path.join(dest, member.name))
            if os.path.commonpath([dest_real, target]) != dest_real:
                raise SourceError(f"{tar_path}: member {member.name!r} would be written outside {dest}")
            if member.islnk() or member.issym():
                link = os.path.realpath(os.path.join(os.path.dirname(target), member.linkname))
                if member.islnk():
                    link = os.path.realpath(os.path.join(dest, member.linkname))
                if os.path.commonpath([dest_real, link]) != dest_real:
                    raise SourceError(f"{tar_path}: link {member.name!r} points outside {dest}")
            if member.isdev():
                raise SourceError(f"{tar_path}: device member {member.name!r} refused")
        tar.extractall(dest)


def apply_patch(tree, patch_path):
    r = subprocess.run(["patch", "-p1", "--forward", "--batch", "-s", "-i", patch_path], cwd=tree,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SourceError(f"patch {patch_path} does not apply to {tree}:\n{r.stdout}{r.stderr}")


@contextlib.contextmanager
def locked(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(source=None, cache=None):
    cache = os.path.abspath(cache or default_cache())
    downloads = os.path.join(cache, "downloads")
    os.makedirs(downloads, exist_ok=True)
    with locked(os.path.join(cache, "source.lock")):
        orig, debian, orig_id, debian_id = locate_sources(source, downloads)
        key = source_key(orig_id, debian_id)
        tree = os.path.join(cache, f"src-{key}")
        if os.path.exists(os.path.join(tree, ".tqn-complete")):
            return tree
        tmp = tempfile.mkdtemp(prefix=f".src-{key}-", dir=cache)
        try:
            if os.path.isdir(orig):
                shutil.copytree(orig, tmp, dirs_exist_ok=True, symlinks=True,
                                ignore=shutil.ignore_patterns(".git", ".pc"))
                shutil.rmtree(os.path.join(tmp, "debian"), ignore_errors=True)
            else:
                safe_extract(orig, tmp)  # the orig tarball has no top-level folder
            safe_extract(debian, tmp)
            with open(os.path.join(tmp, "debian", "patches", "series")) as f:
                series = [l.split("#")[0].strip() for l in f]
            for name in filter(None, series):
                apply_patch(tmp, os.path.join(tmp, "debian", "patches", name))
            for p in patch_files():
                apply_patch(tmp, p)
            with open(os.path.join(tmp, ".tqn-complete"), "w") as f:
                f.write(f"caffe {VERSION}\norig {orig_id}\ndebian {debian_id}\n")
                for p in patch_files():
                    f.write(f"patch {os.path.relpath(p, REPO)} {sha256_file(p)}\n")
            if os.path.exists(tree):  # an incomplete earlier attempt
                shutil.rmtree(tree)
            os.rename(tmp, tree)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp)
        return tree


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", help="local Debian caffe source: folder with the two tarballs, "
                    "the orig tarball, or an extracted orig folder")
    ap.add_argument("--cache", default=None, help="cache folder (default: $TQN_CACHE or ~/.cache/tqn-caffe)")
    ap.add_argument("--print-orig-tree-hash", metavar="TARBALL",
                    help="print the tree hash of an orig tarball (to pin PINNED_ORIG_TREE_SHA256)")
    args = ap.parse_args(argv)
    try:
        if args.print_orig_tree_hash:
            with tarfile.open(args.print_orig_tree_hash) as tar:
                files = [(os.path.normpath(m.name), tar.extractfile(m).read() if m.isfile() else m.linkname.encode())
                         for m in tar.getmembers() if m.isfile() or m.issym()]
            print(tree_hash(files))
            return 0
        print(prepare(args.source, args.cache))
        return 0
    except SourceError as e:
        print(f"caffe_source: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
