/* optstate._ckernels: one fused pass over a block of a tensor pair (issue #6).
 *
 * optstate/kernels.py calls pair_block() for each block of two same-shape contiguous
 * tensors (float32, float64, bfloat16 or float16, in any combination). Every element is
 * widened to double and every statistic of kernels.compare() comes from that one read:
 * the count outside torch.isclose's tolerance, max |a - b|, max |a - b| / |b|, and both
 * sums of squares. The GIL is released, so worker threads run blocks side by side.
 *
 * Exactness: widening is exact, and each per-element operation is the one torch performs
 * on float64 tensors (a - b, fabs, rtol * |b|, + atol, <=, /), one IEEE operation at a
 * time: setup.py compiles with -ffp-contract=off so no multiply-add is fused. Hence the
 * counts, max_abs and max_rel equal torch's float64 results exactly. Only the sums of
 * squares are accumulated in another order (runs of LANE elements, then a compensated
 * sum), within kernels.SUM_RTOL of torch's float64 reduction.
 *
 * The pure-torch path in kernels.py computes the same numbers when this module is not
 * built (it is an optional extension); the tests run both.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { F32 = 0, F64 = 1, BF16 = 2, F16 = 3 };
#define LANE 256


static inline double load_bf16(const void *p, Py_ssize_t i)
{
    uint32_t bits = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return (double)f;
}

static inline double load_f16(const void *p, Py_ssize_t i)
{
    uint16_t h = ((const uint16_t *)p)[i];
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1fu) {                /* inf / nan */
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {             /* normal */
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {             /* +-0 */
        bits = sign;
    } else {                           /* subnormal: man * 2^-24, exact in double */
        double v = (double)man * 5.9604644775390625e-08;
        return sign ? -v : v;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return (double)f;
}

/* Compensated (Neumaier) running sum of non-negative partial sums. */
typedef struct { double s, c; } Acc;

static inline void acc_add(Acc *a, double x)
{
    double t = a->s + x;
    if (!isfinite(t)) {                /* overflow: the norm is rescaled in Python */
        a->s = t;
        a->c = 0.0;
        return;
    }
    if (fabs(a->s) >= fabs(x))
        a->c += (a->s - t) + x;
    else
        a->c += (x - t) + a->s;
    a->s = t;
}

typedef struct {
    Py_ssize_t n_out, fin_a, fin_b;
    int has_abs, has_rel, nz_a, nz_b;
    double max_abs, max_rel;
    Acc sqa, sqb;
} PairResult;

/* Careful path, one element: torch.isclose's rule for non-finite values, and finite
 * pairs exactly as in the fast loop below. */
static inline void pair_one(double x, double y, double atol, double rtol, int nan_equal,
                            PairResult *r, double *qa, double *qb)
{
    int fx = isfinite(x), fy = isfinite(y);
    if (fx && fy) {
        double d = fabs(x - y);
        double ay = fabs(y);
        double allowed = rtol * ay;
        allowed = allowed + atol;
        /* torch.isclose: a == b, or a finite |a-b| <= atol + rtol*|b| */
        if (!(x == y || (isfinite(d) && d <= allowed)))
            r->n_out++;
        if (!r->has_abs || d > r->max_abs) {
            r->max_abs = d;
            r->has_abs = 1;
        }
        if (ay != 0.0) {
            double q = d / ay;
            if (!r->has_rel || q > r->max_rel) {
                r->max_rel = q;
                r->has_rel = 1;
            }
        }
        *qa += x * x;
        *qb += y * y;
        r->nz_a |= x != 0.0;
        r->nz_b |= y != 0.0;
        r->fin_a++;
        r->fin_b++;
    } else {
        int both_nan = isnan(x) && isnan(y);
        if (!(x == y || (nan_equal && both_nan)))
            r->n_out++;
        if (fx) {
            *qa += x * x;
            r->nz_a |= x != 0.0;
            r->fin_a++;
        }
        if (fy) {
            *qb += y * y;
            r->nz_b |= y != 0.0;
            r->fin_b++;
        }
    }
}

/* Widening loaders: LANE elements (or fewer) of one kind into a double array. */
static void widen_f32(const void *p, Py_ssize_t i0, Py_ssize_t k, double *out)
{
    const float *s = (const float *)p + i0;
    for (Py_ssize_t i = 0; i < k; i++)
        out[i] = (double)s[i];
}

static void widen_f64(const void *p, Py_ssize_t i0, Py_ssize_t k, double *out)
{
    memcpy(out, (const double *)p + i0, (size_t)k * sizeof(double));
}

static void widen_bf16(const void *p, Py_ssize_t i0, Py_ssize_t k, double *out)
{
    for (Py_ssize_t i = 0; i < k; i++)
        out[i] = load_bf16(p, i0 + i);
}

static void widen_f16(const void *p, Py_ssize_t i0, Py_ssize_t k, double *out)
{
    for (Py_ssize_t i = 0; i < k; i++)
        out[i] = load_f16(p, i0 + i);
}

typedef void (*widen_fn)(const void *, Py_ssize_t, Py_ssize_t, double *);
static const widen_fn WIDEN[4] = {widen_f32, widen_f64, widen_bf16, widen_f16};

/* Two doubles at a time with the compiler's portable vector types (SSE2 on baseline
 * x86-64, NEON on arm64); comparisons give all-ones / zero lane masks. */
typedef double v2d __attribute__((vector_size(16)));
typedef long long v2i __attribute__((vector_size(16)));

#define V_ABS(v) ((v2d)((v2i)(v) & (v2i){0x7fffffffffffffffLL, 0x7fffffffffffffffLL}))

#if defined(__SSE2__)
#include <emmintrin.h>
#define V_MAX(a, b) ((v2d)_mm_max_pd((__m128d)(a), (__m128d)(b))) /* a > b ? a : b */
#else
static inline v2d V_MAX(v2d a, v2d b)
{
    v2i gt = a > b;
    return (v2d)(((v2i)a & gt) | ((v2i)b & ~gt));
}
#endif

/* One run of k <= LANE widened pairs. A fast vector loop assumes every value is finite,
 * every |a-b| finite and the tolerances finite and >= 0 (then a == b implies
 * |a-b| <= atol + rtol*|b|, so torch.isclose's rule is that comparison alone). Its sums
 * of squares tell whether that held: NaN and Inf propagate into them. If not (or k is not
 * a multiple of 4, or the squares over- or underflow), the run is redone with the
 * careful per-element path. The fast loop does not divide: it only flags whether some
 * |a-b|/|b| might beat the best quotient q so far, and only then are the run's quotients
 * computed. The flag is safe: with t = fl(fl(q*|b|) * 0.99999), t < q*|b| whenever t is a
 * normal number, so |a-b| < t implies |a-b|/|b| < q, and the rounded quotient cannot
 * exceed q (rounding is monotonic). */
static void pair_run(const double *xs, const double *ys, Py_ssize_t k, double atol,
                     double rtol, int nan_equal, PairResult *r)
{
    double qa = 0.0, qb = 0.0;
    int bad = (k % 4) != 0 || !(atol >= 0.0 && atol < HUGE_VAL && rtol >= 0.0
                                && rtol < HUGE_VAL);
    if (!bad) {
        const v2d zero = {0.0, 0.0};
        const v2d vmin = {DBL_MIN, DBL_MIN};
        const double q = r->has_rel ? r->max_rel : 0.0;
        v2d sa0 = zero, sa1 = zero, sb0 = zero, sb1 = zero, mx0 = zero, mx1 = zero;
        v2i close = {0, 0}, cand = {0, 0};
        for (Py_ssize_t i = 0; i < k; i += 4) {
            v2d x0, y0, x1, y1;
            memcpy(&x0, xs + i, sizeof x0);
            memcpy(&y0, ys + i, sizeof y0);
            memcpy(&x1, xs + i + 2, sizeof x1);
            memcpy(&y1, ys + i + 2, sizeof y1);
            v2d d0 = V_ABS(x0 - y0), ay0 = V_ABS(y0);
            v2d d1 = V_ABS(x1 - y1), ay1 = V_ABS(y1);
            v2d al0 = rtol * ay0, al1 = rtol * ay1;
            al0 = al0 + atol;
            al1 = al1 + atol;
            close += (d0 <= al0) + (d1 <= al1); /* lanes: -1 per close element */
            mx0 = V_MAX(d0, mx0);
            mx1 = V_MAX(d1, mx1);
            v2d t0 = q * ay0, t1 = q * ay1;
            t0 = t0 * 0.99999;
            t1 = t1 * 0.99999;
            cand |= (d0 >= t0) | (t0 < vmin) | (d1 >= t1) | (t1 < vmin);
            sa0 += x0 * x0;
            sb0 += y0 * y0;
            sa1 += x1 * x1;
            sb1 += y1 * y1;
        }
        qa = (sa0[0] + sa0[1]) + (sa1[0] + sa1[1]);
        qb = (sb0[0] + sb0[1]) + (sb1[0] + sb1[1]);
        v2d mx = V_MAX(mx0, mx1);
        double m = mx[1] > mx[0] ? mx[1] : mx[0];
        /* Not finite: a NaN/Inf value or an overflowing square or difference. */
        bad = !isfinite(qa) || !isfinite(qb) || !isfinite(m);
        int nza = qa > 0.0, nzb = qb > 0.0;
        for (Py_ssize_t i = 0; !bad && !nza && i < k; i++)
            if (xs[i] != 0.0)
                bad = 1; /* squares underflowed: the careful path records it */
        for (Py_ssize_t i = 0; !bad && !nzb && i < k; i++)
            if (ys[i] != 0.0)
                bad = 1;
        if (!bad) {
            r->n_out += k + (Py_ssize_t)(close[0] + close[1]);
            if (!r->has_abs || m > r->max_abs)
                r->max_abs = m;
            r->has_abs = 1;
            r->nz_a |= nza;
            r->nz_b |= nzb;
            r->fin_a += k;
            r->fin_b += k;
            if (cand[0] | cand[1]) {
                for (Py_ssize_t i = 0; i < k; i++) {
                    double ay = fabs(ys[i]);
                    if (ay != 0.0) {
                        double v = fabs(xs[i] - ys[i]) / ay;
                        if (!r->has_rel || v > r->max_rel) {
                            r->max_rel = v;
                            r->has_rel = 1;
                        }
                    }
                }
            }
        }
    }
    if (bad) {
        qa = qb = 0.0;
        for (Py_ssize_t i = 0; i < k; i++)
            pair_one(xs[i], ys[i], atol, rtol, nan_equal, r, &qa, &qb);
    }
    acc_add(&r->sqa, qa);
    acc_add(&r->sqb, qb);
}

static void pair_any(const void *pa, const void *pb, int ka, int kb, Py_ssize_t n,
                     double atol, double rtol, int nan_equal, PairResult *r)
{
    double xs[LANE], ys[LANE];
    for (Py_ssize_t start = 0; start < n; start += LANE) {
        Py_ssize_t k = n - start < LANE ? n - start : LANE;
        WIDEN[ka](pa, start, k, xs);
        WIDEN[kb](pb, start, k, ys);
        pair_run(xs, ys, k, atol, rtol, nan_equal, r);
    }
}

static PyObject *or_none(int has, double v)
{
    if (!has)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(v);
}

PyDoc_STRVAR(pair_block_doc,
"pair_block(ptr_a, ptr_b, n, kind_a, kind_b, atol, rtol, nan_equal)\n"
"-> (n_outside, max_abs, max_rel, sumsq_a, sumsq_b, finite_a, finite_b, nonzero_a, nonzero_b)\n\n"
"One pass over n contiguous elements at the two addresses (kinds: 0 float32, 1 float64,\n"
"2 bfloat16, 3 float16). The caller keeps both tensors alive during the call.");

static PyObject *pair_block(PyObject *self, PyObject *args)
{
    unsigned long long pa, pb;
    Py_ssize_t n;
    int ka, kb, nan_equal;
    double atol, rtol;
    if (!PyArg_ParseTuple(args, "KKniiddp", &pa, &pb, &n, &ka, &kb, &atol, &rtol, &nan_equal))
        return NULL;
    if (ka < 0 || ka > 3 || kb < 0 || kb > 3 || n < 0) {
        PyErr_SetString(PyExc_ValueError, "pair_block: bad kind or length");
        return NULL;
    }
    PairResult r;
    memset(&r, 0, sizeof r);
    Py_BEGIN_ALLOW_THREADS
    pair_any((const void *)(uintptr_t)pa, (const void *)(uintptr_t)pb, ka, kb, n, atol, rtol,
             nan_equal, &r);
    Py_END_ALLOW_THREADS
    PyObject *max_abs = or_none(r.has_abs, r.max_abs);
    PyObject *max_rel = or_none(r.has_rel, r.max_rel);
    if (max_abs == NULL || max_rel == NULL) {
        Py_XDECREF(max_abs);
        Py_XDECREF(max_rel);
        return NULL;
    }
    return Py_BuildValue("nNNddnnii", r.n_out, max_abs, max_rel, r.sqa.s + r.sqa.c,
                         r.sqb.s + r.sqb.c, r.fin_a, r.fin_b, r.nz_a, r.nz_b);
}

static PyMethodDef methods[] = {
    {"pair_block", pair_block, METH_VARARGS, pair_block_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "optstate._ckernels",
    "Fused single-pass kernels for kernels.py (optional; a pure-torch path does the same).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__ckernels(void) { return PyModule_Create(&module); }
