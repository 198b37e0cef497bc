"""Benchmark of retrieval evaluation: this project's exact metrics against faiss-cpu, the
peers' argsort evaluation and the popcount lower bound, on the same random codes.

    nice python bench/bench_eval.py            # 10k queries x 50k database, 12/24/48/64 bits
    nice python bench/bench_eval.py --small    # 1k x 5k, a quick run
    python bench/bench_eval.py --sections ours popcount --bits 48

Writes bench/results/eval.json and the "eval" section of bench/results/README.md (see
bench/common.py for the format). Every measurement runs in a fresh interpreter, so its peak
memory (ru_maxrss, the whole process: interpreter, numpy, data) is its own. Times are CPU
time of that process (process_time: robust when other jobs share the machine; for faiss
with several threads it sums the threads) and wall time; ratios use CPU time.

Codes: 10 classes, a random prototype code per class, each bit of each item flipped with
probability 0.3 (random codes with class structure, so mAP is informative and ties are
realistic); labels = classes. Queries and database are drawn independently.

Sections (``--sections``):
  ours        tools.hashing.metrics.evaluate_codes: tie-aware + index-order mAP and mAP@R (ks=(),
              radii=()); the full default evaluation (P@k, R@k, hit@k for k in 1,5,10,20,100,
              precision within radius 2); and the pure-numpy fallback (no C compiler), timed
              on a subset of queries and extrapolated linearly.
  faiss       IndexBinaryFlat search with k = ndb (a full ranking, as mAP needs) and
              k = 1000, one thread (like ours) and, at 48 bits, all threads; search time
              only (results in batches of <= 256 MiB, discarded). mAP from a k = ndb search
              still needs the post-processing (labels of the ids, AP), timed separately on
              the first batch and checked equal to our index-order mAP.
  reference   a faithful re-implementation of DeepHash-pytorch's CalcTopMap (per query:
              Hamming distances as 0.5 (nbits - B1 . B2) on +-1 float codes, relevance from
              one-hot labels, np.argsort, cumulative precision), with topk = ndb; BLAS pinned
              to one thread; timed on a subset of queries and extrapolated linearly.
  popcount    the lower bound nq * ndb * ceil(nbits / 64) XOR + popcount operations at
              the single-core rate measured with a tight numpy loop (np.bitwise_xor and
              np.bitwise_count into preallocated buffers).
  euclidean   exact Euclidean evaluation of 48-d float32 features (10 Gaussian clusters):
              tools.hashing.metrics.euclidean_metrics with the C kernel (tqn_euclid), the
              numpy reference (subset, extrapolated; checked against ours) and faiss
              IndexFlatL2 search with k = ndb, one thread (subset, extrapolated).
  dqn_adc     DQN's retrieval by asymmetric quantizer distance (tools/hashing/pq.py) on product-
              quantized data: nq queries x ndb database vectors, D = 300, M = 6 codebooks of
              K = 256 centroids (48 bits), 10 Gaussian clusters = classes; codebooks trained
              by faiss's ProductQuantizer (IndexPQ.train) on the database, then loaded as
              OUR codebooks, and the database encoded by tools.hashing.pq.encode (its codes are
              checked equal to faiss's). Timed, one thread each: exact tie-aware +
              index-order mAP (evaluate_adc, ks=() and the default ks), top-k search with
              k = 1000 (tools.hashing.pq.search), the numpy fallback (subset, extrapolated); the naive
              brute force (decode the database, dense float32 scores with BLAS, np.argsort
              of every row, then AP / the first k; subset, extrapolated); and faiss IndexPQ
              search with k = 1000 holding the same codebooks and codes (its ids and scores
              checked against ours on the first 200 queries).

A subset of sections (``--sections``) is merged into the existing eval.json when its
configuration (nq, ndb, seed, --small) matches: the other sections keep their results and
their machine line, and the sections run now record their own machine and command.
"""
import argparse
import contextlib
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from bench import common  # noqa: E402

BENCH = "eval"
SCRIPT = os.path.abspath(__file__)
FULL = dict(nq=10_000, ndb=50_000, bits=[12, 24, 48, 64], reference_queries=500,
            numpy_queries=1000)
SMALL = dict(nq=1000, ndb=5000, bits=[12, 24, 48, 64], reference_queries=200,
             numpy_queries=None)
FULL_KS, FULL_RADII = (1, 5, 10, 20, 100), (2,)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
GOAL_BITS = 48


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------


def make_codes(bits, nq, ndb, seed, classes=10, flip=0.3):
    """Packed codes (big bit order, as on disk) and labels of queries and database."""
    from tools.hashing.codes import pack_bits
    rng = np.random.default_rng([seed, bits])
    prototypes = rng.random((classes, bits)) < 0.5

    def draw(n):
        labels = rng.integers(0, classes, n)
        bits_ = prototypes[labels] ^ (rng.random((n, bits)) < flip)
        return pack_bits(bits_), labels

    q, ql = draw(nq)
    db, dbl = draw(ndb)
    return q, ql, db, dbl


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


# ---------------------------------------------------------------------------------------
# workers (run in a fresh interpreter: python bench_eval.py --worker NAME ...)
# ---------------------------------------------------------------------------------------


def worker_ours(a):
    from tools.hashing import native as _native
    from tools.hashing import metrics as M
    from tools.hashing.codes import to_words
    q, ql, db, dbl = make_codes(a.bits, a.nq, a.ndb, a.seed)
    ks, radii = (FULL_KS, FULL_RADII) if a.variant == "full" else ((), ())

    def tie_aware_only(m):
        """Exact tie-aware mAP and mAP@R: histograms + closed forms, no index order."""
        rel, tot = M.hamming_histograms(to_words(q[:m], a.bits), ql[:m],
                                        to_words(db, a.bits), dbl, a.bits)
        return dict(map_tie_aware=float(np.mean(M.average_precision_tie_aware(rel, tot)[0])),
                    map_at_r_tie_aware=float(np.mean(M.map_at_r_tie_aware(rel, tot))))

    def evaluate(m):
        if a.variant == "tie":
            return tie_aware_only(m)
        return M.evaluate_codes(q[:m], ql[:m], db, dbl, a.bits, ks=ks, radii=radii,
                                threads=a.threads)

    ctx = _native.disabled() if a.backend == "numpy" else contextlib.nullcontext()
    with ctx:
        status = _native.status()
        if a.backend == "native" and status["backend"] != "native":
            raise RuntimeError(f"C kernels unavailable: {status['reason']}")
        evaluate(2)  # warm-up
        n = min(a.timed or a.nq, a.nq)
        rss_before = common.peak_rss_mib()
        out, wall, cpu = timed(lambda: evaluate(n))
    scale = a.nq / n
    keep = ("map_tie_aware", "map_index_order", "map_at_r_tie_aware", "map_at_r_index_order",
            "precision_at_100_tie_aware", "precision_radius2")
    return dict(cpu_s=cpu * scale, wall_s=wall * scale, timed_queries=n,
                extrapolated=n < a.nq, rss_before_mib=rss_before, threads=a.threads,
                rss_peak_mib=common.peak_rss_mib(), backend=status["backend"],
                metrics={k: out[k] for k in keep if k in out})


def worker_faiss(a):
    import faiss
    from tools.hashing import metrics as M
    from tools.hashing import binary_index as RT
    faiss.omp_set_num_threads(a.threads)
    q, ql, db, dbl = make_codes(a.bits, a.nq, a.ndb, a.seed)
    index, build_wall, build_cpu = timed(lambda: RT.build_index(db, a.bits, "flat"))
    codes = RT.to_faiss_codes(q, a.bits)
    k = min(a.k, a.ndb)
    n = min(a.timed or a.nq, a.nq)
    batch = max(1, min(n, (256 << 20) // (k * 12)))  # int32 distances + int64 ids
    index.search(codes[:1], k)  # warm-up
    rss_before = common.peak_rss_mib()

    def run():
        for s in range(0, n, batch):
            index.search(codes[s:s + batch], k)

    _, wall, cpu = timed(run)
    scale = a.nq / n
    out = dict(cpu_s=cpu * scale, wall_s=wall * scale, timed_queries=n, extrapolated=n < a.nq,
               k=k, threads=a.threads, batch=batch, build_cpu_s=build_cpu,
               rss_before_mib=rss_before, rss_peak_mib=common.peak_rss_mib())
    # checks and post-processing, outside the timing, on the first batch (<= 200 queries)
    m = min(batch, n, 200)
    dist, ids = index.search(codes[:m], k)
    exact = RT.exact_search(q[:m], db, a.bits, k)
    out["ids_equal_exact_ranking"] = bool(np.array_equal(ids, exact[1])
                                          and np.array_equal(dist, exact[0]))
    if k == a.ndb:
        def post():
            ranked_rel = dbl[ids] == ql[:m, None]
            return M.average_precision_index_order(ranked_rel)[0]
        ap, post_wall, post_cpu = timed(post)
        ours = M.evaluate_codes(q[:m], ql[:m], db, dbl, a.bits, ks=(), radii=())
        out["map_from_faiss"] = float(np.mean(ap))
        out["map_index_order_ours"] = ours["map_index_order"]
        out["postprocess_cpu_s"] = post_cpu * a.nq / m
        out["postprocess_wall_s"] = post_wall * a.nq / m
    return out


def calc_hamming_dist(B1, B2):
    """DeepHash-pytorch utils/tools.py CalcHammingDist (+-1 codes)."""
    q = B2.shape[1]
    return 0.5 * (q - np.dot(B1, B2.transpose()))


def calc_top_map(rB, qB, retrievalL, queryL, topk):
    """DeepHash-pytorch utils/tools.py CalcTopMap, re-implemented line by line (without the
    tqdm progress bar)."""
    num_query = queryL.shape[0]
    topkmap = 0
    for it in range(num_query):
        gnd = (np.dot(queryL[it, :], retrievalL.transpose()) > 0).astype(np.float32)
        hamm = calc_hamming_dist(qB[it, :], rB)
        ind = np.argsort(hamm)
        gnd = gnd[ind]
        tgnd = gnd[0:topk]
        tsum = np.sum(tgnd).astype(int)
        if tsum == 0:
            continue
        count = np.linspace(1, tsum, tsum)
        tindex = np.asarray(np.where(tgnd == 1)) + 1.0
        topkmap_ = np.mean(count / tindex)
        topkmap = topkmap + topkmap_
    return topkmap / num_query


def worker_reference(a):
    from tools.hashing import metrics as M
    from tools.hashing.codes import unpack_bits
    q, ql, db, dbl = make_codes(a.bits, a.nq, a.ndb, a.seed)
    n = min(a.timed or a.nq, a.nq)
    # the peers' inputs: +-1 float32 codes (torch.sign(...).numpy()) and one-hot labels
    qB = np.where(unpack_bits(q[:n], a.bits), 1.0, -1.0).astype(np.float32)
    rB = np.where(unpack_bits(db, a.bits), 1.0, -1.0).astype(np.float32)
    classes = int(max(ql.max(), dbl.max())) + 1
    qL, rL = np.eye(classes, dtype=np.int64)[ql[:n]], np.eye(classes, dtype=np.int64)[dbl]
    calc_top_map(rB, qB[:2], rL, qL[:2], a.ndb)  # warm-up
    rss_before = common.peak_rss_mib()
    value, wall, cpu = timed(lambda: calc_top_map(rB, qB, rL, qL, a.ndb))
    ours = M.evaluate_codes(q[:n], ql[:n], db, dbl, a.bits, ks=(), radii=())
    scale = a.nq / n
    return dict(cpu_s=cpu * scale, wall_s=wall * scale, timed_queries=n, extrapolated=n < a.nq,
                rss_before_mib=rss_before, rss_peak_mib=common.peak_rss_mib(),
                map=float(value), map_tie_aware_ours=ours["map_tie_aware"],
                map_index_order_ours=ours["map_index_order"])


def worker_popcount(a):
    """Single-core XOR + popcount rate of a tight numpy loop over one 64-bit word."""
    rng = np.random.default_rng(a.seed)
    db = rng.integers(0, np.iinfo(np.uint64).max, a.ndb, dtype=np.uint64, endpoint=True)
    q = rng.integers(0, np.iinfo(np.uint64).max, a.nq, dtype=np.uint64, endpoint=True)
    xor = np.empty(a.ndb, dtype=np.uint64)
    count = np.empty(a.ndb, dtype=np.uint8)

    def run():
        for i in range(len(q)):
            np.bitwise_xor(db, q[i], out=xor)
            np.bitwise_count(xor, out=count)

    best = None
    for _ in range(3):
        _, wall, cpu = timed(run)
        best = cpu if best is None else min(best, cpu)
    return dict(ops_per_s=len(q) * a.ndb / best, timed_pairs=len(q) * a.ndb, cpu_s=best)


def make_pq_data(cfg, path):
    """Clustered float vectors, faiss-trained codebooks and our codes, saved to path (.npz)."""
    from tools.hashing import pq
    p = cfg["pq"]
    rng = np.random.default_rng([cfg["seed"], 48, 300])
    centers = rng.standard_normal((p["classes"], p["dim"])) * p["spread"]

    def draw(n):
        labels = rng.integers(0, p["classes"], n)
        return (centers[labels] + rng.standard_normal((n, p["dim"]))).astype(np.float32), labels

    q, ql = draw(cfg["nq"])
    db, dbl = draw(cfg["ndb"])
    info = {}
    try:
        import faiss
        faiss.omp_set_num_threads(1)
        index = faiss.IndexPQ(p["dim"], p["m"], int(np.log2(p["k"])), faiss.METRIC_INNER_PRODUCT)
        _, wall, cpu = timed(lambda: index.train(db))
        codebooks = faiss.vector_to_array(index.pq.centroids).reshape(
            p["m"], p["k"], p["dim"] // p["m"])
        codes = pq.encode(db, codebooks)
        info.update(trainer="faiss IndexPQ.train (k-means per subspace)", train_cpu_s=cpu,
                    codes_equal_faiss=float(np.mean(index.pq.compute_codes(db) == codes)))
    except ImportError:  # scipy's k-means per subspace
        from scipy.cluster.vq import kmeans2
        d = p["dim"] // p["m"]
        codebooks = np.stack([kmeans2(db[:, m * d:(m + 1) * d].astype(np.float64), p["k"],
                                      seed=cfg["seed"], minit="++")[0]
                              for m in range(p["m"])]).astype(np.float32)
        codes = pq.encode(db, codebooks)
        info.update(trainer="scipy kmeans2 per subspace")
    info["distinct_codes"] = int(len(np.unique(codes, axis=0)))
    np.savez(path, q=q, ql=ql, db=db, dbl=dbl, codebooks=codebooks, codes=codes)
    return info


def worker_adc(a):
    """One timing of the dqn_adc section (a.variant), on the data saved by make_pq_data (run
    by the variant "data" in a worker of its own: Linux keeps a process's peak RSS across
    fork + exec, so the parent must stay small for the workers' peaks to be their own)."""
    from tools.hashing import native as _native
    from tools.hashing import metrics as M
    from tools.hashing import pq
    if a.variant == "data":
        cfg = json.loads(a.config)
        return make_pq_data(cfg, a.data)
    data = np.load(a.data)
    q, ql, dbl, cb, codes = (data[k] for k in ("q", "ql", "dbl", "codebooks", "codes"))
    n = min(a.timed or a.nq, a.nq)
    k = a.k or 1000
    out = {}
    if a.variant in ("eval", "eval_full", "numpy_eval"):
        ks = M.DEFAULT_KS if a.variant == "eval_full" else ()
        ctx = _native.disabled() if a.variant == "numpy_eval" else contextlib.nullcontext()
        with ctx:
            out["backend"] = _native.status()["backend"]
            pq.evaluate_adc(q[:2], ql[:2], codes, dbl, cb, ks=ks)  # warm-up (C build)
            rss_before = common.peak_rss_mib()
            res, wall, cpu = timed(lambda: pq.evaluate_adc(q[:n], ql[:n], codes, dbl, cb, ks=ks))
        out["metrics"] = {key: res[key] for key in ("map_tie_aware", "map_index_order",
                                                     "map_at_r_tie_aware",
                                                     "precision_at_100_tie_aware") if key in res}
    elif a.variant == "search":
        pq.search(q[:2], codes, cb, k)
        rss_before = common.peak_rss_mib()
        (_, ids), wall, cpu = timed(lambda: pq.search(q[:n], codes, cb, k))
    elif a.variant in ("brute_map", "brute_topk"):
        def brute():
            x = pq.decode(codes, cb)  # decode the database, then dense scores + argsort
            step = max(1, (1 << 22) // len(x))
            total, found = 0.0, []
            for s in range(0, n, step):
                e = min(s + step, n)
                scores = q[s:e] @ x.T
                order = np.argsort(-scores, axis=1)
                if a.variant == "brute_topk":
                    found.append(order[:, :k])
                    continue
                rel = dbl[order] == ql[s:e, None]
                hits = np.cumsum(rel, axis=1)
                prec = hits / np.arange(1, rel.shape[1] + 1)
                r = rel.sum(axis=1)
                total += float(np.sum(np.where(r > 0, (prec * rel).sum(axis=1) / np.maximum(r, 1),
                                               0.0)))
            return total / n if a.variant == "brute_map" else np.concatenate(found)

        brute_out = None
        rss_before = common.peak_rss_mib()
        brute_out, wall, cpu = timed(brute)
        if a.variant == "brute_map":
            ours = pq.evaluate_adc(q[:n], ql[:n], codes, dbl, cb, ks=())
            out.update(map=brute_out, map_tie_aware_ours=ours["map_tie_aware"],
                       map_index_order_ours=ours["map_index_order"])
        else:
            _, ids = pq.search(q[:n], codes, cb, k)
            out["ids_equal_ours"] = float(np.mean(brute_out == ids))
    elif a.variant == "faiss_topk":
        import faiss
        faiss.omp_set_num_threads(a.threads)
        index = faiss.IndexPQ(q.shape[1], cb.shape[0], int(np.log2(cb.shape[1])),
                              faiss.METRIC_INNER_PRODUCT)
        faiss.copy_array_to_vector(cb.ravel(), index.pq.centroids)
        index.is_trained = True
        index.add_sa_codes(codes)  # our codes, as they are
        index.search(q[:2], k)
        rss_before = common.peak_rss_mib()
        _, wall, cpu = timed(lambda: index.search(q[:n], k))
        m = min(200, n)
        fd, fi = index.search(q[:m], k)
        s, i = pq.search(q[:m], codes, cb, k)
        out.update(ids_equal_ours=float(np.mean(fi == i)),
                   score_max_abs_diff=float(np.max(np.abs(fd - s))),
                   threads=a.threads)
    else:
        raise ValueError(a.variant)
    scale = a.nq / n
    out.update(cpu_s=cpu * scale, wall_s=wall * scale, timed_queries=n, extrapolated=n < a.nq,
               rss_before_mib=rss_before, rss_peak_mib=common.peak_rss_mib(), k=k)
    return out


def make_features(nq, ndb, seed, dim=48, classes=10, spread=1.5):
    """float32 features [n, dim] and labels: 10 Gaussian clusters (unit-normal centres,
    noise sd `spread`), queries and database drawn independently."""
    rng = np.random.default_rng([seed, dim, 7])
    centres = rng.normal(size=(classes, dim))

    def draw(n):
        labels = rng.integers(0, classes, n)
        return (centres[labels] + rng.normal(scale=spread, size=(n, dim))).astype(
            np.float32), labels

    q, ql = draw(nq)
    db, dbl = draw(ndb)
    return q, ql, db, dbl


def worker_euclid(a):
    """One timing of the euclidean section (a.variant): ours = euclidean_metrics with the C
    kernel (default ks), numpy = the same with native.disabled() (subset, extrapolated, its
    metrics checked against ours on the same queries), faiss = IndexFlatL2 search with
    k = ndb, one thread (subset, extrapolated; search only)."""
    from tools.hashing import native as _native
    from tools.hashing import metrics as M
    q, ql, db, dbl = make_features(a.nq, a.ndb, a.seed)
    n = min(a.timed or a.nq, a.nq)
    if a.variant == "faiss":
        import faiss
        faiss.omp_set_num_threads(1)
        index = faiss.IndexFlatL2(q.shape[1])
        index.add(db)
        k = a.ndb
        batch = max(1, min(n, (256 << 20) // (k * 12)))
        index.search(q[:1], k)  # warm-up
        rss_before = common.peak_rss_mib()

        def run():
            for s in range(0, n, batch):
                index.search(q[s:s + batch], k)

        _, wall, cpu = timed(run)
        return dict(cpu_s=cpu * a.nq / n, wall_s=wall * a.nq / n, timed_queries=n,
                    extrapolated=n < a.nq, k=k, threads=1, rss_before_mib=rss_before,
                    rss_peak_mib=common.peak_rss_mib())
    ctx = _native.disabled() if a.variant == "numpy" else contextlib.nullcontext()
    with ctx:
        status = _native.status()
        if a.variant == "ours" and status["backend"] != "native":
            raise RuntimeError(f"C kernels unavailable: {status['reason']}")
        M.euclidean_metrics(q[:2], ql[:2], db, dbl)  # warm-up
        rss_before = common.peak_rss_mib()
        out, wall, cpu = timed(lambda: M.euclidean_metrics(q[:n], ql[:n], db, dbl))
    res = dict(cpu_s=cpu * a.nq / n, wall_s=wall * a.nq / n, timed_queries=n,
               extrapolated=n < a.nq, rss_before_mib=rss_before,
               rss_peak_mib=common.peak_rss_mib(), backend=status["backend"],
               metrics={k: float(np.mean(out[k])) for k in
                        ("ap", "map_at_r", "precision_at_100", "top1")})
    if a.variant == "numpy":  # against the C kernel on the same queries
        ours = M.euclidean_metrics(q[:n], ql[:n], db, dbl)
        exact = [k for k in out if k not in ("ap", "map_at_r")]
        res["counts_equal_ours"] = all(np.array_equal(out[k], ours[k]) for k in exact)
        res["ap_max_abs_diff"] = float(max(np.max(np.abs(out[k] - ours[k]))
                                           for k in ("ap", "map_at_r")))
    return res


WORKERS = dict(euclid=worker_euclid, ours=worker_ours, faiss=worker_faiss, reference=worker_reference,
               popcount=worker_popcount, adc=worker_adc)


# ---------------------------------------------------------------------------------------
# sections (parent process)
# ---------------------------------------------------------------------------------------


def _run(name, cfg, bits, env=None, **extra):
    args = ["--worker", name, "--bits", str(bits), "--nq", str(cfg["nq"]),
            "--ndb", str(cfg["ndb"]), "--seed", str(cfg["seed"])]
    for key, value in extra.items():
        if value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    print(f"  {name} {bits} bits {extra}", file=sys.stderr, flush=True)
    return common.run_worker(SCRIPT, args, env_extra=env)


def _cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def section_ours(cfg):
    out = {}
    for bits in cfg["bits"]:
        out[str(bits)] = dict(
            tie=_run("ours", cfg, bits, ONE_THREAD, variant="tie", backend="native"),
            map=_run("ours", cfg, bits, ONE_THREAD, variant="map", backend="native"),
            full=_run("ours", cfg, bits, ONE_THREAD, variant="full", backend="native"),
            numpy_map=_run("ours", cfg, bits, ONE_THREAD, variant="map", backend="numpy",
                           timed=cfg["numpy_queries"]))
        if bits == GOAL_BITS and _cores() > 1:
            out[str(bits)]["map_threads"] = _run("ours", cfg, bits, ONE_THREAD, variant="map",
                                                 backend="native", threads=_cores())
    return dict(status="done", by_bits=out)


def section_faiss(cfg):
    out = {}
    cores = _cores()
    for bits in cfg["bits"]:
        runs = {}
        for k in (cfg["ndb"], 1000):
            runs[f"k{k}_1thread"] = _run("faiss", cfg, bits, k=k, threads=1,
                                         timed=cfg["faiss_queries"])
            if bits == GOAL_BITS and cores > 1:
                runs[f"k{k}_{cores}threads"] = _run("faiss", cfg, bits, k=k, threads=cores,
                                                    timed=cfg["faiss_queries"])
        out[str(bits)] = runs
    return dict(status="done", by_bits=out)


def section_reference(cfg):
    out = {str(bits): _run("reference", cfg, bits, ONE_THREAD, timed=cfg["reference_queries"])
           for bits in cfg["bits"]}
    return dict(status="done", by_bits=out)


def section_popcount(cfg):
    rate = common.run_worker(SCRIPT, ["--worker", "popcount", "--bits", "64", "--nq", "200",
                                      "--ndb", str(cfg["ndb"]), "--seed", str(cfg["seed"])],
                             env_extra=ONE_THREAD)
    bound = {str(bits): cfg["nq"] * cfg["ndb"] * -(-bits // 64) / rate["ops_per_s"]
             for bits in cfg["bits"]}
    return dict(status="done", rate=rate, lower_bound_s=bound)


def section_dqn_adc(cfg):
    import tempfile
    p = cfg["pq"]
    folder = tempfile.mkdtemp(prefix="bench_adc_")
    path = os.path.join(folder, "data.npz")
    try:
        print("  dqn_adc: data, codebooks, codes", file=sys.stderr, flush=True)
        info = common.run_worker(SCRIPT, ["--worker", "adc", "--variant", "data", "--data", path,
                                          "--config", json.dumps(cfg), "--bits", "48"],
                                 env_extra=ONE_THREAD)
        runs = {}
        plan = [("eval", {}), ("eval_full", {}), ("search", {}),
                ("numpy_eval", dict(timed=cfg["numpy_queries"])),
                ("brute_map", dict(timed=p["brute_queries"])),
                ("brute_topk", dict(timed=p["brute_queries"]))]
        for variant, extra in plan:
            runs[variant] = _run("adc", cfg, 48, ONE_THREAD, variant=variant, data=path,
                                 **extra)
        try:
            import faiss  # noqa: F401
            runs["faiss_topk"] = _run("adc", cfg, 48, ONE_THREAD, variant="faiss_topk",
                                      data=path, threads=1)
        except ImportError:
            pass
    finally:
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)
    return dict(status="done", data=dict(p, **info), runs=runs)


def section_euclidean(cfg):
    e = cfg.get("euclid", EUCLID)
    runs = dict(ours=_run("euclid", cfg, 48, ONE_THREAD, variant="ours"),
                numpy=_run("euclid", cfg, 48, ONE_THREAD, variant="numpy",
                           timed=e["numpy_queries"]))
    try:
        import faiss  # noqa: F401
        runs["faiss"] = _run("euclid", cfg, 48, ONE_THREAD, variant="faiss",
                             timed=e["faiss_queries"])
    except ImportError:
        pass
    return dict(status="done", data=dict(dim=48, classes=10, spread=1.5), runs=runs)


def render_euclidean(result):
    sec = result["sections"].get("euclidean", {})
    if sec.get("status") != "done":
        return []
    cfg, runs = result["config"], sec["runs"]
    m = sec.get("machine", result["machine"])
    base = runs.get("ours")
    lines = [f"### Real-valued features: exact Euclidean evaluation ({cfg['nq']:,} queries x "
             f"{cfg['ndb']:,} database, {sec['data']['dim']}-d float32)", ""]
    if "machine" in sec:
        lines += [f"Machine: {common.machine_line(m)}. Command: `{sec['command']}`.", ""]
    lines += [f"Data: {sec['data']['classes']} Gaussian clusters (= classes, unit-normal centres, "
              f"noise sd {sec['data']['spread']}). Ranking by squared Euclidean distance "
              "(double sums of (q_k - x_k)^2 in coordinate order, ties by index), one thread "
              "each, CPU seconds (ratios use them).", "",
              "| method | CPU s | wall s | x ours | peak RSS MiB | note |",
              "|---|---:|---:|---:|---:|---|"]

    def row(name, r, note=""):
        _ratio_row(lines, name, r, base, 1, note)

    if base:
        mt = base["metrics"]
        row("ours: euclidean_metrics, C kernel tqn_euclid (mAP, mAP@R, P/R/hit@1..100)", base,
            f"mAP {mt['ap']:.4f}, mAP@R {mt['map_at_r']:.4f}")
    r = runs.get("numpy")
    if r:
        row("numpy reference (same distances, stable argsort)", r,
            ("counts = ours" if r["counts_equal_ours"] else "counts DIFFER from ours") +
            f", AP within {r['ap_max_abs_diff']:.1g}")
    row(f"faiss IndexFlatL2 search, k = {runs['faiss']['k']:,}, 1 thread" if
        runs.get("faiss") else "", runs.get("faiss"),
        "search only (no metrics)")
    lines.append("")
    if base:
        mark = "met" if base["cpu_s"] <= 5 else "NOT met"
        lines += [f"- **{mark}**: exact real-valued mAP (and the other metrics) for "
                  f"{cfg['nq']:,} x {cfg['ndb']:,} x 48 in <= 5 s on one core: "
                  f"{base['cpu_s']:.3g} s CPU", ""]
    return lines


def _pending(needs, plan):
    return lambda cfg: dict(status="pending", needs=needs, plan=plan)


SECTIONS = {
    "ours": section_ours,
    "faiss": section_faiss,
    "reference": section_reference,
    "popcount": section_popcount,
    # The loss and data layers' shares of a training iteration are measured by
    # bench/bench_training.py (`caffe time`). A hook for a later part:
    "dqn_adc": section_dqn_adc,
    "euclidean": section_euclidean,
}
EUCLID = dict(numpy_queries=300, faiss_queries=500)
PQ = dict(dim=300, m=6, k=256, classes=10, spread=0.35, brute_queries=1000)


# ---------------------------------------------------------------------------------------
# goals and report
# ---------------------------------------------------------------------------------------


def goals(sections, cfg):
    """The issue's goals at GOAL_BITS, each for exact tie-aware mAP alone (what the goal
    names; with mAP@R) and for tie-aware + index-order mAP together (evaluate_codes)."""
    b = str(GOAL_BITS)
    out = []
    ours_all = sections.get("ours", {}).get("by_bits", {}).get(b, {})
    faiss = sections.get("faiss", {}).get("by_bits", {}).get(b, {})
    ref = sections.get("reference", {}).get("by_bits", {}).get(b)
    size = f"{cfg['nq']:,} x {cfg['ndb']:,} at {GOAL_BITS} bits"
    full = faiss.get(f"k{cfg['ndb']}_1thread")
    variants = [("tie", "exact tie-aware mAP (+ mAP@R)"),
                ("map", "tie-aware + index-order mAP (+ mAP@R), evaluate_codes")]
    for key, what in variants:
        ours = ours_all.get(key)
        if not ours:
            continue
        if full:
            out.append(dict(
                goal=f"{what} for {size} in no more time than faiss's k = {cfg['ndb']:,} search",
                met=ours["cpu_s"] <= full["cpu_s"],
                detail=f"{ours['cpu_s']:.3g} s vs {full['cpu_s']:.3g} s CPU, one thread each: "
                       f"faiss takes {full['cpu_s'] / ours['cpu_s']:.0f}x longer"))
        if ref:
            ratio = ref["cpu_s"] / ours["cpu_s"]
            out.append(dict(
                goal=f"{what}: at least 50x faster than the argsort reference", met=ratio >= 50,
                detail=f"{ratio:.0f}x ({ref['cpu_s']:.3g} s CPU extrapolated from "
                       f"{ref['timed_queries']} queries vs {ours['cpu_s']:.3g} s CPU)"))
        out.append(dict(goal=f"{what}: peak memory under 1 GiB",
                        met=ours["rss_peak_mib"] < 1024,
                        detail=f"peak RSS of the whole process {ours['rss_peak_mib']:.0f} MiB "
                               f"({ours['rss_before_mib']:.0f} MiB before the evaluation: "
                               f"interpreter, libraries, codes)"))
    return out


def _ratio_row(lines, name, r, base, digits, note=""):
    """A table row of a timed run `r` (CPU s, wall s, ratio to `base`, peak RSS, note with the
    extrapolation said); nothing when the run is absent."""
    if not r:
        return
    ratio = r["cpu_s"] / base["cpu_s"] if base else None
    if r.get("extrapolated"):
        note = (note + "; " if note else "") + f"extrapolated from {r['timed_queries']:,} queries"
    lines.append(f"| {name} | {_sec(r['cpu_s'])} | {_sec(r.get('wall_s'))} | "
                 f"{_fmt(ratio, digits)} | {_fmt(r.get('rss_peak_mib'), 0)} | {note} |")


def _fmt(x, digits=2):
    return "–" if x is None else f"{x:.{digits}f}"


def _sec(x):
    """Seconds with 3 significant digits (at least one decimal)."""
    if x is None:
        return "–"
    return f"{x:.1f}" if x >= 100 else f"{x:.3g}"


def render(result):
    cfg, sections, m = result["config"], result["sections"], result["machine"]
    lines = [f"## Evaluation: {cfg['nq']:,} queries x {cfg['ndb']:,} database codes, "
             f"{cfg['classes']} classes" + (" (--small)" if cfg["small"] else ""),
             "", f"Machine: {common.machine_line(m)}.", "",
             f"Command: `{result['command']}`", "",
             "CPU seconds of one process (ratios use them; wall seconds beside them), peak "
             "RSS of that process. Lower bound: popcount at the measured numpy rate.", ""]
    ours_s = sections.get("ours", {}).get("by_bits", {})
    faiss_s = sections.get("faiss", {}).get("by_bits", {})
    ref_s = sections.get("reference", {}).get("by_bits", {})
    pop = sections.get("popcount", {})
    for bits in cfg["bits"]:
        b = str(bits)
        base = ours_s.get(b, {}).get("map")
        rows = []

        def row(name, r, note=""):
            if not r:
                return
            ratio = r["cpu_s"] / base["cpu_s"] if base else None
            rows.append(f"| {name} | {_sec(r['cpu_s'])} | {_sec(r.get('wall_s'))} | "
                        f"{_fmt(ratio, 1)} | {_fmt(r.get('rss_peak_mib'), 0)} | {note} |")

        o = ours_s.get(b, {})
        if o:
            mt = o["map"]["metrics"]
            if o.get("tie"):
                row("ours: exact tie-aware mAP + mAP@R (C histograms + closed forms)", o["tie"],
                    f"mAP {o['tie']['metrics']['map_tie_aware']:.4f}")
            row("ours: tie-aware + index-order mAP, mAP@R (evaluate_codes)", o["map"],
                f"mAP {mt['map_tie_aware']:.4f} tie-aware, {mt['map_index_order']:.4f} index order")
            if o.get("map_threads"):
                row(f"ours: same, {o['map_threads']['threads']} threads", o["map_threads"],
                    "CPU s summed over threads")
            row("ours: full evaluate_codes (+ P/R/hit@1..100, P@r<=2)", o.get("full"))
            np_ = o.get("numpy_map")
            row("ours, pure-numpy fallback (no C compiler)", np_,
                f"extrapolated from {np_['timed_queries']:,} queries"
                if np_ and np_["extrapolated"] else "")
        for key, r in sorted(faiss_s.get(b, {}).items(),
                             key=lambda kv: (-kv[1]["k"], kv[1]["threads"])):
            note = "search only; " + ("ids = our ranking" if r["ids_equal_exact_ranking"]
                                      else "ids DIFFER from our ranking")
            if "map_from_faiss" in r:
                note += (f"; + {_sec(r['postprocess_cpu_s'])} s CPU to get mAP "
                         f"({r['map_from_faiss']:.6f} = ours {r['map_index_order_ours']:.6f} on "
                         f"{min(r['batch'], 200)} queries)")
            if r["extrapolated"]:
                note += f"; extrapolated from {r['timed_queries']:,} queries"
            row(f"faiss IndexBinaryFlat k={r['k']:,}, {r['threads']} thread"
                f"{'s' if r['threads'] > 1 else ''}", r, note)
        r = ref_s.get(b)
        if r:
            row("argsort reference (DeepHash-pytorch CalcTopMap)", r,
                f"extrapolated from {r['timed_queries']:,} queries; its mAP "
                f"{r['map']:.4f} (ties in quicksort order)")
        if pop.get("status") == "done":
            t = pop["lower_bound_s"][b]
            rows.append(f"| popcount lower bound ({-(-bits // 64)} word x {cfg['nq']:,} x "
                        f"{cfg['ndb']:,} at {pop['rate']['ops_per_s'] / 1e9:.2f} G/s) | "
                        f"{_sec(t)} | – | {_fmt(t / base['cpu_s'] if base else None, 2)} | – | "
                        f"XOR + popcount only |")
        lines += [f"### {bits} bits", "",
                  "| method | CPU s | wall s | x ours | peak RSS MiB | note |",
                  "|---|---:|---:|---:|---:|---|", *rows, ""]
    lines += render_dqn_adc(result)
    lines += render_euclidean(result)
    if result["goals"]:
        lines += ["### Goals", ""]
        for g in result["goals"]:
            mark = {True: "met", False: "NOT met", None: "n/a"}[g["met"]]
            lines.append(f"- **{mark}**: {g['goal']}: {g['detail']}")
        lines.append("")
    pending = [(k, v) for k, v in sections.items() if v.get("status") == "pending"]
    if pending:
        lines += ["### Pending sections", ""]
        for k, v in pending:
            lines.append(f"- `{k}`: {v['plan']} (needs {v['needs']})")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------


def _merge_previous(result, ran):
    """The previous eval.json with the sections run now replaced (each recording its own
    machine and command), when its configuration matches; else `result` alone."""
    path = os.path.join(common.RESULTS, f"{BENCH}.json")
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return result
    same = ("nq", "ndb", "seed", "small")
    if old.get("schema") != common.SCHEMA or any(old["config"].get(k) != result["config"][k]
                                                 for k in same):
        print(f"{path}: another configuration; written without its other sections",
              file=sys.stderr)
        return result
    for name in ran:
        section = dict(result["sections"][name])
        section.update(machine=result["machine"], command=result["command"])
        old["sections"][name] = section
    for key, value in result["config"].items():
        old["config"].setdefault(key, value)
    old["config"]["pq"] = result["config"]["pq"]
    return old


def render_dqn_adc(result):
    sec = result["sections"].get("dqn_adc", {})
    if sec.get("status") != "done":
        return []
    cfg, p, runs = result["config"], sec["data"], sec["runs"]
    m = sec.get("machine", result["machine"])
    base = runs.get("eval")
    lines = [f"### DQN: ADC search of product-quantized codes ({cfg['nq']:,} queries x "
             f"{cfg['ndb']:,} database, D = {p['dim']}, M = {p['m']}, K = {p['k']}: "
             f"{p['m'] * int(np.log2(p['k']))} bits)", ""]
    if "machine" in sec:
        lines += [f"Machine: {common.machine_line(m)}. Command: `{sec['command']}`.", ""]
    lines += [f"Data: {p['classes']} Gaussian clusters (= classes, centres x {p['spread']}, unit "
              f"noise); codebooks: {p['trainer']}, loaded as ours; database encoded by "
              f"tools.hashing.pq.encode ({p['distinct_codes']:,} distinct codes"
              + (f", {p['codes_equal_faiss']:.4%} equal to faiss's codes" if
                 "codes_equal_faiss" in p else "") + "). Ranking by DQN's AQD (inner "
              "product), one thread each, CPU seconds (ratios use them).", "",
              "| method | CPU s | wall s | x ours (mAP) | peak RSS MiB | note |",
              "|---|---:|---:|---:|---:|---|"]

    def row(name, r, note=""):
        _ratio_row(lines, name, r, base, 2, note)

    if base:
        mt = base["metrics"]
        row("ours: exact tie-aware + index-order mAP, mAP@R (evaluate_adc, C lookups)", base,
            f"mAP {mt['map_tie_aware']:.4f} tie-aware, {mt['map_index_order']:.4f} index order")
    row("ours: full evaluate_adc (+ P/R/hit@1..100)", runs.get("eval_full"))
    row("ours, pure-numpy fallback (no C compiler), mAP", runs.get("numpy_eval"))
    r = runs.get("brute_map")
    if r:
        row("brute force mAP: decode, dense scores (BLAS), argsort per row, AP", r,
            f"its mAP {r['map']:.6f} (ties in quicksort order) = ours {r['map_index_order_ours']:.6f} "
            f"index order, {r['map_tie_aware_ours']:.6f} tie-aware on the same "
            f"{r['timed_queries']:,} queries")
    row(f"ours: top-k search, k = {runs['search']['k']:,} (tools.hashing.pq.search)" if
        runs.get("search") else "", runs.get("search"))
    r = runs.get("brute_topk")
    if r:
        row(f"brute force top-k: decode, dense scores, argsort, first {r['k']:,}", r,
            f"{r['ids_equal_ours']:.4%} of ids = ours")
    r = runs.get("faiss_topk")
    if r:
        row(f"faiss IndexPQ search, k = {r['k']:,}, {r['threads']} thread (same codebooks "
            f"and codes)", r, f"{r['ids_equal_ours']:.4%} of ids = ours, scores within "
            f"{r['score_max_abs_diff']:.2g} (200 queries)")
    ham = result["sections"].get("ours", {}).get("by_bits", {}).get("48", {}).get("map")
    if ham:
        row("for scale: Hamming tie-aware + index-order mAP at 48 bits (evaluate_codes, "
            "section above)", ham, "binary codes, not PQ")
    lines.append("")
    s, ft, bt, bm = (runs.get(k) for k in ("search", "faiss_topk", "brute_topk", "brute_map"))
    if base and bm:
        lines.append(f"- exact mAP: ours {bm['cpu_s'] / base['cpu_s']:.1f}x faster than the "
                     f"brute force")
    if s and bt:
        lines.append(f"- top-{s['k']:,}: ours {bt['cpu_s'] / s['cpu_s']:.1f}x faster than the "
                     f"brute force" + (f"; faiss IndexPQ takes {ft['cpu_s'] / s['cpu_s']:.2f}x "
                                       f"our time" if ft else ""))
    lines.append("")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="1k x 5k codes, a quick run")
    ap.add_argument("--bits", type=int, nargs="+")
    ap.add_argument("--nq", type=int)
    ap.add_argument("--ndb", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference-queries", type=int, help="queries timed for the reference")
    ap.add_argument("--numpy-queries", type=int, help="queries timed for the numpy fallback")
    ap.add_argument("--faiss-queries", type=int, help="queries timed for faiss (default all)")
    ap.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    ap.add_argument("--no-write", action="store_true", help="print, do not write results")
    # worker mode (internal)
    ap.add_argument("--worker", choices=list(WORKERS))
    ap.add_argument("--variant", default="map")
    ap.add_argument("--backend", default="native")
    ap.add_argument("--timed", type=int)
    ap.add_argument("--k", type=int)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data")
    ap.add_argument("--config", help="JSON configuration (worker adc, variant data)")
    a = ap.parse_args(argv)
    if a.worker:
        a.bits = a.bits[0]
        print(json.dumps(WORKERS[a.worker](a)))
        return 0
    cfg = dict(SMALL if a.small else FULL)
    for key in ("nq", "ndb", "bits", "reference_queries", "numpy_queries"):
        if getattr(a, key) is not None:
            cfg[key] = getattr(a, key)
    cfg.update(seed=a.seed, classes=10, flip=0.3, small=a.small, faiss_queries=a.faiss_queries)
    cfg["pq"] = dict(PQ, brute_queries=min(PQ["brute_queries"], cfg["nq"]))
    from tools.hashing import native as _native
    machine = common.machine()
    machine["native"] = _native.status()
    command = "python bench/bench_eval.py" + (" " + " ".join(argv if argv is not None
                                                             else sys.argv[1:])).rstrip()
    sections = {}
    for name in a.sections:
        print(f"section {name}", file=sys.stderr, flush=True)
        try:
            sections[name] = SECTIONS[name](cfg)
        except Exception as e:  # keep the other sections
            sections[name] = dict(status="failed", error=f"{type(e).__name__}: {e}")
            print(f"section {name} failed: {e}", file=sys.stderr)
    try:
        machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    result = dict(bench=BENCH, schema=common.SCHEMA, machine=machine, command=command,
                  config=cfg, sections=sections)
    if set(a.sections) != set(SECTIONS) and not a.no_write:
        result = _merge_previous(result, a.sections)
    result["goals"] = goals(result["sections"], result["config"])
    markdown = render(result)
    if a.no_write:
        print(markdown)
        return 0
    print(f"wrote {common.write_result(BENCH, result)} and {common.update_readme(BENCH, markdown)}")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
