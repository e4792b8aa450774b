/* optstate.numeric._ckernels: one fused pass over a block of a tensor pair (issue #6).
 *
 * optstate/numeric/pair_kernel.py calls pair_block() for each block of two same-shape
 * contiguous tensors (float32, float64, bfloat16, float16, the four float8 formats, the
 * integers and bool: any combination of the kinds below), and
 * kernels.py moments_block() for each block of one. Every element is widened to double
 * and every statistic of pair_kernel.compare() comes from that one read:
 * the count outside torch.isclose's tolerance, max |a - b|, max |a - b| / |b|, and both
 * sums of squares. The GIL is released, so worker threads run blocks side by side.
 *
 * Exactness: widening is exact, and each per-element operation is the one torch performs
 * on float64 tensors (a - b, fabs, rtol * |b|, + atol, <=, /), one IEEE operation at a
 * time: setup.py compiles with -ffp-contract=off so no multiply-add is fused. Hence the
 * counts, max_abs and max_rel equal torch's float64 results exactly. Only the sums (of
 * squares; for one tensor, also of values and of |values|) are accumulated in another
 * order (runs of LANE elements, then a compensated sum), and in the AVX2 loops each
 * square is added with one fused multiply-add: within optstate/numeric/tolerance.py's
 * sum_rtol(n) of torch's float64 reduction.
 *
 * float32 and float64 tensors (the common case) are read by the fast loops in place, each
 * vector widened in registers; other kinds, and a run the fast loop declines, are widened
 * into a LANE-element buffer first. Same values either way: widening is exact.
 *
 * The pure-torch path in kernels.py / pair_kernel.py computes the same numbers when this
 * module is not built (it is an optional extension); kernel_switch.py decides which runs,
 * and the tests run both.
 */
/* No fused multiply-add outside the sums of squares (see Exactness above): setup.py passes
 * -ffp-contract=off, and this keeps it so when the file is compiled some other way. */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Element kinds: kernel_switch.C_KINDS says which dtype name each one is. */
enum { F32 = 0, F64 = 1, BF16 = 2, F16 = 3, F8E4M3FN = 4, F8E5M2 = 5, F8E4M3FNUZ = 6,
       F8E5M2FNUZ = 7, I8 = 8, U8 = 9, I16 = 10, I32 = 11, I64 = 12, BOOL = 13, U16 = 14,
       U32 = 15, U64 = 16, NKINDS = 17 };
#define LANE 256

/* The four float8 formats decoded through 256-entry tables, filled once at import
 * (fp8_init): every code's value as torch converts it to float32, then exactly to double
 * (the tests check all 256 codes of each against torch). Layout: sign bit, then
 * exponent bits, then mantissa bits; "fn" formats have no infinities (e4m3fn: only
 * S.1111.111 is NaN); "fnuz" formats have no negative zero either (0x80 is their only
 * NaN) and an exponent bias one larger. */
static double fp8_table[4][256];

static double fp8_decode(unsigned code, int exp_bits, int man_bits, int bias, int fn, int uz)
{
    unsigned sign = code >> 7;
    unsigned exp = (code >> man_bits) & ((1u << exp_bits) - 1u);
    unsigned man = code & ((1u << man_bits) - 1u);
    unsigned exp_max = (1u << exp_bits) - 1u;
    if (uz && code == 0x80u)
        return NAN;
    if (!fn && exp == exp_max)                     /* e5m2: IEEE-like inf / nan */
        return man == 0 ? (sign ? -INFINITY : INFINITY) : NAN;
    if (fn && !uz && exp == exp_max && man == (1u << man_bits) - 1u)
        return NAN;                                /* e4m3fn: S.1111.111 */
    double v;
    if (exp == 0)                                  /* subnormal: man * 2^(1-bias-man_bits) */
        v = ldexp((double)man, 1 - bias - man_bits);
    else
        v = ldexp((double)((1u << man_bits) | man), (int)exp - bias - man_bits);
    return sign ? -v : v;
}

static void fp8_init(void)
{
    for (unsigned c = 0; c < 256; c++) {
        fp8_table[0][c] = fp8_decode(c, 4, 3, 7, 1, 0);   /* float8_e4m3fn */
        fp8_table[1][c] = fp8_decode(c, 5, 2, 15, 0, 0);  /* float8_e5m2 */
        fp8_table[2][c] = fp8_decode(c, 4, 3, 8, 1, 1);   /* float8_e4m3fnuz */
        fp8_table[3][c] = fp8_decode(c, 5, 2, 16, 1, 1);  /* float8_e5m2fnuz */
    }
}


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
    /* pairs with a non-finite value, by kind (pair_kernel.NONFINITE_KINDS) */
    Py_ssize_t nan_a_only, nan_b_only, inf_a_only, inf_b_only, nan_both;
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
        int nx = isnan(x), ny = isnan(y);
        int both_nan = nx && ny;
        if (!(x == y || (nan_equal && both_nan)))
            r->n_out++;
        r->nan_a_only += nx && !ny;
        r->nan_b_only += ny && !nx;
        r->inf_a_only += !fx && !nx && fy;
        r->inf_b_only += !fy && !ny && fx;
        r->nan_both += both_nan;
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

#define DEFINE_WIDEN_TABLE(NAME, T)                                                         \
    static void NAME(const void *p, Py_ssize_t i0, Py_ssize_t k, double *out)               \
    {                                                                                       \
        const uint8_t *s = (const uint8_t *)p + i0;                                         \
        for (Py_ssize_t i = 0; i < k; i++)                                                  \
            out[i] = fp8_table[T][s[i]];                                                    \
    }
DEFINE_WIDEN_TABLE(widen_f8e4m3fn, 0)
DEFINE_WIDEN_TABLE(widen_f8e5m2, 1)
DEFINE_WIDEN_TABLE(widen_f8e4m3fnuz, 2)
DEFINE_WIDEN_TABLE(widen_f8e5m2fnuz, 3)

/* Integers convert as C (and torch's .double()) converts them: exactly below 2**53, to
 * nearest beyond. bool: 0 or 1. */
#define DEFINE_WIDEN_INT(NAME, T)                                                           \
    static void NAME(const void *p, Py_ssize_t i0, Py_ssize_t k, double *out)               \
    {                                                                                       \
        const T *s = (const T *)p + i0;                                                     \
        for (Py_ssize_t i = 0; i < k; i++)                                                  \
            out[i] = (double)s[i];                                                          \
    }
DEFINE_WIDEN_INT(widen_i8, int8_t)
DEFINE_WIDEN_INT(widen_u8, uint8_t)
DEFINE_WIDEN_INT(widen_i16, int16_t)
DEFINE_WIDEN_INT(widen_i32, int32_t)
DEFINE_WIDEN_INT(widen_i64, int64_t)
DEFINE_WIDEN_INT(widen_u16, uint16_t)
DEFINE_WIDEN_INT(widen_u32, uint32_t)
DEFINE_WIDEN_INT(widen_u64, uint64_t)

static void widen_bool(const void *p, Py_ssize_t i0, Py_ssize_t k, double *out)
{
    const uint8_t *s = (const uint8_t *)p + i0;
    for (Py_ssize_t i = 0; i < k; i++)
        out[i] = s[i] != 0 ? 1.0 : 0.0;
}

typedef void (*widen_fn)(const void *, Py_ssize_t, Py_ssize_t, double *);
static const widen_fn WIDEN[NKINDS] = {
    widen_f32, widen_f64, widen_bf16, widen_f16, widen_f8e4m3fn, widen_f8e5m2,
    widen_f8e4m3fnuz, widen_f8e5m2fnuz, widen_i8, widen_u8, widen_i16, widen_i32,
    widen_i64, widen_bool, widen_u16, widen_u32, widen_u64};

/* The fast loop, written once for the compiler's portable vector types (GCC/Clang
 * vector extensions): VW doubles per vector; comparisons give all-ones / zero lane masks.
 * It is compiled for 2 lanes (SSE2 on baseline x86-64, NEON on arm64) and, on x86-64,
 * also for 4 lanes with AVX2 (and FMA, for the squares), chosen at import when the CPU
 * has both. Same operations, same numbers: only the sums of squares differ (grouping, and
 * the fused multiply-add). T is the element type it reads (double, or float widened by
 * LOAD in registers); with atol = rtol = 0 (exact) the closeness test is a == b.
 *
 * Contract: k is a multiple of 2*VW and the tolerances are finite and >= 0. The loop
 * assumes every value is finite and every |a-b| too (then a == b implies
 * |a-b| <= atol + rtol*|b|, so torch.isclose's rule is that comparison alone); its sums
 * of squares and max |a-b| tell whether that held, as NaN and Inf propagate into them.
 * Returns 0 (and records nothing) when it did not, or when squares underflowed to zero:
 * the caller then takes the careful per-element path. It does not divide: it only flags
 * whether some |a-b|/|b| might beat the best quotient q so far, and only then are the
 * run's quotients computed. The flag is safe: with t = fl(fl(q*|b|) * 0.99999),
 * t < q*|b| whenever t is a normal number, so |a-b| < t implies |a-b|/|b| < q, and the
 * rounded quotient cannot exceed q (rounding is monotonic). */
#define DEFINE_PAIR_FAST(NAME, ATTR, T, LOAD, VD, VI, VW, VMAX, SQ)                         \
    ATTR static inline __attribute__((always_inline)) int NAME##_body(                      \
        const T *xs, const T *ys, Py_ssize_t k, double atol, double rtol, PairResult *r,    \
        double *qa_out, double *qb_out, const int exact)                                    \
    {                                                                                       \
        const VD zero = {0.0};                                                              \
        const VD vmin = zero + DBL_MIN;                                                     \
        const VD vat = zero + atol, vrt = zero + rtol;                                      \
        const VD vq = zero + (r->has_rel ? r->max_rel : 0.0);                               \
        const VD margin = zero + 0.99999;                                                   \
        const VI absmask = (VI){0} + 0x7fffffffffffffffLL;                                  \
        VD sa0 = zero, sa1 = zero, sb0 = zero, sb1 = zero, mx0 = zero, mx1 = zero;          \
        VI close = {0}, cand = {0};                                                         \
        for (Py_ssize_t i = 0; i < k; i += 2 * VW) {                                        \
            VD x0 = LOAD(xs + i), y0 = LOAD(ys + i);                                        \
            VD x1 = LOAD(xs + i + VW), y1 = LOAD(ys + i + VW);                              \
            VD d0 = (VD)((VI)(x0 - y0) & absmask), ay0 = (VD)((VI)y0 & absmask);            \
            VD d1 = (VD)((VI)(x1 - y1) & absmask), ay1 = (VD)((VI)y1 & absmask);            \
            if (exact) { /* atol = rtol = 0: |a-b| <= 0 is a == b for finite values */      \
                close += (x0 == y0) + (x1 == y1); /* lanes: -1 per close element */         \
            } else {                                                                        \
                VD al0 = vrt * ay0, al1 = vrt * ay1;                                        \
                al0 = al0 + vat;                                                            \
                al1 = al1 + vat;                                                            \
                close += (d0 <= al0) + (d1 <= al1);                                         \
            }                                                                               \
            mx0 = VMAX(d0, mx0);                                                            \
            mx1 = VMAX(d1, mx1);                                                            \
            VD t0 = vq * ay0, t1 = vq * ay1;                                                \
            t0 = t0 * margin;                                                               \
            t1 = t1 * margin;                                                               \
            cand |= (d0 >= t0) | (t0 < vmin) | (d1 >= t1) | (t1 < vmin);                    \
            sa0 = SQ(x0, sa0);                                                              \
            sb0 = SQ(y0, sb0);                                                              \
            sa1 = SQ(x1, sa1);                                                              \
            sb1 = SQ(y1, sb1);                                                              \
        }                                                                                   \
        double qa = 0.0, qb = 0.0, m = 0.0;                                                 \
        long long n_close = 0, any_cand = 0;                                                \
        for (int j = 0; j < VW; j++) {                                                      \
            qa += sa0[j] + sa1[j];                                                          \
            qb += sb0[j] + sb1[j];                                                          \
            m = mx0[j] > m ? mx0[j] : m;                                                    \
            m = mx1[j] > m ? mx1[j] : m;                                                    \
            n_close -= close[j];                                                            \
            any_cand |= cand[j];                                                            \
        }                                                                                   \
        /* Not finite: a NaN/Inf value or an overflowing square or difference. */           \
        if (!isfinite(qa) || !isfinite(qb) || !isfinite(m))                                 \
            return 0;                                                                       \
        int nza = qa > 0.0, nzb = qb > 0.0;                                                 \
        for (Py_ssize_t i = 0; !nza && i < k; i++)                                          \
            if ((double)xs[i] != 0.0)                                                       \
                return 0; /* squares underflowed: the careful path records it */            \
        for (Py_ssize_t i = 0; !nzb && i < k; i++)                                          \
            if ((double)ys[i] != 0.0)                                                       \
                return 0;                                                                   \
        r->n_out += k - (Py_ssize_t)n_close;                                                \
        if (!r->has_abs || m > r->max_abs)                                                  \
            r->max_abs = m;                                                                 \
        r->has_abs = 1;                                                                     \
        r->nz_a |= nza;                                                                     \
        r->nz_b |= nzb;                                                                     \
        r->fin_a += k;                                                                      \
        r->fin_b += k;                                                                      \
        if (any_cand) {                                                                     \
            for (Py_ssize_t i = 0; i < k; i++) {                                            \
                double ay = fabs((double)ys[i]);                                            \
                if (ay != 0.0) {                                                            \
                    double v = fabs((double)xs[i] - (double)ys[i]) / ay;                    \
                    if (!r->has_rel || v > r->max_rel) {                                    \
                        r->max_rel = v;                                                     \
                        r->has_rel = 1;                                                     \
                    }                                                                       \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        *qa_out = qa;                                                                       \
        *qb_out = qb;                                                                       \
        return 1;                                                                           \
    }                                                                                       \
    ATTR static int NAME(const T *xs, const T *ys, Py_ssize_t k, double atol, double rtol,  \
                         PairResult *r, double *qa_out, double *qb_out)                     \
    {                                                                                       \
        if (atol == 0.0 && rtol == 0.0) /* diff's default: exact */                         \
            return NAME##_body(xs, ys, k, atol, rtol, r, qa_out, qb_out, 1);                \
        return NAME##_body(xs, ys, k, atol, rtol, r, qa_out, qb_out, 0);                    \
    }

typedef double v2d __attribute__((vector_size(16)));
typedef long long v2i __attribute__((vector_size(16)));

#if defined(__SSE2__)
#include <immintrin.h>
#define MAX2(a, b) ((v2d)_mm_max_pd((__m128d)(a), (__m128d)(b))) /* a > b ? a : b */
#else
static inline v2d MAX2(v2d a, v2d b)
{
    v2i gt = a > b;
    return (v2d)(((v2i)a & gt) | ((v2i)b & ~gt));
}
#endif

/* The fast loop's loads: VW doubles from doubles, or from floats widened in registers
 * (exactly, as the buffered widen_f32). */
static inline v2d load2_f64(const double *p)
{
    v2d v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline v2d load2_f32(const float *p)
{
    return (v2d){(double)p[0], (double)p[1]};
}

#define SQ_ADD(x, acc) ((acc) + (x) * (x))
DEFINE_PAIR_FAST(pair_fast2, , double, load2_f64, v2d, v2i, 2, MAX2, SQ_ADD)
DEFINE_PAIR_FAST(pair_fast2_f32, , float, load2_f32, v2d, v2i, 2, MAX2, SQ_ADD)

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AVX2_PATH 1
typedef double v4d __attribute__((vector_size(32)));
typedef long long v4i __attribute__((vector_size(32)));
#define MAX4(a, b) ((v4d)_mm256_max_pd((__m256d)(a), (__m256d)(b)))
#define AVX2 __attribute__((target("avx2,fma")))
/* acc + x*x, one rounding: only the sums of squares, which have a tolerance */
#define SQ_FMA4(x, acc) ((v4d)_mm256_fmadd_pd((__m256d)(x), (__m256d)(x), (__m256d)(acc)))
AVX2 static inline v4d load4_f64(const double *p)
{
    return (v4d)_mm256_loadu_pd(p);
}

AVX2 static inline v4d load4_f32(const float *p)
{
    return (v4d)_mm256_cvtps_pd(_mm_loadu_ps(p));
}

DEFINE_PAIR_FAST(pair_fast4, AVX2, double, load4_f64, v4d, v4i, 4, MAX4, SQ_FMA4)
DEFINE_PAIR_FAST(pair_fast4_f32, AVX2, float, load4_f32, v4d, v4i, 4, MAX4, SQ_FMA4)
#endif

static int use_avx2 = 0;

#ifdef HAVE_AVX2_PATH
/* The 4-lane loops need AVX2 and FMA (every AVX2 CPU of Intel and AMD has both). */
static int cpu_has_wide(void)
{
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

/* The fast loop over k widened pairs (the caller checks its contract's k and tolerances). */
static int pair_fast(const double *xs, const double *ys, Py_ssize_t k, double atol,
                     double rtol, PairResult *r, double *qa, double *qb)
{
#ifdef HAVE_AVX2_PATH
    if (use_avx2)
        return pair_fast4(xs, ys, k, atol, rtol, r, qa, qb);
#endif
    return pair_fast2(xs, ys, k, atol, rtol, r, qa, qb);
}

/* The fast loop straight from the source (no widened copy) where both sides are float32
 * or both float64, the common cases; -1: not such a pair. */
static int pair_fast_direct(const void *pa, const void *pb, int kind, Py_ssize_t i0,
                            Py_ssize_t k, double atol, double rtol, PairResult *r,
                            double *qa, double *qb)
{
    if (kind == F64)
        return pair_fast((const double *)pa + i0, (const double *)pb + i0, k, atol, rtol, r,
                         qa, qb);
    if (kind != F32)
        return -1;
    const float *xs = (const float *)pa + i0, *ys = (const float *)pb + i0;
#ifdef HAVE_AVX2_PATH
    if (use_avx2)
        return pair_fast4_f32(xs, ys, k, atol, rtol, r, qa, qb);
#endif
    return pair_fast2_f32(xs, ys, k, atol, rtol, r, qa, qb);
}

/* Runs of k <= LANE pairs: the fast loop where it applies (on the source itself for
 * float32 and float64 pairs, else on the widened run), else (or when it declines) the
 * careful per-element path on the widened run. */
static void pair_any(const void *pa, const void *pb, int ka, int kb, Py_ssize_t n,
                     double atol, double rtol, int nan_equal, PairResult *r)
{
    double xs[LANE], ys[LANE];
    int tol_ok = atol >= 0.0 && atol < HUGE_VAL && rtol >= 0.0 && rtol < HUGE_VAL;
    for (Py_ssize_t start = 0; start < n; start += LANE) {
        Py_ssize_t k = n - start < LANE ? n - start : LANE;
        double qa = 0.0, qb = 0.0;
        int fast = tol_ok && k % 8 == 0;
        /* 1: done, 0: declined, -1: not a float32 or float64 pair */
        int direct = fast && ka == kb ? pair_fast_direct(pa, pb, ka, start, k, atol, rtol, r,
                                                         &qa, &qb) : -1;
        int done = direct > 0;
        if (!done) {
            WIDEN[ka](pa, start, k, xs);
            WIDEN[kb](pb, start, k, ys);
            if (fast && direct < 0)
                done = pair_fast(xs, ys, k, atol, rtol, r, &qa, &qb);
        }
        if (!done) {
            qa = qb = 0.0;
            for (Py_ssize_t i = 0; i < k; i++)
                pair_one(xs[i], ys[i], atol, rtol, nan_equal, r, &qa, &qb);
        }
        acc_add(&r->sqa, qa);
        acc_add(&r->sqb, qb);
    }
}

/* A float, or None where there is none. Py_BuildValue's "N" takes the reference, and a
 * NULL (a failed allocation) makes it fail and release the other "N" arguments. */
static PyObject *or_none(int has, double v)
{
    if (!has)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(v);
}

/* ---------------------------------------------------------------- one tensor */

typedef struct {
    Py_ssize_t nan, inf, zeros;
    int has;  /* a finite element was seen: lo/hi are set */
    double lo, hi;
    Acc sum, sumabs, sumsq;
} MomResult;

/* Careful path, one element: NaN/Inf counted and left out of the value statistics. */
static inline void mom_one(double x, MomResult *r, double *s, double *sa, double *sq)
{
    if (isnan(x)) {
        r->nan++;
        return;
    }
    if (isinf(x)) {
        r->inf++;
        return;
    }
    r->zeros += x == 0.0;
    *s += x;
    *sa += fabs(x);
    *sq += x * x;
    if (!r->has || x < r->lo)
        r->lo = x;
    if (!r->has || x > r->hi)
        r->hi = x;
    r->has = 1;
}

/* The fast loop for one tensor (same vector types and contract as DEFINE_PAIR_FAST):
 * sum, sum |x|, sum x*x, min, max and the zero count of k finite values; returns 0
 * (recording nothing) if a value was not finite or a sum left the float64 range. */
#define DEFINE_MOM_FAST(NAME, ATTR, T, LOAD, VD, VI, VW, VMIN, VMAX, SQ)                     \
    ATTR static int NAME(const T *xs, Py_ssize_t k, MomResult *r, double *s_out,           \
                         double *sa_out, double *sq_out)                                    \
    {                                                                                       \
        const VD zero = {0.0};                                                              \
        const VI absmask = (VI){0} + 0x7fffffffffffffffLL;                                  \
        VD s0 = zero, s1 = zero, a0 = zero, a1 = zero, q0 = zero, q1 = zero;                \
        VD lo = LOAD(xs), hi = lo;                                                          \
        VI z = {0};                                                                         \
        for (Py_ssize_t i = 0; i < k; i += 2 * VW) {                                        \
            VD x0 = LOAD(xs + i), x1 = LOAD(xs + i + VW);                                   \
            s0 += x0;                                                                       \
            s1 += x1;                                                                       \
            a0 += (VD)((VI)x0 & absmask);                                                   \
            a1 += (VD)((VI)x1 & absmask);                                                   \
            q0 = SQ(x0, q0);                                                                \
            q1 = SQ(x1, q1);                                                                \
            lo = VMIN(VMIN(x0, x1), lo);                                                    \
            hi = VMAX(VMAX(x0, x1), hi);                                                    \
            z += (x0 == zero) + (x1 == zero);                                               \
        }                                                                                   \
        double s = 0.0, sa = 0.0, sq = 0.0, l = lo[0], h = hi[0];                           \
        long long nz = 0;                                                                   \
        for (int j = 0; j < VW; j++) {                                                      \
            s += s0[j] + s1[j];                                                             \
            sa += a0[j] + a1[j];                                                            \
            sq += q0[j] + q1[j];                                                            \
            l = lo[j] < l ? lo[j] : l;                                                      \
            h = hi[j] > h ? hi[j] : h;                                                      \
            nz -= z[j];                                                                     \
        }                                                                                   \
        /* NaN/Inf propagate into the sums (min/max may have dropped them: not used) */     \
        if (!isfinite(sa) || !isfinite(sq) || !isfinite(s))                                 \
            return 0;                                                                       \
        if (sq == 0.0 && sa != 0.0)                                                         \
            return 0; /* squares underflowed: the careful path keeps the same numbers */    \
        r->zeros += (Py_ssize_t)nz;                                                         \
        if (!r->has || l < r->lo)                                                           \
            r->lo = l;                                                                      \
        if (!r->has || h > r->hi)                                                           \
            r->hi = h;                                                                      \
        r->has = 1;                                                                         \
        *s_out = s;                                                                         \
        *sa_out = sa;                                                                       \
        *sq_out = sq;                                                                       \
        return 1;                                                                           \
    }

#if defined(__SSE2__)
#define MIN2(a, b) ((v2d)_mm_min_pd((__m128d)(a), (__m128d)(b))) /* a < b ? a : b */
#else
static inline v2d MIN2(v2d a, v2d b)
{
    v2i lt = a < b;
    return (v2d)(((v2i)a & lt) | ((v2i)b & ~lt));
}
#endif
DEFINE_MOM_FAST(mom_fast2, , double, load2_f64, v2d, v2i, 2, MIN2, MAX2, SQ_ADD)
DEFINE_MOM_FAST(mom_fast2_f32, , float, load2_f32, v2d, v2i, 2, MIN2, MAX2, SQ_ADD)
#ifdef HAVE_AVX2_PATH
#define MIN4(a, b) ((v4d)_mm256_min_pd((__m256d)(a), (__m256d)(b)))
DEFINE_MOM_FAST(mom_fast4, AVX2, double, load4_f64, v4d, v4i, 4, MIN4, MAX4, SQ_FMA4)
DEFINE_MOM_FAST(mom_fast4_f32, AVX2, float, load4_f32, v4d, v4i, 4, MIN4, MAX4, SQ_FMA4)
#endif

/* The fast loop over k widened values. */
static int mom_fast(const double *xs, Py_ssize_t k, MomResult *r, double *s, double *sa,
                    double *sq)
{
#ifdef HAVE_AVX2_PATH
    if (use_avx2)
        return mom_fast4(xs, k, r, s, sa, sq);
#endif
    return mom_fast2(xs, k, r, s, sa, sq);
}

/* The fast loop straight from a float32 or float64 source; -1: another kind. */
static int mom_fast_direct(const void *p, int kind, Py_ssize_t i0, Py_ssize_t k,
                           MomResult *r, double *s, double *sa, double *sq)
{
    if (kind == F64)
        return mom_fast((const double *)p + i0, k, r, s, sa, sq);
    if (kind != F32)
        return -1;
#ifdef HAVE_AVX2_PATH
    if (use_avx2)
        return mom_fast4_f32((const float *)p + i0, k, r, s, sa, sq);
#endif
    return mom_fast2_f32((const float *)p + i0, k, r, s, sa, sq);
}

/* Runs of k <= LANE values, as pair_any: the fast loop on the source or the widened run,
 * else the careful per-element path. */
static void mom_any(const void *p, int kind, Py_ssize_t n, MomResult *r)
{
    double xs[LANE];
    for (Py_ssize_t start = 0; start < n; start += LANE) {
        Py_ssize_t k = n - start < LANE ? n - start : LANE;
        double s = 0.0, sa = 0.0, sq = 0.0;
        int fast = k % 8 == 0;
        int direct = fast ? mom_fast_direct(p, kind, start, k, r, &s, &sa, &sq) : -1;
        int done = direct > 0;
        if (!done) {
            WIDEN[kind](p, start, k, xs);
            if (fast && direct < 0)
                done = mom_fast(xs, k, r, &s, &sa, &sq);
        }
        if (!done) {
            s = sa = sq = 0.0;
            for (Py_ssize_t i = 0; i < k; i++)
                mom_one(xs[i], r, &s, &sa, &sq);
        }
        acc_add(&r->sum, s);
        acc_add(&r->sumabs, sa);
        acc_add(&r->sumsq, sq);
    }
}

PyDoc_STRVAR(moments_block_doc,
"moments_block(ptr, n, kind) -> (nan, inf, zeros, sum, sumabs, sumsq, min, max)\n\n"
"One pass over n contiguous elements (kinds as pair_block); the sums, min and max are over\n"
"the finite elements (min and max None when there is none).");

static PyObject *moments_block(PyObject *self, PyObject *args)
{
    unsigned long long p;
    Py_ssize_t n;
    int kind;
    if (!PyArg_ParseTuple(args, "Kni", &p, &n, &kind))
        return NULL;
    if (kind < 0 || kind >= NKINDS || n < 0) {
        PyErr_SetString(PyExc_ValueError, "moments_block: bad kind or length");
        return NULL;
    }
    MomResult r;
    memset(&r, 0, sizeof r);
    Py_BEGIN_ALLOW_THREADS
    mom_any((const void *)(uintptr_t)p, kind, n, &r);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("nnndddNN", r.nan, r.inf, r.zeros, r.sum.s + r.sum.c,
                         r.sumabs.s + r.sumabs.c, r.sumsq.s + r.sumsq.c,
                         or_none(r.has, r.lo), or_none(r.has, r.hi));
}


PyDoc_STRVAR(pair_block_doc,
"pair_block(ptr_a, ptr_b, n, kind_a, kind_b, atol, rtol, nan_equal)\n"
"-> (n_outside, max_abs, max_rel, sumsq_a, sumsq_b, finite_a, finite_b, nonzero_a, nonzero_b,\n"
"    (nan_a_only, nan_b_only, inf_a_only, inf_b_only, nan_both))\n\n"
"One pass over n contiguous elements at the two addresses (kinds: 0 float32, 1 float64,\n"
"2 bfloat16, 3 float16, 4-7 float8 e4m3fn/e5m2/e4m3fnuz/e5m2fnuz, 8 int8, 9 uint8,\n"
"10 int16, 11 int32, 12 int64, 13 bool, 14 uint16, 15 uint32, 16 uint64: kernel_switch\n"
".C_KINDS). The caller keeps both tensors alive during the call.");

static PyObject *pair_block(PyObject *self, PyObject *args)
{
    unsigned long long pa, pb;
    Py_ssize_t n;
    int ka, kb, nan_equal;
    double atol, rtol;
    if (!PyArg_ParseTuple(args, "KKniiddp", &pa, &pb, &n, &ka, &kb, &atol, &rtol, &nan_equal))
        return NULL;
    if (ka < 0 || ka >= NKINDS || kb < 0 || kb >= NKINDS || n < 0) {
        PyErr_SetString(PyExc_ValueError, "pair_block: bad kind or length");
        return NULL;
    }
    PairResult r;
    memset(&r, 0, sizeof r);
    Py_BEGIN_ALLOW_THREADS
    pair_any((const void *)(uintptr_t)pa, (const void *)(uintptr_t)pb, ka, kb, n, atol, rtol,
             nan_equal, &r);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("nNNddnnii(nnnnn)", r.n_out, or_none(r.has_abs, r.max_abs),
                         or_none(r.has_rel, r.max_rel), r.sqa.s + r.sqa.c, r.sqb.s + r.sqb.c,
                         r.fin_a, r.fin_b, r.nz_a, r.nz_b, r.nan_a_only, r.nan_b_only,
                         r.inf_a_only, r.inf_b_only, r.nan_both);
}

PyDoc_STRVAR(vector_paths_doc,
"vector_paths(use_wide=None) -> (available, in_use): the fast loops compiled in and the\n"
"one in use ('avx2' or '2-lane'); use_wide=False/True switches (tests run both).");

static PyObject *vector_paths(PyObject *self, PyObject *args)
{
    PyObject *want = Py_None;
    if (!PyArg_ParseTuple(args, "|O", &want))
        return NULL;
#ifdef HAVE_AVX2_PATH
    int can = cpu_has_wide();
#else
    int can = 0;
#endif
    if (want != Py_None) {
        int wide = PyObject_IsTrue(want);
        if (wide < 0)
            return NULL;
        if (wide && !can) {
            PyErr_SetString(PyExc_ValueError,
                            "the AVX2 loop is not available on this CPU (it needs AVX2 and FMA)");
            return NULL;
        }
        use_avx2 = wide;
    }
    return Py_BuildValue("(ss)s", "2-lane", can ? "avx2" : "", use_avx2 ? "avx2" : "2-lane");
}

PyDoc_STRVAR(fp8_values_doc,
"fp8_values(kind) -> the 256 values of a float8 kind's codes (4-7), as the kernel decodes them.");

static PyObject *fp8_values(PyObject *self, PyObject *args)
{
    int kind;
    if (!PyArg_ParseTuple(args, "i", &kind))
        return NULL;
    if (kind < F8E4M3FN || kind > F8E5M2FNUZ) {
        PyErr_SetString(PyExc_ValueError, "fp8_values: not a float8 kind");
        return NULL;
    }
    PyObject *out = PyList_New(256);
    if (out == NULL)
        return NULL;
    for (int c = 0; c < 256; c++) {
        PyObject *v = PyFloat_FromDouble(fp8_table[kind - F8E4M3FN][c]);
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, c, v);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"pair_block", pair_block, METH_VARARGS, pair_block_doc},
    {"vector_paths", vector_paths, METH_VARARGS, vector_paths_doc},
    {"moments_block", moments_block, METH_VARARGS, moments_block_doc},
    {"fp8_values", fp8_values, METH_VARARGS, fp8_values_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "optstate.numeric._ckernels",
    "Fused single-pass kernels for kernels.py (optional; a pure-torch path does the same).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__ckernels(void)
{
    fp8_init();
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    use_avx2 = cpu_has_wide();
#endif
    return PyModule_Create(&module);
}
