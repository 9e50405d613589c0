/* The blend's interleaving loops (ablate/recipe/blend.py), O(1) per sample.
 *
 * wf2q(counts, dataset_index, dataset_sample_index=None, mode=0) fills the arrays with the order in
 * which WF2Q serves counts[d] samples of each dataset d: at slot s, among the datasets whose
 * next sample has started (fluid start k*S/n <= s), the one whose next sample finishes first
 * (fluid finish (k+1)*S/n, compared exactly; ties: the lower index). It returns how many
 * samples were placed more than one sample off their dataset's share (0 unless the algorithm
 * is wrong), or -1 if at some slot no dataset was eligible (idem). It must give exactly what
 * the pure-Python reference (_wf2q_python in blend.py) gives.
 *
 * Each dataset's next sample is in one of two timing wheels of H slots: waiting, at its start
 * slot; ready, at the integer part of its finish. A sample starts and finishes within
 * ceil(S/n)+1 slots of now, so with H above that every wheel entry is one slot's list; where H
 * would be too large (a dataset with very few samples in a long stage) the same rule runs on
 * a binary heap instead, O(log D) per sample. With few datasets (a stage's domains, or the
 * datasets of one domain) a short array kept sorted by finish is faster still: the first
 * eligible entry is the pick, and the taken dataset moves back past the few that finish
 * before its next sample. From 4 to 40 datasets a branch-free scan of them all is fastest of
 * all (run_scan: each finish as one integer key, the pick a running minimum). All four give
 * the same order (the tests compare them).
 *
 * gather(...) composes a two-level blend (domains, then the datasets of each domain) into one
 * dataset_index / dataset_sample_index. Built by setup.py as an optional extension. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef __int128 i128;

#define MAX_WHEEL (1 << 22)

typedef struct {
    const int64_t *n;
    int64_t S;
    int64_t *taken, *start, *q, *rem, *step_q, *step_r;  /* finish of the next sample: q + rem/n */
} State;

/* does dataset a's next sample come before b's: earlier finish, then the lower index */
static inline int before(const State *st, int32_t a, int32_t b) {
    if (st->q[a] != st->q[b]) return st->q[a] < st->q[b];
    i128 x = (i128)st->rem[a] * st->n[b], y = (i128)st->rem[b] * st->n[a];
    if (x != y) return x < y;
    return a < b;
}

/* take dataset d's next sample at slot s; returns 1 if it is off its share by more than one */
static inline int take(State *st, int32_t d, int64_t s, int16_t *dindex, int64_t *sindex) {
    int64_t k = st->taken[d], n = st->n[d], S = st->S;
    dindex[s] = (int16_t)d;
    if (sindex) sindex[s] = k;
    st->taken[d] = k + 1;
    /* the next sample starts when this one finishes: ceil((k+1)S/n) */
    st->start[d] = st->q[d] + (st->rem[d] > 0);
    st->q[d] += st->step_q[d];
    st->rem[d] += st->step_r[d];
    if (st->rem[d] >= n) { st->rem[d] -= n; st->q[d] += 1; }
    /* prefix s+1 holds k+1 of d: at most 1 over n(s+1)/S; prefix s holds k: at most 1 under */
    if (S < ((int64_t)1 << 31))  /* every product below S^2 < 2^62 */
        return (k + 1) * S - n * (s + 1) > S || k * S - n * s < -S;
    return (i128)(k + 1) * S - (i128)n * (s + 1) > S || (i128)k * S - (i128)n * s < -(i128)S;
}

static long long run_wheels(State *st, Py_ssize_t D, int64_t H, int32_t *wait, int32_t *ready, int32_t *link,
                            int16_t *dindex, int64_t *sindex) {
    const int64_t S = st->S, mask = H - 1;
    long long violations = 0;
    for (int64_t i = 0; i < H; i++) wait[i] = ready[i] = -1;
    for (Py_ssize_t d = D; d-- > 0;) { link[d] = wait[0]; wait[0] = (int32_t)d; }
    int64_t low = 0;  /* no ready sample finishes before slot `low` */
    for (int64_t s = 0; s < S; s++) {
        for (int32_t d = wait[s & mask]; d >= 0;) {  /* samples starting now become ready */
            int32_t nxt = link[d];
            int64_t b = st->q[d] > s ? st->q[d] : s;
            link[d] = ready[b & mask];
            ready[b & mask] = d;
            if (b < low) low = b;
            d = nxt;
        }
        wait[s & mask] = -1;
        if (low < s) low = s;  /* a ready sample finishing before s would already be a violation */
        int64_t end = s + H;
        while (low < end && ready[low & mask] < 0) low++;
        if (low == end) return -1;
        int32_t *slot = &ready[low & mask], *best = slot;
        for (int32_t *p = &link[*slot]; *p >= 0; p = &link[*p])
            if (before(st, *p, *best)) best = p;
        int32_t d = *best;
        *best = link[d];
        violations += take(st, d, s, dindex, sindex);
        if (st->taken[d] < st->n[d]) {
            int64_t t = st->start[d] > s ? st->start[d] : s + 1;
            link[d] = wait[t & mask];
            wait[t & mask] = d;
        }
    }
    return violations;
}

/* the same rule on heaps: waiting by start slot, ready by finish */
static inline int wait_before(const State *st, int32_t a, int32_t b) {
    return st->start[a] < st->start[b] || (st->start[a] == st->start[b] && a < b);
}

#define SIFT(NAME, LESS)                                                              \
    static void NAME##_down(const State *st, int32_t *h, Py_ssize_t n, Py_ssize_t i) { \
        int32_t x = h[i];                                                             \
        for (;;) {                                                                    \
            Py_ssize_t c = 2 * i + 1;                                                 \
            if (c >= n) break;                                                        \
            if (c + 1 < n && LESS(st, h[c + 1], h[c])) c++;                           \
            if (!LESS(st, h[c], x)) break;                                            \
            h[i] = h[c];                                                              \
            i = c;                                                                    \
        }                                                                             \
        h[i] = x;                                                                     \
    }                                                                                 \
    static void NAME##_up(const State *st, int32_t *h, Py_ssize_t i) {                \
        int32_t x = h[i];                                                             \
        while (i > 0) {                                                               \
            Py_ssize_t p = (i - 1) / 2;                                               \
            if (!LESS(st, x, h[p])) break;                                            \
            h[i] = h[p];                                                              \
            i = p;                                                                    \
        }                                                                             \
        h[i] = x;                                                                     \
    }

SIFT(wh, wait_before)
SIFT(rh, before)

static long long run_heaps(State *st, Py_ssize_t D, int32_t *wait, int32_t *ready, int16_t *dindex, int64_t *sindex) {
    Py_ssize_t nw = D, nr = 0;
    long long violations = 0;
    for (Py_ssize_t d = 0; d < D; d++) wait[d] = (int32_t)d;  /* all start at 0: already a heap */
    for (int64_t s = 0; s < st->S; s++) {
        while (nw > 0 && st->start[wait[0]] <= s) {
            ready[nr] = wait[0];
            rh_up(st, ready, nr++);
            wait[0] = wait[--nw];
            wh_down(st, wait, nw, 0);
        }
        if (nr == 0) return -1;
        int32_t d = ready[0];
        ready[0] = ready[--nr];
        rh_down(st, ready, nr, 0);
        violations += take(st, d, s, dindex, sindex);
        if (st->taken[d] < st->n[d]) {
            wait[nw] = d;
            wh_up(st, wait, nw++);
        }
    }
    return violations;
}


/* the same rule on an array of the live datasets kept sorted by finish (few datasets) */
static long long run_sorted(State *st, Py_ssize_t D, int32_t *ord, int16_t *dindex, int64_t *sindex) {
    Py_ssize_t live = D;
    long long violations = 0;
    for (Py_ssize_t i = 0; i < D; i++) {  /* insertion sort by the first finish, S/n */
        int32_t x = (int32_t)i;
        Py_ssize_t j = i;
        while (j > 0 && before(st, x, ord[j - 1])) { ord[j] = ord[j - 1]; j--; }
        ord[j] = x;
    }
    for (int64_t s = 0; s < st->S; s++) {
        Py_ssize_t p = 0;
        while (st->start[ord[p]] > s)
            if (++p == live) return -1;
        int32_t d = ord[p];
        violations += take(st, d, s, dindex, sindex);
        if (st->taken[d] == st->n[d]) {  /* done: drop it */
            memmove(ord + p, ord + p + 1, (size_t)(live - p - 1) * sizeof(int32_t));
            live--;
            continue;
        }
        Py_ssize_t j = p;  /* its next sample finishes later: move it back */
        while (j + 1 < live && before(st, ord[j + 1], d)) { ord[j] = ord[j + 1]; j++; }
        ord[j] = d;
    }
    return violations;
}


/* the same rule as one pass over the live datasets per slot (few datasets), without branches
 * that depend on the data: each dataset's next finish is kept as one integer key,
 * floor(finish * 2^F) * 2^B + d, and the pick is the least key among the started ones. Two
 * different finishes m/n_a and m'/n_b (in units of S) differ by at least S/(n_a n_b) >= 4/S,
 * so with 2^F >= S/4 their floors differ and the keys order exactly as the fractions; equal
 * finishes tie on the index in the low B bits, as `before` does. scan_bits() picks F and B
 * and says whether every key (at most (S + 1) 2^(F+B)) stays below 2^62; where not (tens of
 * billions of samples), the other forms run. */
static int scan_bits(int64_t S, Py_ssize_t D, int *F, int *B) {
    int f = 0, b = 0;
    while (((int64_t)1 << f) < (S + 3) / 4) f++;
    while (((Py_ssize_t)1 << b) < D) b++;
    *F = f;
    *B = b;
    return ((i128)S << (f + b)) + ((i128)1 << (f + b)) < ((i128)1 << 62);
}

/* One scan in progress: run_scan steps one; run_lanes steps two side by side. */
typedef struct {
    const int64_t *n;
    int64_t S, s;  /* slots in all; the next one */
    Py_ssize_t D;
    int F, B;
    uint64_t *key, *begin, *kstep_q, *kstep_r, *krem, *taken;  /* one block of 6 D */
    int16_t *dindex;
    int64_t *sindex;
    long long violations;  /* -1 once some slot had no dataset started (never: blend.py) */
} Scan;

static int scan_init(Scan *l, const int64_t *n, Py_ssize_t D, int F, int B, int16_t *dindex, int64_t *sindex) {
    int64_t S = 0;
    for (Py_ssize_t d = 0; d < D; d++) S += n[d];
    uint64_t *mem = calloc(6 * (size_t)D, sizeof(uint64_t));
    if (!mem) return -1;
    *l = (Scan){n, S, 0, D, F, B, mem, mem + D, mem + 2 * D, mem + 3 * D, mem + 4 * D, mem + 5 * D, dindex, sindex, 0};
    const uint64_t num = (uint64_t)S << F;
    for (Py_ssize_t d = 0; d < D; d++) {  /* the k-th finish's key: floor(k S 2^F / n), k = 1 first */
        l->kstep_q[d] = num / (uint64_t)n[d];
        l->kstep_r[d] = num % (uint64_t)n[d];
        l->krem[d] = l->kstep_r[d];
        l->key[d] = (l->kstep_q[d] << B) | (uint64_t)d;
        l->begin[d] = 0;  /* ceil(start 2^F): the sample before finished at start */
    }
    return 0;
}

/* slot l->s: take the started dataset whose next sample finishes first */
static inline void scan_step(Scan *restrict l) {
    const int64_t s = l->s, S = l->S;
    const Py_ssize_t D = l->D;
    const int B = l->B;
    uint64_t *restrict key = l->key, *restrict begin = l->begin, *restrict krem = l->krem;
    /* started: start <= s, i.e. ceil(start 2^F) <= s 2^F. One not yet started reads as
     * UINT64_MAX: 0 - 1 sets every bit (a compare and a subtraction, no branch) */
    const int64_t now = (int64_t)((uint64_t)s << l->F);
    uint64_t best0 = UINT64_MAX, best1 = UINT64_MAX;
    Py_ssize_t i = 0;
    for (; i + 1 < D; i += 2) {  /* two chains, so the compares overlap */
        uint64_t k0 = key[i] | (0 - (uint64_t)(now < (int64_t)begin[i]));
        uint64_t k1 = key[i + 1] | (0 - (uint64_t)(now < (int64_t)begin[i + 1]));
        best0 = k0 < best0 ? k0 : best0;
        best1 = k1 < best1 ? k1 : best1;
    }
    if (i < D) {
        uint64_t k0 = key[i] | (0 - (uint64_t)(now < (int64_t)begin[i]));
        best0 = k0 < best0 ? k0 : best0;
    }
    uint64_t best = best0 < best1 ? best0 : best1;
    if (best == UINT64_MAX) {
        l->violations = -1;
        l->s = S;  /* stop */
        return;
    }
    int32_t d = (int32_t)(best & (((uint64_t)1 << B) - 1));
    int64_t k = (int64_t)l->taken[d], n = l->n[d];
    l->dindex[s] = (int16_t)d;
    if (l->sindex) l->sindex[s] = k;
    l->taken[d] = (uint64_t)(k + 1);
    /* the next sample starts as this one finishes: ceil(finish 2^F) = its key's floor, plus
     * one where a fraction was dropped; a dataset done never starts again */
    begin[d] = k + 1 < n ? (best >> B) + (krem[d] != 0) : (uint64_t)INT64_MAX;
    uint64_t r = krem[d] + l->kstep_r[d], carry = r >= (uint64_t)n;
    krem[d] = carry ? r - (uint64_t)n : r;
    key[d] = best + ((l->kstep_q[d] + carry) << B);
    if (S < ((int64_t)1 << 31))
        l->violations += (k + 1) * S - n * (s + 1) > S || k * S - n * s < -S;
    else
        l->violations += (i128)(k + 1) * S - (i128)n * (s + 1) > S || (i128)k * S - (i128)n * s < -(i128)S;
    l->s = s + 1;
}

static long long run_scan(Scan *l) {
    while (l->s < l->S) scan_step(l);
    return l->violations;
}

/* Several scans, two at a time: each slot's pick waits on the one before (a chain of loads,
 * compares and stores, ~25 cycles), so one scan leaves the core mostly idle; two independent
 * ones stepped side by side fill it. A lane that finishes takes the next job. */
static void run_lanes(Scan *jobs, Py_ssize_t J) {
    Py_ssize_t next = 0;
    Scan *a = J > 0 ? &jobs[next++] : NULL, *b = J > 1 ? &jobs[next++] : NULL;
    while (a || b) {
        if (a && b) {
            while (a->s < a->S && b->s < b->S) {
                scan_step(a);
                scan_step(b);
            }
        } else {
            run_scan(a ? a : b);
        }
        if (a && a->s >= a->S) a = next < J ? &jobs[next++] : NULL;
        if (b && b->s >= b->S) b = next < J ? &jobs[next++] : NULL;
    }
}

/* which form is fastest (ns a sample, 2-core x86 machine, 3.9M samples): sorted up to 3
 * datasets (5-6), the scan from 4 to 40 (9-26), sorted where the scan's keys do not fit and
 * there are at most 8, wheels above (22-29; heaps 30-95) */
#define TINY_D 3
#define SCAN_D 40
#define SMALL_D 8

/* the form run_one picks (mode 0) or is asked for (1 heaps, 2 wheels, 3 sorted, 4 scan);
 * side_by_side: the job runs in a lane of run_lanes, where the scan beats the sorted array
 * from 2 datasets up */
static int pick_mode(const int64_t *n, Py_ssize_t D, int64_t S, int mode, int side_by_side, int64_t *H, int *F,
                     int *B) {
    int64_t min_n = INT64_MAX;
    for (Py_ssize_t d = 0; d < D; d++) min_n = n[d] < min_n ? n[d] : min_n;
    int64_t gap = (S + min_n - 1) / min_n + 2;
    for (*H = 1; *H < gap; *H <<= 1) {}
    int fits = scan_bits(S, D, F, B);
    if (mode == 0) mode = D <= (side_by_side ? 1 : TINY_D) ? 3 : D <= SCAN_D && fits ? 4 : D <= SMALL_D ? 3 : *H <= MAX_WHEEL ? 2 : 1;
    if (mode == 4 && !fits) mode = 3;
    if (mode == 2 && *H > MAX_WHEEL) mode = 1;
    return mode;
}

/* one interleaving of counts n (checked by the caller), without the GIL; -1: out of memory */
static int run_one(const int64_t *n, Py_ssize_t D, int64_t S, int16_t *dindex, int64_t *sindex, int mode,
                   long long *violations) {
    int64_t H;
    int F, B;
    mode = pick_mode(n, D, S, mode, 0, &H, &F, &B);
    if (mode == 4) {
        Scan scan = {0};
        if (scan_init(&scan, n, D, F, B, dindex, sindex) < 0) return -1;
        *violations = run_scan(&scan);
        free(scan.key);
        return 0;
    }
    int wheels = mode == 2;
    int64_t *mem = calloc(6 * D, sizeof(int64_t));
    int32_t *imem = malloc((wheels ? 2 * H + D : 2 * D) * sizeof(int32_t));
    if (!mem || !imem) {
        free(mem);
        free(imem);
        return -1;
    }
    State st = {n, S, mem, mem + D, mem + 2 * D, mem + 3 * D, mem + 4 * D, mem + 5 * D};
    for (Py_ssize_t d = 0; d < D; d++) {
        st.step_q[d] = S / n[d];
        st.step_r[d] = S % n[d];
        st.q[d] = st.step_q[d];  /* the first sample finishes at S/n */
        st.rem[d] = st.step_r[d];
    }
    if (wheels)
        *violations = run_wheels(&st, D, H, imem, imem + H, imem + 2 * H, dindex, sindex);
    else if (mode == 3)
        *violations = run_sorted(&st, D, imem, dindex, sindex);
    else
        *violations = run_heaps(&st, D, imem, imem + D, dindex, sindex);
    free(mem);
    free(imem);
    return 0;
}

/* counts as 1 to 32767 positive int64 summing to the output's length; 0 if so */
static int check_counts(const Py_buffer *cb, Py_ssize_t S) {
    Py_ssize_t D = cb->len / 8;
    const int64_t *n = (const int64_t *)cb->buf;
    int64_t total = 0;
    if (D < 1 || D > 32767) return -1;
    for (Py_ssize_t d = 0; d < D; d++) {
        if (n[d] <= 0) return -1;
        total += n[d];
    }
    return total == S ? 0 : -1;
}

static PyObject *wf2q(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer cb, ib, sb = {0};
    PyObject *sobj = Py_None;
    int mode = 0;  /* 0: the fastest form for the counts; 1 heaps, 2 wheels, 3 sorted, 4 scan (for the tests) */
    if (!PyArg_ParseTuple(args, "y*w*|Oi", &cb, &ib, &sobj, &mode)) return NULL;
    if (sobj != Py_None && PyObject_GetBuffer(sobj, &sb, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&cb);
        PyBuffer_Release(&ib);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t S = ib.len / 2;
    /* dtypes and contiguity are checked by the caller */
    if ((sb.buf && sb.len / 8 != S) || check_counts(&cb, S) < 0 || mode < 0 || mode > 4) {
        PyErr_SetString(PyExc_ValueError, "wf2q: needs 1 to 32767 positive int64 counts and outputs of their sum");
        goto done;
    }
    long long violations = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = run_one((const int64_t *)cb.buf, cb.len / 8, S, (int16_t *)ib.buf, (int64_t *)sb.buf, mode, &violations);
    Py_END_ALLOW_THREADS
    result = rc < 0 ? PyErr_NoMemory() : PyLong_FromLongLong(violations);
done:
    PyBuffer_Release(&cb);
    PyBuffer_Release(&ib);
    if (sb.buf) PyBuffer_Release(&sb);
    return result;
}

/* wf2q_lanes([(counts, dataset_index), ...]) -> [violations, ...]: wf2q(counts, dataset_index)
 * for each job (the same orders), the ones the scan suits stepped two at a time (run_lanes) */
static PyObject *wf2q_lanes(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *list;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &list)) return NULL;
    Py_ssize_t J = PyList_GET_SIZE(list), got = 0;
    Py_buffer *bufs = PyMem_Calloc(2 * (size_t)J + 1, sizeof(Py_buffer));
    long long *violations = PyMem_Calloc((size_t)J + 1, sizeof(long long));
    Scan *scans = PyMem_Calloc((size_t)J + 1, sizeof(Scan));
    int *mode = PyMem_Calloc((size_t)J + 1, sizeof(int));
    PyObject *result = NULL;
    if (!bufs || !violations || !scans || !mode) { PyErr_NoMemory(); goto done; }
    for (; got < J; got++) {
        PyObject *job = PyList_GET_ITEM(list, got);
        if (!PyArg_ParseTuple(job, "y*w*", &bufs[2 * got], &bufs[2 * got + 1])) goto done;
        if (check_counts(&bufs[2 * got], bufs[2 * got + 1].len / 2) < 0) {
            got++;
            PyErr_SetString(PyExc_ValueError, "wf2q_lanes: each job needs 1 to 32767 positive int64 counts and an output of their sum");
            goto done;
        }
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t lanes = 0;
    for (Py_ssize_t j = 0; j < J && !failed; j++) {
        const int64_t *n = bufs[2 * j].buf;
        Py_ssize_t D = bufs[2 * j].len / 8, S = bufs[2 * j + 1].len / 2;
        int64_t H;
        int F, B;
        mode[j] = pick_mode(n, D, S, 0, 1, &H, &F, &B);
        if (mode[j] == 4)
            failed = scan_init(&scans[lanes++], n, D, F, B, bufs[2 * j + 1].buf, NULL) < 0;
    }
    if (!failed) run_lanes(scans, lanes);
    for (Py_ssize_t j = 0, l = 0; j < J && !failed; j++) {
        if (mode[j] == 4)
            violations[j] = scans[l++].violations;
        else
            failed = run_one(bufs[2 * j].buf, bufs[2 * j].len / 8, bufs[2 * j + 1].len / 2, bufs[2 * j + 1].buf,
                             NULL, mode[j], &violations[j]) < 0;
    }
    for (Py_ssize_t l = 0; l < lanes; l++) free(scans[l].key);
    Py_END_ALLOW_THREADS
    if (failed) { PyErr_NoMemory(); goto done; }
    result = PyList_New(J);
    for (Py_ssize_t j = 0; result && j < J; j++) PyList_SET_ITEM(result, j, PyLong_FromLongLong(violations[j]));
done:
    for (Py_ssize_t j = 0; bufs && j < 2 * got; j++)
        if (bufs[j].obj) PyBuffer_Release(&bufs[j]);
    PyMem_Free(bufs);
    PyMem_Free(violations);
    PyMem_Free(scans);
    PyMem_Free(mode);
    return result;
}


/* gather(group_index, local_index, slot_start, member_start, members, dataset_index,
 *        dataset_sample_index): the two-level blend's final order. Slot s goes to group
 * g = group_index[s]; it is g's r-th slot so far, and g's own order (local_index[slot_start[g]:
 * slot_start[g+1]]) says which of its members comes r-th: an index into
 * members[member_start[g]:member_start[g+1]]. The dataset is that member; its sample is how
 * many of that dataset came before. dataset_sample_index is int32 or int64 (by its size). */
static PyObject *gather(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer gb, lb, ob, mob, mb, ib, sb;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*w*w*", &gb, &lb, &ob, &mob, &mb, &ib, &sb)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t S = gb.len / 2, G = ob.len / 8 - 1, D = mb.len / 2;
    int wide = sb.len == S * 8;
    int64_t *pos = NULL, *taken = NULL;
    if (lb.len / 2 != S || ib.len / 2 != S || (!wide && sb.len != S * 4) || G < 1 || D < 1
        || mob.len / 8 != G + 1) {
        PyErr_SetString(PyExc_ValueError, "gather: mismatched lengths");
        goto done;
    }
    const int16_t *group = gb.buf, *local = lb.buf, *members = mb.buf;
    const int64_t *start = ob.buf, *mstart = mob.buf;
    int16_t *dindex = ib.buf;
    pos = calloc((size_t)G, sizeof(int64_t));
    taken = calloc((size_t)D, sizeof(int64_t));
    if (!pos || !taken) { PyErr_NoMemory(); goto done; }
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t g = 0; g < G; g++) pos[g] = start[g];
    for (Py_ssize_t s = 0; s < S; s++) {
        int16_t g = group[s];
        if (g < 0 || g >= G || pos[g] >= start[g + 1]) { bad = 1; break; }
        int64_t m = mstart[g] + local[pos[g]++];
        if (m < mstart[g] || m >= mstart[g + 1] || m >= D || members[m] < 0 || members[m] >= D) { bad = 1; break; }
        int16_t d = members[m];
        dindex[s] = d;
        int64_t k = taken[d]++;
        if (wide) ((int64_t *)sb.buf)[s] = k;
        else ((int32_t *)sb.buf)[s] = (int32_t)k;
    }
    Py_END_ALLOW_THREADS
    if (bad) PyErr_SetString(PyExc_ValueError, "gather: an index out of range");
    else { Py_INCREF(Py_None); result = Py_None; }
done:
    free(pos);
    free(taken);
    PyBuffer_Release(&gb);
    PyBuffer_Release(&lb);
    PyBuffer_Release(&ob);
    PyBuffer_Release(&mob);
    PyBuffer_Release(&mb);
    PyBuffer_Release(&ib);
    PyBuffer_Release(&sb);
    return result;
}

static PyMethodDef methods[] = {
    {"wf2q", wf2q, METH_VARARGS, "wf2q(counts, dataset_index, dataset_sample_index=None, mode=0) -> misplaced samples, or -1"},
    {"wf2q_lanes", wf2q_lanes, METH_VARARGS, "wf2q_lanes([(counts, dataset_index), ...]) -> [misplaced samples or -1, ...]"},
    {"gather", gather, METH_VARARGS, "gather(group_index, local_index, slot_start, member_start, members, dataset_index, dataset_sample_index)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_blend", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__blend(void) { return PyModule_Create(&module); }
