"""Optional C kernels (native.c) for the Hamming scans of codes.py and metrics.py and the ADC
table lookups of pq.py, built on first use with the system C compiler and loaded with ctypes.

Nothing beyond the standard library and a C compiler (`$CC`, else Python's configured
compiler, else `cc` / `gcc`): no Python headers, no cffi. The shared library is cached in
``$TQN_NATIVE_CACHE`` (default ``$TQN_CACHE/native``, ``~/.cache/tqn-caffe/native``) under a
name keyed by the source, the compiler's version and the platform, written atomically, so
concurrent first uses are safe and an edited source is rebuilt.

When no compiler is found, the build fails or ``TQN_NATIVE=0`` is set, `lib()` returns None
and every caller uses its pure-numpy path (same results, slower); `status()` says which and
why. `disabled()` switches the kernels off temporarily (tests, benchmarks).
"""
import contextlib
import ctypes
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import threading
import warnings

import numpy as np

from data_prep.outputs import replace_path, sha256_bytes, tmp_name

ABI_VERSION = 4
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native.c")
_FLAGS = ["-O3", "-std=c99", "-shared", "-fPIC"]
_lock = threading.Lock()
_state = {"lib": None, "tried": False, "error": None, "path": None}
_disabled_depth = [0]


def lib():
    """The loaded ctypes library, or None (numpy fallback)."""
    if _disabled_depth[0] or os.environ.get("TQN_NATIVE", "1") == "0":
        return None
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                try:
                    _state["lib"], _state["path"] = _load()
                except Exception as e:  # no compiler, failed build, unloadable library
                    _state["error"] = f"{type(e).__name__}: {e}"
                    warnings.warn(f"tools.hashing.native: C kernels unavailable, using numpy "
                                  f"({_state['error']})", RuntimeWarning, stacklevel=2)
                _state["tried"] = True
    return _state["lib"]


def status():
    """``{"backend": "native" | "numpy", "library": path | None, "reason": str | None}``."""
    loaded = lib()
    if loaded is not None:
        return {"backend": "native", "library": _state["path"], "reason": None}
    if _disabled_depth[0]:
        reason = "disabled by tools.hashing.native.disabled()"
    elif os.environ.get("TQN_NATIVE", "1") == "0":
        reason = "disabled by TQN_NATIVE=0"
    else:
        reason = _state["error"]
    return {"backend": "numpy", "library": None, "reason": reason}


@contextlib.contextmanager
def disabled():
    """Within the block every caller takes its pure-numpy path."""
    _disabled_depth[0] += 1
    try:
        yield
    finally:
        _disabled_depth[0] -= 1


@contextlib.contextmanager
def generic_kernels():
    """Within the block the C kernels run their portable variant (no POPCNT instruction, no
    AVX-512 intrinsics in tqn_euclid's distances and ranking), the only one on non-x86
    machines: for tests."""
    loaded = lib()
    old = loaded.tqn_force_generic(1) if loaded is not None else 0
    try:
        yield
    finally:
        if loaded is not None:
            loaded.tqn_force_generic(old)


def _cache_dir():
    if os.environ.get("TQN_NATIVE_CACHE"):
        return os.environ["TQN_NATIVE_CACHE"]
    base = os.environ.get("TQN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                       "tqn-caffe")
    return os.path.join(base, "native")


def _compiler():
    candidates = [os.environ.get("CC"), (sysconfig.get_config_var("CC") or "").split()[:1],
                  "cc", "gcc", "clang"]
    for c in candidates:
        if isinstance(c, list):
            c = c[0] if c else None
        if c and shutil.which(c):
            return shutil.which(c)
    raise RuntimeError("no C compiler found (set CC, or install gcc)")


def _load():
    cc = _compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                             timeout=60).stdout.splitlines()[:1]
    with open(_SOURCE, "rb") as f:
        source = f.read()
    key = sha256_bytes(b"\0".join([source, " ".join(_FLAGS).encode(), "".join(version).encode(),
                                    platform.machine().encode(), sys.platform.encode()]))[:16]
    folder = _cache_dir()
    path = os.path.join(folder, f"tqn_native_{key}.so")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        tmp = tmp_name(path)  # the compiler writes here; renamed when complete
        try:
            run = subprocess.run([cc, *_FLAGS, "-o", tmp, _SOURCE], capture_output=True,
                                 text=True, timeout=300)
            if run.returncode != 0:
                raise RuntimeError(f"{os.path.basename(cc)} failed: "
                                   f"{(run.stderr or run.stdout).strip()[-2000:]}")
            replace_path(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        for name in os.listdir(folder):  # builds of older sources (a loaded one stays valid)
            if name.startswith("tqn_native_") and name.endswith(".so") and \
                    os.path.join(folder, name) != path:
                try:
                    os.unlink(os.path.join(folder, name))
                except OSError:
                    pass
    library = ctypes.CDLL(path)
    library.tqn_abi_version.restype = ctypes.c_int
    if library.tqn_abi_version() != ABI_VERSION:
        raise RuntimeError(f"{path}: ABI {library.tqn_abi_version()}, expected {ABI_VERSION}")
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    library.tqn_hamming.argtypes = [p, p, i64, i64, i64, p, ctypes.c_int]
    library.tqn_hamming.restype = None
    library.tqn_scan.argtypes = [p, p, i64, i64, i64, p, p, p, i64, i64, p, p, p, p, p, i64,
                                 p]
    library.tqn_scan.restype = ctypes.c_int
    library.tqn_adc.argtypes = [p, p, i64, i64, i64, i64, ctypes.c_int, p]
    library.tqn_adc.restype = ctypes.c_int
    library.tqn_euclid.argtypes = [p, p, i64, i64, i64, p, p, p, i64, p, p, p, i64, p]
    library.tqn_euclid.restype = ctypes.c_int
    library.tqn_force_generic.argtypes = [ctypes.c_int]
    library.tqn_force_generic.restype = ctypes.c_int
    return library, path


def _ptr(array):
    return None if array is None else array.ctypes.data


def hamming(q_words, db_words, out):
    """Fill out [nq, ndb] (uint8 / uint16 / uint32, C-contiguous) with Hamming distances."""
    q_words = np.ascontiguousarray(q_words, dtype=np.uint64)
    db_words = np.ascontiguousarray(db_words, dtype=np.uint64)
    assert out.flags.c_contiguous and out.shape == (len(q_words), len(db_words))
    lib().tqn_hamming(_ptr(q_words), _ptr(db_words), len(q_words), len(db_words),
                      q_words.shape[1], _ptr(out), out.itemsize)
    return out


def relevance_index(q_labels, db_labels):
    """The database grouped by label, for `scan`: ``(rel_idx, lo, hi)`` with the relevant
    items of query i (equal label) at rel_idx[lo[i]:hi[i]], rows in increasing order.
    Labels: any arrays numpy can sort and compare (int32 codes from tools.hashing.metrics)."""
    order = np.argsort(db_labels, kind="stable")  # stable: increasing rows within a label
    ordered = np.asarray(db_labels)[order]
    lo = np.searchsorted(ordered, q_labels, side="left")
    hi = np.searchsorted(ordered, q_labels, side="right")
    return order.astype(np.int64), lo.astype(np.int64), hi.astype(np.int64)


def scan(q_words, db_words, relevance, nbins, self_start=-1, ks=None):
    """Histograms ``(rel, tot)`` int64 [nq, nbins] and, when ks is not None, index-order
    statistics ``(ap_sum, mapr_sum, hits_k [nq, len(ks)])`` (else None); see tqn_scan.

    relevance: ``(rel_idx, lo, hi)`` of `relevance_index` for these queries (lo, hi of
    length nq). Raises ValueError when a distance exceeds nbins - 1.
    """
    q_words = np.ascontiguousarray(q_words, dtype=np.uint64)
    db_words = np.ascontiguousarray(db_words, dtype=np.uint64)
    rel_idx, lo, hi = (np.ascontiguousarray(a, dtype=np.int64) for a in relevance)
    nq = len(q_words)
    assert lo.shape == hi.shape == (nq,)
    rel = np.empty((nq, nbins), dtype=np.int64)
    tot = np.empty((nq, nbins), dtype=np.int64)
    stats = None
    ap_sum = mapr_sum = hits_k = ks_arr = None
    if ks is not None:
        ks_arr = np.ascontiguousarray(ks, dtype=np.int64)
        ap_sum, mapr_sum = np.empty(nq), np.empty(nq)
        hits_k = np.empty((nq, len(ks_arr)), dtype=np.int64)
        stats = (ap_sum, mapr_sum, hits_k)
    status = lib().tqn_scan(_ptr(q_words), _ptr(db_words), nq, len(db_words),
                            q_words.shape[1], _ptr(rel_idx), _ptr(lo), _ptr(hi), nbins,
                            self_start, _ptr(rel), _ptr(tot), _ptr(ap_sum), _ptr(mapr_sum),
                            _ptr(ks_arr), 0 if ks_arr is None else len(ks_arr), _ptr(hits_k))
    if status == -1:
        raise ValueError(f"a distance exceeds nbits={nbins - 1}: codes are wider than nbits")
    if status == -3:
        raise ValueError("the C index-order scan needs nbits < 65536")
    if status != 0:
        raise MemoryError("tqn_scan: out of memory")
    return rel, tot, stats


def adc(tables, codes, out):
    """Fill out [nq, ndb] (float32, C-contiguous) with ADC scores
    ``out[i, j] = sum_m tables[i, m, codes[j, m]]`` (see tqn_adc). tables: float32
    [nq, M, K]; codes: uint8 / uint16 [ndb, M], every value < K (not checked here)."""
    tables = np.ascontiguousarray(tables, dtype=np.float32)
    codes = np.ascontiguousarray(codes)
    nq, m, k = tables.shape
    assert codes.dtype in (np.uint8, np.uint16) and codes.ndim == 2 and codes.shape[1] == m
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == (nq, len(codes))
    if lib().tqn_adc(_ptr(tables), _ptr(codes), nq, len(codes), m, k, codes.itemsize,
                     _ptr(out)) != 0:
        raise ValueError(f"tqn_adc: unsupported code size {codes.itemsize}")
    return out


def euclid(q_feats, db_t, relevance, self_start, ks):
    """Index-order statistics ``(ap_sum, mapr_sum, hits_k [nq, len(ks)])`` of the ranking by
    squared Euclidean distance (ties by database index) of float32 queries [nq, dim] against
    the transposed float32 database db_t [dim, ndb]; see tqn_euclid. ks ascending."""
    q_feats = np.ascontiguousarray(q_feats, dtype=np.float32)
    db_t = np.ascontiguousarray(db_t, dtype=np.float32)
    rel_idx, lo, hi = (np.ascontiguousarray(a, dtype=np.int64) for a in relevance)
    nq = len(q_feats)
    ks_arr = np.ascontiguousarray(ks, dtype=np.int64)
    ap_sum, mapr_sum = np.empty(nq), np.empty(nq)
    hits_k = np.empty((nq, len(ks_arr)), dtype=np.int64)
    status = lib().tqn_euclid(_ptr(q_feats), _ptr(db_t), nq, db_t.shape[1], db_t.shape[0],
                              _ptr(rel_idx), _ptr(lo), _ptr(hi), self_start, _ptr(ap_sum),
                              _ptr(mapr_sum), _ptr(ks_arr), len(ks_arr), _ptr(hits_k))
    if status == -3:
        raise ValueError(f"tqn_euclid: a database of {db_t.shape[1]} items is too large for its "
                         "32-bit bucket indices (at most 268,435,453)")
    if status != 0:
        raise MemoryError("tqn_euclid: out of memory")
    return ap_sum, mapr_sum, hits_k
