/* Optional C kernels of tools/codes.py, tools/metrics.py and tools/pq.py (loaded by
 * tools/_native.py).
 *
 * Plain C99 + GCC/Clang builtins, no Python headers: built on first use with the system C
 * compiler (`cc -O3 -shared -fPIC`) and called through ctypes, which releases the GIL. Every
 * function has a pure-numpy twin in tools/codes.py / tools/metrics.py giving the same results;
 * the tests run both.
 *
 * Codes are uint64 words [n, nwords] (tools.codes.to_words). The popcount loops are compiled
 * twice on x86 -- once with the POPCNT instruction, once generic -- and the variant is picked
 * at run time, so a library built on one x86 machine never executes an instruction another
 * lacks. Likewise the Euclidean distances and the slot pass of their ranking
 * (euclid_block_avx512, euclid_slots_avx512: AVX-512 intrinsics under a target attribute,
 * used when the CPU has AVX-512 F/VL/DQ/BW; else the portable code, which gives the same
 * bits).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#endif

#define TQN_ABI_VERSION 4

int tqn_abi_version(void) { return TQN_ABI_VERSION; }

/* Tests: run the generic (portable) kernels even where POPCNT exists; returns the
   previous setting. */
#if defined(__x86_64__) || defined(__i386__)
static int force_generic;
int tqn_force_generic(int on) {
    int old = force_generic;
    force_generic = on;
    return old;
}
#else
int tqn_force_generic(int on) {
    (void)on;
    return 0;
}
#endif

/* ---------------------------------------------------------------------------------------- */
/* Kernels, instantiated per target below                                                   */
/* ---------------------------------------------------------------------------------------- */

#ifdef __GNUC__
#define TQN_INLINE static inline __attribute__((always_inline))
#define TQN_UNUSED __attribute__((unused))
#else
#define TQN_INLINE static inline
#define TQN_UNUSED
#endif

/* Hamming distance between a query and database item j; NW > 0 is a compile-time word
   count (unrolled), NW == 0 means `nwords` words. */
TQN_INLINE uint64_t dist_of(const uint64_t *restrict qi, const uint64_t *restrict db, int64_t j,
                            int64_t nwords, const int NW) {
    const int64_t n = NW > 0 ? NW : nwords;
    const uint64_t *b = db + (size_t)j * (size_t)n;
    uint64_t s = 0;
    for (int64_t w = 0; w < n; w++) s += (uint64_t)__builtin_popcountll(qi[w] ^ b[w]);
    return s;
}

TQN_INLINE void hamming_body(const uint64_t *q, const uint64_t *db, int64_t nq, int64_t ndb,
                             int64_t nwords, void *out, int elem_size, const int NW) {
    for (int64_t i = 0; i < nq; i++) {
        const uint64_t *qi = q + (size_t)i * (size_t)nwords;
        const size_t row = (size_t)i * (size_t)ndb;
        if (elem_size == 1) {
            uint8_t *o = (uint8_t *)out + row;
            for (int64_t j = 0; j < ndb; j++) o[j] = (uint8_t)dist_of(qi, db, j, nwords, NW);
        } else if (elem_size == 2) {
            uint16_t *o = (uint16_t *)out + row;
            for (int64_t j = 0; j < ndb; j++) o[j] = (uint16_t)dist_of(qi, db, j, nwords, NW);
        } else {
            uint32_t *o = (uint32_t *)out + row;
            for (int64_t j = 0; j < ndb; j++) o[j] = (uint32_t)dist_of(qi, db, j, nwords, NW);
        }
    }
}

/* The relevant items of a query are given, not tested: `rel_idx[0..nrel)`, database rows in
 * increasing order (the rows of the query's label, from a grouping of the database by label
 * made once per call). The C code never compares labels.
 *
 * Histogram only (REC = 0): every item goes into one of 4 sub-histograms by position (four
 * independent chains of increments: a single histogram stalls on store-to-load forwarding
 * whenever two nearby items share a distance), then the relevant items are counted again.
 *
 * Index order (REC = 1): the items between two relevant ones (a "gap") are counted into one
 * histogram all[]; at relevant item j, all[d_j] is the number of earlier items at its
 * distance, its place in its tie group, recorded as (place << 16 | d) in rec. */
TQN_INLINE void scan_body(const uint64_t *restrict qi, const uint64_t *restrict db, int64_t ndb,
                          int64_t nwords, const int64_t *restrict rel_idx, int64_t nrel,
                          int64_t self, int64_t nd, int64_t *restrict all,
                          int64_t *restrict relc, uint64_t *restrict rec,
                          int64_t *restrict nrec, const int NW, const int REC) {
    uint64_t qcopy[4];  /* the query in locals: no reload after each histogram store */
    if (NW > 0) {
        for (int w = 0; w < NW; w++) qcopy[w] = qi[w];
        qi = qcopy;
    }
    if (!REC) {
        int64_t *h0 = all, *h1 = all + nd, *h2 = all + 2 * nd, *h3 = all + 3 * nd;
        int64_t j = 0;
        for (; j + 4 <= ndb; j += 4) {
            h0[dist_of(qi, db, j, nwords, NW)]++;
            h1[dist_of(qi, db, j + 1, nwords, NW)]++;
            h2[dist_of(qi, db, j + 2, nwords, NW)]++;
            h3[dist_of(qi, db, j + 3, nwords, NW)]++;
        }
        for (; j < ndb; j++) h0[dist_of(qi, db, j, nwords, NW)]++;
        if (self >= 0) h0[dist_of(qi, db, self, nwords, NW)]--;
        for (int64_t d = 0; d < nd; d++) h0[d] += h1[d] + h2[d] + h3[d];
        for (int64_t r = 0; r < nrel; r++)
            if (rel_idx[r] != self) relc[dist_of(qi, db, rel_idx[r], nwords, NW)]++;
        return;
    }
    int64_t j = 0, n = 0;
    for (int64_t r = 0; r <= nrel; r++) {
        const int64_t row = r < nrel ? rel_idx[r] : ndb;
        /* the gap [j, row), without the query itself */
        const int64_t cut = self >= j && self < row ? self : row;
        for (; j < cut; j++) all[dist_of(qi, db, j, nwords, NW)]++;
        if (cut < row)
            for (j = cut + 1; j < row; j++) all[dist_of(qi, db, j, nwords, NW)]++;
        j = row + 1;
        if (row == ndb || row == self) continue;  /* the end, or the query: not ranked */
        const uint64_t d = dist_of(qi, db, row, nwords, NW);
        rec[n++] = ((uint64_t)all[d] << 16) | d;
        all[d]++;
        relc[d]++;
    }
    *nrec = n;
}

typedef void (*scan_fn)(const uint64_t *, const uint64_t *, int64_t, int64_t, const int64_t *,
                        int64_t, int64_t, int64_t, int64_t *, int64_t *, uint64_t *, int64_t *);

#define TQN_DEFINE_TARGET(SUFFIX, ATTR)                                                      \
    ATTR TQN_UNUSED static void hamming_##SUFFIX(const uint64_t *q, const uint64_t *db,      \
                                                 int64_t nq, int64_t ndb, int64_t nwords,    \
                                                 void *out, int elem_size) {                 \
        switch (nwords) {                                                                    \
            case 1: hamming_body(q, db, nq, ndb, nwords, out, elem_size, 1); break;          \
            case 2: hamming_body(q, db, nq, ndb, nwords, out, elem_size, 2); break;          \
            case 3: hamming_body(q, db, nq, ndb, nwords, out, elem_size, 3); break;          \
            case 4: hamming_body(q, db, nq, ndb, nwords, out, elem_size, 4); break;          \
            default: hamming_body(q, db, nq, ndb, nwords, out, elem_size, 0);                \
        }                                                                                    \
    }                                                                                        \
    TQN_DEFINE_SCAN(SUFFIX, ATTR, 1, 0) TQN_DEFINE_SCAN(SUFFIX, ATTR, 2, 0)                  \
    TQN_DEFINE_SCAN(SUFFIX, ATTR, 3, 0) TQN_DEFINE_SCAN(SUFFIX, ATTR, 4, 0)                  \
    TQN_DEFINE_SCAN(SUFFIX, ATTR, 0, 0) TQN_DEFINE_SCAN(SUFFIX, ATTR, 1, 1)                  \
    TQN_DEFINE_SCAN(SUFFIX, ATTR, 2, 1) TQN_DEFINE_SCAN(SUFFIX, ATTR, 3, 1)                  \
    TQN_DEFINE_SCAN(SUFFIX, ATTR, 4, 1) TQN_DEFINE_SCAN(SUFFIX, ATTR, 0, 1)                  \
    TQN_UNUSED static scan_fn pick_scan_##SUFFIX(int64_t nwords, int rec) {                  \
        static const scan_fn table[2][5] = {                                                 \
            {scan_##SUFFIX##_0_0, scan_##SUFFIX##_1_0, scan_##SUFFIX##_2_0,                   \
             scan_##SUFFIX##_3_0, scan_##SUFFIX##_4_0},                                      \
            {scan_##SUFFIX##_0_1, scan_##SUFFIX##_1_1, scan_##SUFFIX##_2_1,                   \
             scan_##SUFFIX##_3_1, scan_##SUFFIX##_4_1}};                                     \
        return table[rec ? 1 : 0][nwords >= 1 && nwords <= 4 ? nwords : 0];                 \
    }

#define TQN_DEFINE_SCAN(SUFFIX, ATTR, NW, REC)                                               \
    ATTR static void scan_##SUFFIX##_##NW##_##REC(                                       \
            const uint64_t *qi, const uint64_t *db, int64_t ndb, int64_t nwords,             \
            const int64_t *rel_idx, int64_t nrel, int64_t self, int64_t nd, int64_t *all,    \
            int64_t *relc, uint64_t *rec, int64_t *nrec) {                                   \
        scan_body(qi, db, ndb, nwords, rel_idx, nrel, self, nd, all, relc, rec, nrec, NW,    \
                  REC);                                                                      \
    }

TQN_DEFINE_TARGET(generic, )
#if defined(__x86_64__) || defined(__i386__)
#define TQN_X86 1
TQN_DEFINE_TARGET(popcnt, __attribute__((target("popcnt"))))
static int has_popcnt(void) {
    __builtin_cpu_init();
    return !force_generic && __builtin_cpu_supports("popcnt");
}
#endif

/* Neumaier's compensated sum: sum += x with the rounding error kept in comp. */
static inline void kahan_add(double *sum, double *comp, double x) {
    double t = *sum + x;
    if ((*sum >= 0 ? *sum : -*sum) >= (x >= 0 ? x : -x)) *comp += (*sum - t) + x;
    else *comp += (x - t) + *sum;
    *sum = t;
}

/* ---------------------------------------------------------------------------------------- */
/* Exported functions                                                                        */
/* ---------------------------------------------------------------------------------------- */

/* Hamming distances [nq, ndb] into `out` (elem_size 1, 2 or 4 bytes per distance). */
void tqn_hamming(const uint64_t *q, const uint64_t *db, int64_t nq, int64_t ndb,
                 int64_t nwords, void *out, int elem_size) {
#ifdef TQN_X86
    if (has_popcnt()) {
        hamming_popcnt(q, db, nq, ndb, nwords, out, elem_size);
        return;
    }
#endif
    hamming_generic(q, db, nq, ndb, nwords, out, elem_size);
}

/* One scan of the database per query: histograms and, optionally, index-order statistics.
 *
 *   q [nq, nwords], db [ndb, nwords]    word codes
 *   rel_idx [*], rel_lo, rel_hi [nq]    the relevant items of query i are the database rows
 *                                       rel_idx[rel_lo[i] .. rel_hi[i]), in increasing order
 *   nbins = nbits + 1                   rel / tot have nbins columns
 *   self_start                          -1, or query i is database item self_start + i and
 *                                       is left out of its own ranking (it must then be
 *                                       among its own relevant items)
 *   rel, tot [nq, nbins]                int64 histograms over the distance (output)
 *   ap_sum, mapr_sum [nq]               sum over relevant items of hits / rank, over all
 *                                       of them and over those with rank <= R (output; NULL
 *                                       skips the index-order statistics)
 *   ks [nk] (ascending), hits_k [nq, nk]  #relevant items with rank <= ks[t] (output)
 *
 * Index order = ties broken by database index: item j at distance d has rank
 * T_d + #{i < j : d_i = d} + 1, and B_d + #{relevant i < j : d_i = d} + 1 relevant items up
 * to it (T_d, B_d: items / relevant items at distances < d). The scan keeps the running
 * count #{i < j : d_i = d} per distance (a counting sort), records it for relevant items,
 * and T_d, B_d come from the finished histograms: O(ndb + nbins) per query, no sort.
 *
 * Returns 0, -1 if a distance exceeds nbins - 1 (codes wider than nbits), -2 if out of
 * memory, -3 if nbits >= 65536 (index-order records hold 16-bit distances).
 */
int tqn_scan(const uint64_t *q, const uint64_t *db, int64_t nq, int64_t ndb, int64_t nwords,
             const int64_t *rel_idx, const int64_t *rel_lo, const int64_t *rel_hi,
             int64_t nbins, int64_t self_start, int64_t *rel, int64_t *tot, double *ap_sum,
             double *mapr_sum, const int64_t *ks, int64_t nk, int64_t *hits_k) {
    const int want = ap_sum != NULL;
    const int64_t maxd = 64 * nwords;  /* distances are <= maxd whatever nbins */
    const int64_t nd = maxd + 1;
    if (want && maxd >= 65536) return -3;
    int64_t *all = (int64_t *)malloc(sizeof(int64_t) * 4 * (size_t)nd);
    int64_t *relc = (int64_t *)malloc(sizeof(int64_t) * (size_t)nd);
    int64_t *seen = (int64_t *)malloc(sizeof(int64_t) * (size_t)nd);
    uint64_t *rec = want ? (uint64_t *)malloc(sizeof(uint64_t) * (size_t)(ndb + 1)) : NULL;
    int status = 0;
    scan_fn scan = pick_scan_generic(nwords, want);
#ifdef TQN_X86
    if (has_popcnt()) scan = pick_scan_popcnt(nwords, want);
#endif
    if (!all || !relc || !seen || (want && !rec)) {
        status = -2;
        goto done;
    }
    for (int64_t i = 0; i < nq; i++) {
        const uint64_t *qi = q + (size_t)i * (size_t)nwords;
        const int64_t self = self_start >= 0 && self_start + i < ndb ? self_start + i : -1;
        int64_t nrec = 0;
        memset(all, 0, sizeof(int64_t) * 4 * (size_t)nd);
        memset(relc, 0, sizeof(int64_t) * (size_t)nd);
        scan(qi, db, ndb, nwords, rel_idx + rel_lo[i], rel_hi[i] - rel_lo[i], self, nd, all,
             relc, rec, &nrec);
        for (int64_t d = nbins; d < nd; d++) {  /* a distance above nbits */
            if (all[d]) {
                status = -1;
                goto done;
            }
        }
        int64_t *rel_i = rel + (size_t)i * (size_t)nbins;
        int64_t *tot_i = tot + (size_t)i * (size_t)nbins;
        for (int64_t d = 0; d < nbins; d++) {
            tot_i[d] = all[d];
            rel_i[d] = relc[d];
        }
        if (!want) continue;
        int64_t *before = all, *rel_before = relc;  /* reused: T_d and B_d */
        int64_t n_rel = 0, n_items = 0;
        for (int64_t d = 0; d < nbins; d++) {
            before[d] = n_items;
            rel_before[d] = n_rel;
            seen[d] = 0;  /* relevant items of group d already ranked */
            n_items += tot_i[d];
            n_rel += rel_i[d];
        }
        double ap = 0.0, ap_c = 0.0, mr = 0.0, mr_c = 0.0;
        int64_t *hk = hits_k + (size_t)i * (size_t)nk;
        for (int64_t t = 0; t < nk; t++) hk[t] = 0;
        for (int64_t r = 0; r < nrec; r++) {  /* relevant items, in index order */
            const int64_t d = (int64_t)(rec[r] & 0xFFFFu);
            const int64_t rank = before[d] + (int64_t)(rec[r] >> 16) + 1;
            const int64_t hits = rel_before[d] + (++seen[d]);
            const double p = (double)hits / (double)rank;
            kahan_add(&ap, &ap_c, p);
            if (rank <= n_rel) kahan_add(&mr, &mr_c, p);
            for (int64_t t = nk - 1; t >= 0 && rank <= ks[t]; t--) hk[t]++;
        }
        ap_sum[i] = ap + ap_c;
        mapr_sum[i] = mr + mr_c;
    }
done:
    free(all);
    free(relc);
    free(seen);
    free(rec);
    return status;
}

/* ---------------------------------------------------------------------------------------- */
/* Product quantization: asymmetric distance computation (tools/pq.py)                       */
/* ---------------------------------------------------------------------------------------- */

/* Four queries at a time share each database code read (four independent sums per item);
   the remaining queries one at a time. Each sum runs over m = 0, 1, ..., M-1 in this order,
   starting from the first term (no 0.0f + ...), exactly as the numpy twin in tools/pq.py, so
   both give bitwise-equal scores (no -ffast-math: gcc neither reassociates nor contracts the
   additions; vectorizing over j keeps each item's order). A compile-time M (unrolled) was
   measured no faster. */
#define TQN_ADC_BODY(CODE_T)                                                                 \
    do {                                                                                     \
        const size_t tsize = (size_t)M * (size_t)K;                                          \
        int64_t i = 0;                                                                       \
        for (; i + 4 <= nq; i += 4) {                                                        \
            const float *t0 = tables + (size_t)i * tsize, *t1 = t0 + tsize;                  \
            const float *t2 = t1 + tsize, *t3 = t2 + tsize;                                  \
            float *o0 = out + (size_t)i * (size_t)ndb, *o1 = o0 + ndb, *o2 = o1 + ndb;       \
            float *o3 = o2 + ndb;                                                            \
            const CODE_T *h = (const CODE_T *)codes;                                         \
            for (int64_t j = 0; j < ndb; j++, h += M) {                                      \
                size_t c = h[0];                                                             \
                float a0 = t0[c], a1 = t1[c], a2 = t2[c], a3 = t3[c];                        \
                for (int64_t m = 1; m < M; m++) {                                            \
                    c = (size_t)m * (size_t)K + h[m];                                        \
                    a0 += t0[c];                                                             \
                    a1 += t1[c];                                                             \
                    a2 += t2[c];                                                             \
                    a3 += t3[c];                                                             \
                }                                                                            \
                o0[j] = a0;                                                                  \
                o1[j] = a1;                                                                  \
                o2[j] = a2;                                                                  \
                o3[j] = a3;                                                                  \
            }                                                                                \
        }                                                                                    \
        for (; i < nq; i++) {                                                                \
            const float *t = tables + (size_t)i * tsize;                                     \
            float *o = out + (size_t)i * (size_t)ndb;                                        \
            const CODE_T *h = (const CODE_T *)codes;                                         \
            for (int64_t j = 0; j < ndb; j++, h += M) {                                      \
                float a = t[h[0]];                                                           \
                for (int64_t m = 1; m < M; m++) a += t[(size_t)m * (size_t)K + h[m]];       \
                o[j] = a;                                                                    \
            }                                                                                \
        }                                                                                    \
    } while (0)

/* ADC scores of a chunk of queries against a product-quantized database:
 *
 *   out[i, j] = sum_{m < M} tables[i, m, codes[j, m]]      (float32 sums, m in order)
 *
 *   tables [nq, M, K] float32   per-query lookup tables (inner products or squared
 *                               distances of each query subvector to each centroid)
 *   codes [ndb, M]              uint8 (code_size 1) or uint16 (code_size 2) centroid ids;
 *                               the caller guarantees codes < K (they index the tables)
 *   out [nq, ndb] float32       scores (output)
 *
 * Returns 0, or -1 for M < 1 or a code_size other than 1 or 2.
 */
int tqn_adc(const float *restrict tables, const void *restrict codes, int64_t nq,
            int64_t ndb, int64_t M, int64_t K, int code_size, float *restrict out) {
    if (M < 1 || (code_size != 1 && code_size != 2)) return -1;
    if (code_size == 1) TQN_ADC_BODY(uint8_t);
    else TQN_ADC_BODY(uint16_t);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Real-valued features: exact Euclidean ranking (tools/hashing/metrics.py)                  */
/* ---------------------------------------------------------------------------------------- */

/* Squared Euclidean distances of a block of queries to the whole database, in double from the
 * float32 inputs, each as  d = sum_{k = 0..dim-1, in this order} (q_k - x_k)^2 with q_k - x_k
 * formed in double: the rule of tools.hashing.metrics.euclidean_distances, which the numpy twin
 * follows operation by operation (no FMA contraction: -std=c99 turns it off; no reassociation:
 * the vectors run across database items, never across k).
 *
 * Register-blocked: TQN_EQB = 12 queries x TQN_ETW database items (two vectors of 8 doubles) are
 * summed in registers over all k. The database comes repacked in tiles of TQN_ETW items,
 * tile t = [dim][TQN_ETW] float32 (tail padded with zeros; those lanes are never stored), so
 * each tile is one contiguous read shared by the TQN_EQB queries. GCC vector types, lowered
 * per ISA by target_clones (avx512f: 24 accumulators in zmm registers; 12 was measured 14 %
 * faster than 8 queries); where AVX-512 F/VL/DQ/BW is there (and not generic_kernels()),
 * euclid_block_avx512 runs instead, the same operations written with intrinsics. */
#define TQN_EQB 12
#define TQN_ETW 16
typedef double tqn_v8d __attribute__((vector_size(64)));
typedef float tqn_v8f __attribute__((vector_size(32)));
#if defined(TQN_X86) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
static void euclid_block(const double *qd /* [TQN_EQB, dim], rows >= nqb zero */, int64_t nqb,
                         const float *tiles, int64_t ndb, int64_t dim,
                         double *out /* [nqb, ndb] */) {
    const int64_t ntiles = (ndb + TQN_ETW - 1) / TQN_ETW;
    for (int64_t t = 0; t < ntiles; t++) {
        const float *x = tiles + (size_t)t * (size_t)dim * TQN_ETW;
        tqn_v8d acc[TQN_EQB][2];
        {
            tqn_v8f f0, f1;
            memcpy(&f0, x, sizeof f0);
            memcpy(&f1, x + 8, sizeof f1);
            const tqn_v8d x0 = __builtin_convertvector(f0, tqn_v8d);
            const tqn_v8d x1 = __builtin_convertvector(f1, tqn_v8d);
            for (int a = 0; a < TQN_EQB; a++) {
                const double qk = qd[(size_t)a * (size_t)dim];
                const tqn_v8d d0 = qk - x0, d1 = qk - x1;
                acc[a][0] = d0 * d0;
                acc[a][1] = d1 * d1;
            }
        }
        for (int64_t k = 1; k < dim; k++) {
            tqn_v8f f0, f1;
            memcpy(&f0, x + k * TQN_ETW, sizeof f0);
            memcpy(&f1, x + k * TQN_ETW + 8, sizeof f1);
            const tqn_v8d x0 = __builtin_convertvector(f0, tqn_v8d);
            const tqn_v8d x1 = __builtin_convertvector(f1, tqn_v8d);
            for (int a = 0; a < TQN_EQB; a++) {
                const double qk = qd[(size_t)a * (size_t)dim + k];
                const tqn_v8d d0 = qk - x0, d1 = qk - x1;
                acc[a][0] += d0 * d0;
                acc[a][1] += d1 * d1;
            }
        }
        const int64_t j0 = t * TQN_ETW;
        const int64_t nj = ndb - j0 < TQN_ETW ? ndb - j0 : TQN_ETW;
        for (int64_t a = 0; a < nqb; a++) {
            double *o = out + (size_t)a * (size_t)ndb + j0;
            if (nj == TQN_ETW) {
                memcpy(o, &acc[a][0], sizeof acc[a][0]);
                memcpy(o + 8, &acc[a][1], sizeof acc[a][1]);
            } else {
                double tmp[TQN_ETW];
                memcpy(tmp, &acc[a][0], sizeof acc[a][0]);
                memcpy(tmp + 8, &acc[a][1], sizeof acc[a][1]);
                memcpy(o, tmp, sizeof(double) * (size_t)nj);
            }
        }
    }
}

/* The ranking of one query (euclid_rank) works on
 *   keys:   the relevant items' keys -- the bit pattern u of the distance (distances are sums
 *           of squares, >= +0.0, whose IEEE order is their unsigned integer order; a NaN
 *           pattern sorts last, so the order is total), then the database index i -- in
 *           one list per fine bucket f (below), not sorted;
 *   buckets: nb = TQN_EBPR * m uniform fine buckets over the relevant items' range [lo, hi]:
 *           x = (d - lo) * scale clamped to [0, nb - 1/4], bucket floor(x); items beyond the
 *           range (u > uhi) get bucket nb, items below it (u < ulo) bucket nb + 1. Monotone:
 *           d <= d' gives x <= x', so a smaller x (or bucket) means a smaller key;
 *   table:  per bucket b, s = #relevant items in buckets < b and xr = the (float) x of its
 *           relevant item if it holds exactly one, +inf if none, NaN if several; +inf for
 *           the buckets nb (s = m) and nb + 1 (s = 0).
 * An item's slot = #relevant keys smaller than its key: for a non-relevant item in bucket b,
 * s + (xf > xr) where xf = (float)x, exact since float rounding is monotone too (xf > xr
 * implies x > x_r implies d > d_r; xf < xr the reverse), unless xf == xr or xr is NaN: then
 * its key is compared with the bucket's relevant keys (its list; a bucket of more than
 * TQN_ELIST of them: binary searches in the keys sorted). The relevant item at place p in key
 * order has rank p + 1 + #non-relevant items with slot <= p: the table and the slot counts
 * give every rank without sorting the relevant keys themselves. */
typedef struct { uint64_t u; int32_t i, next; } tqn_rkey;
typedef struct { int32_t s; float xr; } tqn_ent;

static int rkey_cmp(const void *a, const void *b) {
    const tqn_rkey *x = (const tqn_rkey *)a, *y = (const tqn_rkey *)b;
    if (x->u != y->u) return x->u < y->u ? -1 : 1;
    return x->i < y->i ? -1 : (x->i > y->i);
}

/* Fine buckets per relevant item. */
#define TQN_EBPR 8
/* Longest bucket list of relevant keys searched linearly (longer: the keys are sorted). */
#ifndef TQN_ELIST
#define TQN_ELIST 16
#endif
/* Items per chunk of the slot pass. */
#define TQN_ECHUNK 512

typedef struct {
    double lo, scale, top;
    uint64_t ulo, uhi;
    int32_t nb;
} tqn_ebk;

static inline double euclid_x(const tqn_ebk *k, double d) {
    double x = (d - k->lo) * k->scale;
    x = x < k->top ? x : k->top;  /* a NaN product gives top */
    return x > 0.0 ? x : 0.0;
}

/* The slots of items j0 .. j0 + len - 1 into slot[] (see above): m (never summed) for
 * relevant items and for those needing an exact comparison, whose indices j0 + t are listed
 * in exact[] instead (for the caller's comparison); returns their number. The counting loop
 * is then one increment per item, without a test. */
#if defined(TQN_X86) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static int32_t euclid_slots(const double *restrict di, const uint8_t *restrict is_rel,
                            int32_t j0, int32_t len, const tqn_ebk *bk,
                            const tqn_ent *restrict table, int32_t m, int32_t *restrict slot,
                            int32_t *restrict exact) {
    const tqn_ebk k = *bk;
    int32_t nex = 0;
    for (int32_t t = 0; t < len; t++) {
        const double d = di[t];
        uint64_t u;
        memcpy(&u, &d, sizeof u);
        const double x = euclid_x(&k, d);
        const int32_t b = u > k.uhi ? k.nb : u < k.ulo ? k.nb + 1 : (int32_t)x;
        const tqn_ent e = table[b];
        const float xf = (float)x;
        const int32_t s = e.s + (xf > e.xr);
        const int32_t ex = (xf == e.xr || e.xr != e.xr) && !is_rel[t];
        slot[t] = is_rel[t] || ex ? m : s;
        exact[nex] = j0 + t;
        nex += ex;
    }
    return nex;
}

#if defined(TQN_X86) && defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define TQN_EAVX512 1
/* euclid_slots with AVX-512 gathers (GCC's default tuning emulates gathers with scalar
   loads): the same operations lane by lane, so the same slots. pf (or NULL): the next
   query's distances of the same items, prefetched one line per 8 items, spread over the pass
   (measured ~7 % faster in total than a burst of prefetches after each chunk). */
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw")))
static int32_t euclid_slots_avx512(const double *restrict di, const uint8_t *restrict is_rel,
                                   int32_t j0, int32_t len, const tqn_ebk *bk,
                                   const tqn_ent *restrict table, int32_t m,
                                   int32_t *restrict slot, int32_t *restrict exact,
                                   const double *pf) {
    const __m512d vlo = _mm512_set1_pd(bk->lo), vscale = _mm512_set1_pd(bk->scale);
    const __m512d vtop = _mm512_set1_pd(bk->top), vzero = _mm512_setzero_pd();
    const __m512i vuhi = _mm512_set1_epi64((long long)bk->uhi);
    const __m512i vulo = _mm512_set1_epi64((long long)bk->ulo);
    const __m256i vnb = _mm256_set1_epi32(bk->nb), vnb1 = _mm256_set1_epi32(bk->nb + 1);
    const __m256i one = _mm256_set1_epi32(1), vm = _mm256_set1_epi32(m);
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    int32_t t = 0, nex = 0;
    for (; t + 8 <= len; t += 8) {
        if (pf) _mm_prefetch((const char *)(pf + t), _MM_HINT_T0);
        const __m512d d = _mm512_loadu_pd(di + t);
        const __m512i u = _mm512_castpd_si512(d);
        __m512d x = _mm512_mul_pd(_mm512_sub_pd(d, vlo), vscale);
        x = _mm512_min_pd(x, vtop);  /* x < top ? x : top (a NaN x gives top) */
        x = _mm512_max_pd(x, vzero); /* x > 0 ? x : 0 */
        __m256i b = _mm512_cvttpd_epi32(x);
        b = _mm256_mask_blend_epi32(_mm512_cmplt_epu64_mask(u, vulo), b, vnb1);
        b = _mm256_mask_blend_epi32(_mm512_cmpgt_epu64_mask(u, vuhi), b, vnb);
        const __m512i e = _mm512_i32gather_epi64(b, (const void *)table, 8);
        const __m256i s = _mm512_cvtepi64_epi32(e);
        const __m256 xr = _mm256_castsi256_ps(_mm512_cvtepi64_epi32(_mm512_srli_epi64(e, 32)));
        const __m256 xf = _mm512_cvtpd_ps(x);
        const __mmask8 gt = _mm256_cmp_ps_mask(xf, xr, _CMP_GT_OQ);
        const __m128i rel8 = _mm_loadl_epi64((const __m128i *)(is_rel + t));
        const __mmask8 rel = _mm_cmpneq_epi8_mask(rel8, _mm_setzero_si128());
        const __mmask8 ex = _mm256_cmp_ps_mask(xf, xr, _CMP_EQ_UQ) & ~rel;  /* equal or NaN */
        __m256i r = _mm256_mask_add_epi32(s, gt, s, one);
        r = _mm256_mask_mov_epi32(r, rel | ex, vm);
        _mm256_storeu_si256((__m256i *)(slot + t), r);
        if (ex) {
            const __m256i j = _mm256_add_epi32(_mm256_set1_epi32(j0 + t), iota);
            _mm256_mask_compressstoreu_epi32(exact + nex, ex, j);
            nex += __builtin_popcount(ex);
        }
    }
    if (t < len) {
        if (pf) _mm_prefetch((const char *)(pf + t), _MM_HINT_T0);
        nex += euclid_slots(di + t, is_rel + t, j0 + t, len - t, bk, table, m, slot + t,
                            exact + nex);
    }
    return nex;
}

/* euclid_block with AVX-512 intrinsics: the same operations in the same order, so the same
   bits. GCC lowers euclid_block's 8-float -> 8-double conversion as two 4-wide conversions and
   an insert (its tuning prefers 256-bit vectors there): here one vcvtps2pd per vector. */
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw")))
static void euclid_block_avx512(const double *qd, int64_t nqb, const float *tiles, int64_t ndb,
                                int64_t dim, double *out) {
    const int64_t ntiles = (ndb + TQN_ETW - 1) / TQN_ETW;
    for (int64_t t = 0; t < ntiles; t++) {
        const float *x = tiles + (size_t)t * (size_t)dim * TQN_ETW;
        __m512d acc[TQN_EQB][2];
        {
            const __m512d x0 = _mm512_cvtps_pd(_mm256_loadu_ps(x));
            const __m512d x1 = _mm512_cvtps_pd(_mm256_loadu_ps(x + 8));
            for (int a = 0; a < TQN_EQB; a++) {
                const __m512d qk = _mm512_set1_pd(qd[(size_t)a * (size_t)dim]);
                const __m512d d0 = _mm512_sub_pd(qk, x0), d1 = _mm512_sub_pd(qk, x1);
                acc[a][0] = _mm512_mul_pd(d0, d0);
                acc[a][1] = _mm512_mul_pd(d1, d1);
            }
        }
        for (int64_t k = 1; k < dim; k++) {
            const __m512d x0 = _mm512_cvtps_pd(_mm256_loadu_ps(x + k * TQN_ETW));
            const __m512d x1 = _mm512_cvtps_pd(_mm256_loadu_ps(x + k * TQN_ETW + 8));
            for (int a = 0; a < TQN_EQB; a++) {
                const __m512d qk = _mm512_set1_pd(qd[(size_t)a * (size_t)dim + k]);
                const __m512d d0 = _mm512_sub_pd(qk, x0), d1 = _mm512_sub_pd(qk, x1);
                acc[a][0] = _mm512_add_pd(acc[a][0], _mm512_mul_pd(d0, d0));
                acc[a][1] = _mm512_add_pd(acc[a][1], _mm512_mul_pd(d1, d1));
            }
        }
        const int64_t j0 = t * TQN_ETW;
        const int64_t nj = ndb - j0 < TQN_ETW ? ndb - j0 : TQN_ETW;
        const __mmask8 m0 = nj >= 8 ? 0xff : (__mmask8)((1u << nj) - 1);
        const __mmask8 m1 = nj >= 16 ? 0xff : nj <= 8 ? 0 : (__mmask8)((1u << (nj - 8)) - 1);
        for (int64_t a = 0; a < nqb; a++) {
            double *o = out + (size_t)a * (size_t)ndb + j0;
            _mm512_mask_storeu_pd(o, m0, acc[a][0]);
            _mm512_mask_storeu_pd(o + 8, m1, acc[a][1]);
        }
    }
}

static int has_avx512(void) {
    __builtin_cpu_init();
    return !force_generic && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw");
}
#endif

/* a [n] (counts) -> its exclusive prefix sums; returns the largest count. Vectorized
 * (in-register scans). */
typedef int32_t tqn_v16i __attribute__((vector_size(64)));
typedef int32_t tqn_v4i __attribute__((vector_size(16)));
#if defined(TQN_X86) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
static int32_t euclid_prefix(int32_t *restrict a, int32_t n) {
    const tqn_v16i zero = {0};
    tqn_v16i big = zero;
    int32_t carry = 0, b = 0;
    for (; b + 16 <= n; b += 16) {
        tqn_v16i v, x;
        memcpy(&v, a + b, sizeof v);
        const tqn_v16i more = v > big;  /* -1 / 0 lanes */
        big = (v & more) | (big & ~more);
        x = v + __builtin_shuffle(v, zero, (tqn_v16i){16, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14});
        x += __builtin_shuffle(x, zero, (tqn_v16i){16, 16, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13});
        x += __builtin_shuffle(x, zero, (tqn_v16i){16, 16, 16, 16, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
        x += __builtin_shuffle(x, zero, (tqn_v16i){16, 16, 16, 16, 16, 16, 16, 16, 0, 1, 2, 3, 4, 5, 6, 7});
        const tqn_v16i ex = x - v + carry;
        carry += x[15];
        memcpy(a + b, &ex, sizeof ex);
    }
    int32_t biggest = 0;
    for (int t = 0; t < 16; t++) biggest = big[t] > biggest ? big[t] : biggest;
    for (; b < n; b++) {
        const int32_t c = a[b];
        biggest = c > biggest ? c : biggest;
        a[b] = carry;
        carry += c;
    }
    return biggest;
}

/* table[b] for b < nb (see above tqn_rkey) from s [nb + 1] (exclusive prefix sums of the
 * relevant items per bucket, s[nb] = m) and xb [nb] (the x of a bucket's last relevant item):
 * {s[b], +inf / xb[b] / NaN for none / one / several}. */
#if defined(TQN_X86) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
static void euclid_fill(tqn_ent *restrict table, const int32_t *restrict s,
                        const float *restrict xb, int32_t nb) {
    uint64_t *restrict t64 = (uint64_t *)(void *)table;
    for (int32_t b = 0; b < nb; b++) {
        const int32_t c = s[b + 1] - s[b];
        uint32_t x;
        memcpy(&x, xb + b, sizeof x);
        x = c == 0 ? 0x7f800000u : c == 1 ? x : 0x7fc00000u;
        t64[b] = (uint64_t)(uint32_t)s[b] | (uint64_t)x << 32;
    }
}

/* Scratch of euclid_rank, for a database of ndb items and at most mmax relevant items per
   query (tqn_euclid allocates it once). */
typedef struct {
    tqn_rkey *keys;   /* [2 mmax + 1]: as gathered, then (a bucket of > TQN_ELIST) sorted */
    int32_t *hist;    /* [TQN_EBPR mmax + 2] relevant items per fine bucket, then s, cursors */
    float *xb;        /* [TQN_EBPR mmax + 2] per fine bucket, the x of its last relevant item */
    int32_t *head;    /* [TQN_EBPR mmax + 2] per fine bucket, its last relevant key */
    tqn_ent *table;   /* [TQN_EBPR mmax + 10] */
    int32_t *cnt;     /* [mmax + 1] non-relevant items per slot */
    uint8_t *is_rel;  /* [ndb + 8], all 0 between queries */
} tqn_escratch;

/* The ranks of one query's relevant items (see above and tqn_euclid), in rank order, into the
 * sums. di [ndb] distances (next: the next query's, prefetched, or NULL), self the query's
 * own row or -1, m = n_rel >= 1 relevant items:
 * rel [nrel_all] their rows in any order (self possibly among them, skipped). */
static void euclid_rank(int avx512, const double *restrict di, const double *next,
                        int64_t ndb, int64_t self,
                        int64_t n_rel, const int64_t *restrict rel, int64_t nrel_all,
                        const tqn_escratch *sc, const int64_t *restrict ks, int64_t nk,
                        int64_t *restrict hk, double *ap, double *ap_c, double *mr,
                        double *mr_c) {
    const int32_t m = (int32_t)n_rel;
    tqn_rkey *restrict keys = sc->keys;
    uint8_t *restrict is_rel = sc->is_rel;
    /* the relevant items' keys (unsorted) and their range */
    uint64_t ulo = UINT64_MAX, uhi = 0;
    for (int64_t r = 0, k = 0; r < nrel_all; r++) {
        const int64_t j = rel[r];
        if (j == self) continue;
        uint64_t u;
        memcpy(&u, di + j, sizeof u);
        keys[k].u = u;
        keys[k].i = (int32_t)j;
        is_rel[j] = 1;
        k++;
        ulo = u < ulo ? u : ulo;
        uhi = u > uhi ? u : uhi;
    }
    tqn_ebk bk;
    double hi;
    memcpy(&bk.lo, &ulo, sizeof bk.lo);
    memcpy(&hi, &uhi, sizeof hi);
    bk.ulo = ulo;
    bk.uhi = uhi;
    bk.nb = TQN_EBPR * m;
    bk.scale = ((double)bk.nb - 0.5) / (hi - bk.lo);
    if (!(bk.scale <= 1.7976931348623157e308)) bk.scale = 0.0;  /* hi = lo, inf, NaN */
    bk.top = (double)bk.nb - 0.25;
    const int32_t nb = bk.nb;
    /* the table (see above) from the relevant items' fine buckets f: their count per bucket
       (-> s, exclusive prefix sums) and the x of the last one in each (-> xr where there is
       exactly one); each key is linked to the previous one of its bucket (next, -1 ends),
       the lists for the exact comparisons */
    int32_t *restrict fcnt = sc->hist;
    float *restrict xb = sc->xb;
    int32_t *restrict head = sc->head;
    tqn_ent *restrict table = sc->table;
    memset(fcnt, 0, sizeof(int32_t) * (size_t)(nb + 1));
    for (int32_t k = 0; k < m; k++) {
        double d;
        memcpy(&d, &keys[k].u, sizeof d);
        const double x = euclid_x(&bk, d);
        const int32_t f = (int32_t)x;  /* < nb: ulo <= u <= uhi */
        keys[k].next = fcnt[f] ? head[f] : -1;
        head[f] = k;
        fcnt[f]++;
        xb[f] = (float)x;
    }
    const int32_t biggest = euclid_prefix(fcnt, nb);  /* -> s */
    fcnt[nb] = m;
    euclid_fill(table, fcnt, xb, nb);
    table[nb].s = m;  /* beyond the relevant items */
    table[nb].xr = __builtin_inff();
    table[nb + 1].s = 0;  /* below them */
    table[nb + 1].xr = __builtin_inff();
    /* a bucket of more than TQN_ELIST relevant keys: the keys sorted by (bucket, bits, index)
       for binary searches instead of the lists */
    tqn_rkey *restrict sorted = NULL;
    if (biggest > TQN_ELIST) {
        sorted = keys + m;
        for (int32_t k = 0; k < m; k++) {
            double d;
            memcpy(&d, &keys[k].u, sizeof d);
            const int32_t f = (int32_t)euclid_x(&bk, d);
            sorted[fcnt[f]++] = keys[k];  /* fcnt[f] -> the end of bucket f */
        }
        for (int32_t f = 0; f < nb; f++)
            if (fcnt[f] - table[f].s > 1)
                qsort(sorted + table[f].s, (size_t)(fcnt[f] - table[f].s), sizeof(tqn_rkey),
                      rkey_cmp);
    }
    /* every non-relevant item's slot, counted per slot */
    int32_t *restrict cnt = sc->cnt;
    memset(cnt, 0, sizeof(int32_t) * (size_t)(m + 1));
    int32_t slot[TQN_ECHUNK], exact[TQN_ECHUNK];
    for (int64_t j0 = 0; j0 < ndb; j0 += TQN_ECHUNK) {
        const int32_t len = (int32_t)(ndb - j0 < TQN_ECHUNK ? ndb - j0 : TQN_ECHUNK);
        int32_t nex;
#ifdef TQN_EAVX512
        if (avx512)
            nex = euclid_slots_avx512(di + j0, is_rel + j0, (int32_t)j0, len, &bk, table, m,
                                      slot, exact, next ? next + j0 : NULL);
        else
#endif
        {
            nex = euclid_slots(di + j0, is_rel + j0, (int32_t)j0, len, &bk, table, m, slot,
                               exact);
            if (next)  /* the next query's distances, from memory meanwhile */
                for (int32_t t = 0; t < len; t += 8) __builtin_prefetch(next + j0 + t);
        }
        if (self >= j0 && self < j0 + len) slot[self - j0] = m;  /* not ranked */
        for (int32_t t = 0; t < len; t++) cnt[slot[t]]++;
        for (int32_t x = 0; x < nex; x++) {  /* several relevant items in its bucket, or a tie */
            const int32_t j = exact[x];
            if (j == self) continue;
            uint64_t u;
            memcpy(&u, di + j, sizeof u);
            const int32_t b = (int32_t)euclid_x(&bk, di[j]);  /* ulo <= u <= uhi */
            int32_t s = table[b].s;
            if (!sorted) {  /* count the bucket's smaller relevant keys */
                for (int32_t k = head[b]; k >= 0; k = keys[k].next)
                    s += keys[k].u < u || (keys[k].u == u && keys[k].i < j);
            } else {  /* lower bound of (u, j) in the bucket [s, e) */
                for (int32_t n = table[b + 1].s - s; n > 0;) {  /* table[nb].s = m */
                    const int32_t half = n / 2, y = s + half;
                    if (sorted[y].u < u || (sorted[y].u == u && sorted[y].i < j)) {
                        s = y + 1;
                        n -= half + 1;
                    } else {
                        n = half;
                    }
                }
            }
            cnt[s]++;
        }
    }
    for (int64_t r = 0; r < nrel_all; r++) is_rel[rel[r]] = 0;
    int64_t below = 0;
    for (int32_t p = 0; p < m; p++) {
        below += cnt[p];
        const int64_t rank = below + p + 1;
        const double prec = (double)(p + 1) / (double)rank;
        kahan_add(ap, ap_c, prec);
        if (rank <= n_rel) kahan_add(mr, mr_c, prec);
        for (int64_t t = nk - 1; t >= 0 && rank <= ks[t]; t--) hk[t]++;
    }
}

/* Index-order statistics of the Euclidean ranking (ties broken by database index), as
 * tqn_scan gives them for Hamming distances:
 *
 *   q [nq, dim], dbt [dim, ndb]         float32 features (the database transposed)
 *   rel_idx / rel_lo / rel_hi           as in tqn_scan
 *   self_start                          -1, or query i is database item self_start + i
 *   ap_sum, mapr_sum [nq], ks [nk] ascending, hits_k [nq, nk]   (output, as tqn_scan)
 *
 * Every statistic follows from the ranks of the relevant items alone (rank = 1 + #items of
 * smaller (distance, index)), taken in rank order. Per query: the distances (euclid_block);
 * then euclid_rank (see the comment above tqn_rkey): the m relevant keys counted into
 * TQN_EBPR * m buckets of their own distance range, a table from the counts giving every item
 * its slot among the relevant keys (in key order) with one gather and one float comparison
 * (exact comparisons with the bucket's keys for the few items sharing a bucket with several
 * relevant items or tying in float), the slots counted, and the rank of the relevant item at
 * place p = p + 1 + #non-relevant items with slot <= p. O(ndb + m log m) worst case (a bucket
 * of more than TQN_ELIST relevant keys: sorted, binary searches), O(ndb) expected; no sort of
 * the database. Returns 0, -2 if
 * out of memory, -3 if ndb is too large for the 32-bit bucket indices (>= 2^31 / 8). */
int tqn_euclid(const float *q, const float *dbt, int64_t nq, int64_t ndb, int64_t dim,
               const int64_t *rel_idx, const int64_t *rel_lo, const int64_t *rel_hi,
               int64_t self_start, double *ap_sum, double *mapr_sum, const int64_t *ks,
               int64_t nk, int64_t *hits_k) {
    int64_t mmax = 0;  /* the most relevant items of a query: the scratch's size */
    for (int64_t i = 0; i < nq; i++)
        mmax = rel_hi[i] - rel_lo[i] > mmax ? rel_hi[i] - rel_lo[i] : mmax;
    if (ndb > (INT32_MAX - 16) / TQN_EBPR || mmax > (INT32_MAX - 16) / TQN_EBPR) return -3;
    const int64_t ntiles = (ndb + TQN_ETW - 1) / TQN_ETW;
    const size_t tile_elems = (size_t)ntiles * (size_t)(dim > 0 ? dim : 1) * TQN_ETW;
    double *dist = (double *)malloc(sizeof(double) * (size_t)TQN_EQB * (size_t)(ndb + 1));
    double *qd = (double *)calloc((size_t)TQN_EQB * (size_t)(dim > 0 ? dim : 1), sizeof(double));
    float *tiles = (float *)calloc(tile_elems, sizeof(float));
    tqn_escratch sc;
    sc.keys = (tqn_rkey *)malloc(sizeof(tqn_rkey) * (2 * (size_t)mmax + 1));
    sc.xb = (float *)calloc((size_t)TQN_EBPR * (size_t)mmax + 2, sizeof(float));
    sc.head = (int32_t *)malloc(sizeof(int32_t) * ((size_t)TQN_EBPR * (size_t)mmax + 2));
    sc.hist = (int32_t *)malloc(sizeof(int32_t) * ((size_t)TQN_EBPR * (size_t)mmax + 2));
    sc.table = (tqn_ent *)malloc(sizeof(tqn_ent) * ((size_t)TQN_EBPR * (size_t)mmax + 10));
    sc.cnt = (int32_t *)malloc(sizeof(int32_t) * (size_t)(mmax + 1));
    sc.is_rel = (uint8_t *)calloc((size_t)ndb + 8, 1);
    int status = 0;
#ifdef TQN_EAVX512
    const int avx512 = has_avx512();
#else
    const int avx512 = 0;
#endif
    if (!dist || !qd || !tiles || !sc.keys || !sc.xb || !sc.head || !sc.hist || !sc.table ||
        !sc.cnt || !sc.is_rel) {
        status = -2;
        goto done;
    }
    if (dim < 1) {  /* every distance is 0: all items tie, ranked by index */
        for (int64_t j = 0; j < (int64_t)TQN_EQB * ndb; j++) dist[j] = 0.0;
    }
    for (int64_t t = 0; t < ntiles; t++)  /* tiles [ntiles][dim][TQN_ETW] */
        for (int64_t k = 0; k < dim; k++)
            for (int64_t c = 0; c < TQN_ETW && t * TQN_ETW + c < ndb; c++)
                tiles[((size_t)t * (size_t)dim + (size_t)k) * TQN_ETW + (size_t)c] =
                    dbt[(size_t)k * (size_t)ndb + (size_t)(t * TQN_ETW + c)];
    for (int64_t i0 = 0; i0 < nq; i0 += TQN_EQB) {
        const int64_t nqb = nq - i0 < TQN_EQB ? nq - i0 : TQN_EQB;
        for (int64_t a = 0; a < nqb; a++)
            for (int64_t k = 0; k < dim; k++)
                qd[(size_t)a * (size_t)dim + (size_t)k] =
                    (double)q[(size_t)(i0 + a) * (size_t)dim + (size_t)k];
        if (dim >= 1) {
#ifdef TQN_EAVX512
            if (avx512)
                euclid_block_avx512(qd, nqb, tiles, ndb, dim, dist);
            else
#endif
                euclid_block(qd, nqb, tiles, ndb, dim, dist);
        }
        for (int64_t a = 0; a < nqb; a++) {
            const int64_t i = i0 + a;
            double *di = dist + (size_t)a * (size_t)ndb;
            const int64_t self = self_start >= 0 && self_start + i < ndb ? self_start + i : -1;
            const int64_t n = ndb - (self >= 0);
            double ap = 0.0, ap_c = 0.0, mr = 0.0, mr_c = 0.0;
            int64_t *hk = hits_k + (size_t)i * (size_t)nk;
            for (int64_t t = 0; t < nk; t++) hk[t] = 0;
            int64_t n_rel = rel_hi[i] - rel_lo[i];
            if (self >= 0)
                for (int64_t r = rel_lo[i]; r < rel_hi[i]; r++) n_rel -= rel_idx[r] == self;
            if (n_rel == 0 || n == 0) {
                ap_sum[i] = 0.0;
                mapr_sum[i] = 0.0;
                continue;
            }
            euclid_rank(avx512, di, a + 1 < nqb ? di + ndb : NULL, ndb, self, n_rel, rel_idx + rel_lo[i], rel_hi[i] - rel_lo[i], &sc,
                        ks, nk, hk, &ap, &ap_c, &mr, &mr_c);
            ap_sum[i] = ap + ap_c;
            mapr_sum[i] = mr + mr_c;
        }
    }
done:
    free(dist);
    free(qd);
    free(tiles);
    free(sc.keys);
    free(sc.xb);
    free(sc.head);
    free(sc.hist);
    free(sc.table);
    free(sc.cnt);
    free(sc.is_rel);
    return status;
}
