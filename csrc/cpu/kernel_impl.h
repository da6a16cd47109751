// Vectorised CPU kernels of the MoM loss, written once with ATen's at::vec and
// compiled once per instruction set: include this after defining
// CPU_CAPABILITY (DEFAULT, AVX2, AVX512) and the matching CPU_CAPABILITY_<ISA>
// macro, as kernel_<isa>.cpp do.  The per-row math is mom_loss.h's.
//
// Two layouts, picked by C (kernel.h):
//  * tile path (C <= kTileMaxC, NER): a block is a tile of rows x all classes,
//    copied to a stack buffer as x - rowmax, then ONE vectorised exp over the
//    whole tile -- per-row vectors would be mostly empty lanes for C = 9;
//  * row path (large C, LM vocabularies): each row streams through in chunks
//    of kChunkElems; each chunk's max and exp-sum are computed from L1 and
//    merged online, so the forward reads the logits from memory once.
// Math is in float (double for double logits); accumulators for the reduced
// sums are double.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "../mom_loss.h"
#include "kernel.h"

namespace momkernels::cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

template <typename scalar_t>
using acc_t_of = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// ---------------------------------------------------------------- loading

// n logits of one row starting at p, class stride sC, as acc_t.  Returns p
// itself when it already is contiguous acc_t (no copy), else fills buf.
template <typename scalar_t, typename acc_t>
inline const acc_t* load_span(const scalar_t* p, int64_t sC, int64_t n, acc_t* buf) {
  if (sC == 1) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      return p;
    } else {
      at::vec::convert(p, buf, n);
      return buf;
    }
  }
  for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<acc_t>(p[i * sC]);
  return buf;
}

template <typename acc_t>
inline void store_span(const acc_t* src, acc_t* dst, int64_t n) {
  if (src != dst) std::copy(src, src + n, dst);
}
template <typename acc_t, typename scalar_t>
inline void store_span(const acc_t* src, scalar_t* dst, int64_t n) {
  at::vec::convert(src, dst, n);
}

inline int64_t load_target(const Common& c, int64_t i) {
  return c.t_int32 ? static_cast<int64_t>(static_cast<const int32_t*>(c.t)[i * c.sT])
                   : static_cast<const int64_t*>(c.t)[i * c.sT];
}

template <typename acc_t>
inline acc_t class_weight(const Common& c, int64_t y) {
  return c.w ? static_cast<const acc_t*>(c.w)[y] : acc_t(1);
}

// ---------------------------------------------------------------- exp

// exp of the bulk softmax terms (x - m <= 0, or the gradient's p).  For float,
// ATen's exp_u20 (a degree-5 polynomial, <= 20 ulp, ~2e-6 relative) instead of
// Sleef's 1-ulp exp: it roughly halves the cost of the small-C kernels and is
// far below float32 training noise.  exp_u20 clamps its input, so a NaN would
// come out finite: NaN is passed through explicitly.  The true-class terms
// (log p_y, expm1, log1p) stay exact.
template <typename acc_t>
inline Vectorized<acc_t> bulk_exp(const Vectorized<acc_t>& v) {
  if constexpr (std::is_same_v<acc_t, float>) {
    return Vectorized<acc_t>::blendv(v.exp_u20(), v, v.isnan());
  } else {
    return v.exp();
  }
}

// The bits of a float vector as int32 and back (register moves on AVX2 /
// AVX-512; at::vec::cast goes through memory).
inline Vectorized<int32_t> float_bits(const Vectorized<float>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  return Vectorized<int32_t>(_mm512_castps_si512(v));
#elif defined(CPU_CAPABILITY_AVX2)
  return Vectorized<int32_t>(_mm256_castps_si256(v));
#else
  return at::vec::cast<int32_t>(v);
#endif
}
inline Vectorized<float> bits_float(const Vectorized<int32_t>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  return Vectorized<float>(_mm512_castsi512_ps(v));
#elif defined(CPU_CAPABILITY_AVX2)
  return Vectorized<float>(_mm256_castsi256_ps(v));
#else
  return at::vec::cast<float>(v);
#endif
}

// log1p(u) for u >= 0 in float, inline: musl's log1pf (1 + u = 2^k (1 + f) with
// 1 + f in [sqrt(1/2), sqrt(2)), the rounding error of 1 + u carried as a
// correction term; < 1 ulp).  Sleef's 1-ulp log1p is an out-of-line call that
// cost as much as the rest of the tile forward at C = 9.  NaN propagates; the
// tile forward never passes u < 0 or +inf (u = Z - 1 with 1 <= Z <= C).
template <typename acc_t>
inline Vectorized<acc_t> tile_log1p(const Vectorized<acc_t>& u) {
  if constexpr (!std::is_same_v<acc_t, float>) {
    return u.log1p();
  } else {
    using Vec = Vectorized<float>;
    using Vi = Vectorized<int32_t>;
    const Vec one(1.0f);
    const Vec s = u + one;
    const Vi iu = float_bits(s) + Vi(0x3f800000 - 0x3f3504f3);
    const Vi ki = (iu >> Vi(23)) - Vi(0x7f);
    const Vec k = at::vec::convert_to_fp_of_same_size<float>(ki);
    // c = (1 + u) - s, exact (Sterbenz) in either form; relative to s
    const Vec big = k >= Vec(2.0f);
    const Vec c = Vec::blendv(u - (s - one), one - (s - u), big) / s;
    const Vec f = bits_float((iu & Vi(0x007fffff)) + Vi(0x3f3504f3)) - one;
    const Vec sf = f / (Vec(2.0f) + f);
    const Vec z = sf * sf, w = z * z;
    const Vec t1 = w * at::vec::fmadd(w, Vec(0.24279078841f), Vec(0.40000972152f));
    const Vec t2 = z * at::vec::fmadd(w, Vec(0.28498786688f), Vec(0.66666662693f));
    const Vec R = t2 + t1;
    const Vec hfsq = Vec(0.5f) * f * f;
    const Vec ln2_hi(6.9313812256e-01f), ln2_lo(9.0580006145e-06f);
    return sf * (hfsq + R) + (k * ln2_lo + c) - hfsq + f + k * ln2_hi;
  }
}

// exp of x - rowmax in the tile forward: exp_u20 for float without
// bulk_exp's NaN pass-through (the caller makes NaN rows NaN through the
// normaliser instead; exp_u20 turns a NaN input into a large finite value or
// +inf, so rows that must get exact zeros are masked after the multiply),
// exact exp for double.
//
// AVX-512 float: a leaner exp for d = x - m <= 0 than exp_u20 (11 instead of
// 18 instructions, ~2 ulp instead of 20): d clamped at -150 (exp underflows to
// exactly 0 below that, so -inf logits give 0), n = round(d log2 e),
// r = d - n ln2 with ln2 split in two, exp_u20's degree-5 polynomial on
// |r| <= ln2 / 2 (constant term 1: exp(0) is exactly 1, which the tie count
// relies on), and p * 2^n with vscalefps.
template <typename acc_t>
inline Vectorized<acc_t> tile_exp(const Vectorized<acc_t>& v) {
  if constexpr (std::is_same_v<acc_t, float>) {
#if defined(CPU_CAPABILITY_AVX512)
    const __m512 t = _mm512_max_ps(v, _mm512_set1_ps(-150.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(t, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), t);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(0.00828929059f), _mm512_set1_ps(0.0418978221f));
    p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.166676521f));
    p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.499991506f));
    p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.999999701f));
    p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(1.0f));
    return Vectorized<float>(_mm512_scalef_ps(p, n));
#else
    return v.exp_u20();
#endif
  } else {
    return v.exp();
  }
}

// ---------------------------------------------------------------- lane masks

// Per-lane predicates of the tile path.  With AVX-512 they live in mask
// registers: one compare, then a masked blend or add (at::vec's compare
// returns a vector, which costs a mask -> vector -> mask round trip per use).
// Elsewhere a mask is at::vec's all-ones-lanes vector.  max() may drop a NaN
// operand: the tile forward detects NaN rows on its own.
template <typename acc_t>
struct LaneOps {
  using Vec = Vectorized<acc_t>;
  using Mask = Vec;
  static Mask eq(const Vec& a, const Vec& b) { return a == b; }
  static Mask gt(const Vec& a, const Vec& b) { return a > b; }
  static Mask ne(const Vec& a, const Vec& b) { return a != b; }
  static Mask isnan(const Vec& a) { return a.isnan(); }
  static Mask both(const Mask& a, const Mask& b) { return a & b; }
  static Vec sel(const Mask& m, const Vec& t, const Vec& f) { return Vec::blendv(f, t, m); }
  static Vec add_if(const Vec& acc, const Mask& m, const Vec& v) { return acc + (v & m); }
  static Vec add_unless(const Vec& acc, const Mask& m, const Vec& v) {
    return acc + Vec::blendv(v, Vec(0), m);
  }
  static Vec max(const Vec& a, const Vec& b) { return at::vec::maximum(a, b); }
};

#if defined(CPU_CAPABILITY_AVX512)
template <>
struct LaneOps<float> {
  using Vec = Vectorized<float>;
  using Mask = __mmask16;
  static Mask eq(const Vec& a, const Vec& b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static Mask gt(const Vec& a, const Vec& b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static Mask ne(const Vec& a, const Vec& b) { return _mm512_cmp_ps_mask(a, b, _CMP_NEQ_UQ); }
  static Mask isnan(const Vec& a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  static Mask both(Mask a, Mask b) { return _kand_mask16(a, b); }
  static Vec sel(Mask m, const Vec& t, const Vec& f) { return _mm512_mask_blend_ps(m, f, t); }
  static Vec add_if(const Vec& acc, Mask m, const Vec& v) { return _mm512_mask_add_ps(acc, m, acc, v); }
  static Vec add_unless(const Vec& acc, Mask m, const Vec& v) {
    return _mm512_mask_add_ps(acc, _knot_mask16(m), acc, v);
  }
  static Vec max(const Vec& a, const Vec& b) { return _mm512_max_ps(a, b); }
};

template <>
struct LaneOps<double> {
  using Vec = Vectorized<double>;
  using Mask = __mmask8;
  static Mask eq(const Vec& a, const Vec& b) { return _mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ); }
  static Mask gt(const Vec& a, const Vec& b) { return _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ); }
  static Mask ne(const Vec& a, const Vec& b) { return _mm512_cmp_pd_mask(a, b, _CMP_NEQ_UQ); }
  static Mask isnan(const Vec& a) { return _mm512_cmp_pd_mask(a, a, _CMP_UNORD_Q); }
  static Mask both(Mask a, Mask b) { return _kand_mask8(a, b); }
  static Vec sel(Mask m, const Vec& t, const Vec& f) { return _mm512_mask_blend_pd(m, f, t); }
  static Vec add_if(const Vec& acc, Mask m, const Vec& v) { return _mm512_mask_add_pd(acc, m, acc, v); }
  static Vec add_unless(const Vec& acc, Mask m, const Vec& v) {
    return _mm512_mask_add_pd(acc, _knot_mask8(m), acc, v);
  }
  static Vec max(const Vec& a, const Vec& b) { return _mm512_max_pd(a, b); }
};
#endif

// ---------------------------------------------------------------- reductions

template <typename acc_t>
inline acc_t span_max(const acc_t* v, int64_t n) {
  using Vec = Vectorized<acc_t>;
  return at::vec::reduce_all<acc_t>(
      [](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, v, n);
}

// Softmax normaliser parts of a span relative to its max m: the number of
// elements whose exp(x - m) is exactly 1 (ties with the max) and the sum of
// the others; see mom_loss.h's log_normaliser for why they are kept apart.
template <typename acc_t>
inline void span_expsum(const acc_t* v, int64_t n, acc_t m, acc_t& ties, acc_t& rest) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const Vec vm(m), one(1), zero(0);
  Vec vr(0), vt(0);
  int64_t i = 0;
  for (; i + V <= n; i += V) {
    const Vec e = bulk_exp(Vec::loadu(v + i) - vm);
    const Vec tie = (e == one);
    vr += Vec::blendv(e, zero, tie);
    vt += (tie & one);
  }
  acc_t r = at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, vr);
  acc_t t = at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, vt);
  for (; i < n; ++i) {
    const acc_t e = std::exp(v[i] - m);
    if (e == acc_t(1)) t += acc_t(1); else r += e;
  }
  ties = t;
  rest = r;
}

// sum_c w_c (m - x_c) >= 0 over a span (all terms non-negative: no
// cancellation) and sum_c w_c; w == nullptr means unit weights.
template <typename acc_t>
inline void span_weighted_dev(const acc_t* v, const acc_t* w, int64_t n, acc_t m,
                              acc_t& wdev, acc_t& wsum) {
  using Vec = Vectorized<acc_t>;
  if (w == nullptr) {
    wdev = at::vec::map_reduce_all<acc_t>(
        [m](Vec x) { return Vec(m) - x; }, [](Vec& a, Vec& b) { return a + b; }, v, n);
    wsum = acc_t(n);
  } else {
    wdev = at::vec::map2_reduce_all<acc_t>(
        [m](Vec x, Vec ww) { return (Vec(m) - x) * ww; },
        [](Vec& a, Vec& b) { return a + b; }, v, w, n);
    wsum = at::vec::reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, w, n);
  }
}

// ---------------------------------------------------------------- per row

// Running online-softmax state of one row.
template <typename acc_t>
struct RowState {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  acc_t ties = 0, rest = 0;  // normaliser relative to m
  acc_t wdev = 0, wsum = 0;  // label smoothing: sum w (m - x), sum w so far

  // Merge a span whose own max is cm.
  void merge(acc_t cm, acc_t cties, acc_t crest, acc_t cwdev, acc_t cwsum) {
    if (cm > m) {
      const acc_t scale = std::exp(m - cm);  // 0 for the first span (m = -inf)
      rest = (ties + rest) * scale + crest;
      ties = cties;
      wdev = (wsum > 0 ? wdev + (cm - m) * wsum : acc_t(0)) + cwdev;
      m = cm;
    } else if (cm == m) {
      ties += cties;
      rest += crest;
      wdev += cwdev;
    } else {  // cm < m, or NaN, which propagates through scale
      const acc_t scale = std::exp(cm - m);
      rest += (cties + crest) * scale;
      wdev += cwdev + (m - cm) * cwsum;
    }
    wsum += cwsum;
  }
};

// Loss of one valid row from its statistics; also returns lp = log p_y.
template <typename acc_t>
inline acc_t row_value(const Common& c, acc_t x_y, acc_t m, acc_t logs, acc_t wdev, acc_t w_y) {
  const acc_t lp = (x_y - m) - logs;
  acc_t ell = w_y * row_loss<acc_t>(lp, c.opt).value;
  if (c.opt.label_smoothing > 0) {
    const acc_t eps = acc_t(c.opt.label_smoothing);
    ell = (acc_t(1) - eps) * ell + smoothing_value<acc_t>(wdev, acc_t(c.W), logs, eps, c.C);
  }
  return ell;
}

// Gradient coefficients of one valid row, already scaled by the upstream
// gradient g and the row coefficient: grad_j = P * p_j - S * w_j  (j != y),
// grad_y = A * (p_y - 1) + Bs * p_y - S * w_y, with P = A + Bs.
template <typename acc_t>
struct RowGrad {
  acc_t A, Bs, S;
};

template <typename acc_t>
inline RowGrad<acc_t> row_grad(const Common& c, acc_t scale, acc_t lp, acc_t w_y) {
  const acc_t h = row_loss<acc_t>(lp, c.opt).h;
  RowGrad<acc_t> r;
  const acc_t eps = acc_t(c.opt.label_smoothing);
  r.A = scale * (acc_t(1) - eps) * w_y * h;
  r.S = scale * eps / acc_t(c.C);
  r.Bs = r.S * acc_t(c.W);
  return r;
}

// mom_loss.h's row_loss for focal and dice on V rows at once (the tile path):
// the same formulas with at::vec's exp / expm1 / pow (Sleef, 1 ulp) and
// selects for the branches.  Lanes with lp = 0 (padding, ignored rows) give
// finite values, which the callers mask.
template <typename acc_t>
inline void row_loss_vec(const Vectorized<acc_t>& lp, const LossOptions& o,
                         Vectorized<acc_t>& value, Vectorized<acc_t>& h) {
  using Vec = Vectorized<acc_t>;
  const Vec zero(0), one(1);
  const Vec p = lp.exp();
  const Vec q = zero - lp.expm1();
  const Vec q_pos = q > zero;
  if (o.kind == LossKind::FOCAL) {
    const Vec g(static_cast<acc_t>(o.gamma));
    const Vec qg = q.pow(g);  // pow(0, 0) == 1: gamma = 0 is exactly CE
    const Vec lp_over_q = Vec::blendv(Vec(acc_t(-1)), lp / q, q_pos);
    value = zero - qg * lp;
    h = qg * (one - g * p * lp_over_q);
    return;
  }
  const Vec al(static_cast<acc_t>(o.dice_alpha));
  const Vec d(static_cast<acc_t>(o.dice_smooth));
  const Vec qa = q.pow(al);
  const Vec a = qa * p;
  const Vec den = a + one + d;
  value = one - (Vec(acc_t(2)) * a + d) / den;
  const acc_t qmin = sizeof(acc_t) == sizeof(float) ? acc_t(FLT_MIN) : acc_t(DBL_MIN);
  const Vec q0(o.dice_alpha == 1.0 ? acc_t(1) : acc_t(0));  // q^(al-1) at q == 0
  const Vec qa1 = Vec::blendv(q0, at::vec::maximum(q, Vec(qmin)).pow(al - one), q_pos);
  const Vec da_dp = qa - al * p * qa1;
  h = p * (Vec(acc_t(2)) + d) / (den * den) * da_dp;
}

// Per-block bookkeeping shared by both paths.
struct BlockSums {
  double s_valid = 0, s_o = 0, denom = 0;
  int64_t bad = -1;
};

template <typename acc_t, typename scalar_t>
inline void finish_row(const FwdArgs& a, int64_t i, int64_t y, bool valid, acc_t ell, acc_t w_y,
                       BlockSums& bs) {
  const Common& c = a.c;
  if (!valid) ell = acc_t(0);
  if (valid) {
    bs.s_valid += double(ell);
    bs.denom += double(w_y);
    if (y == c.o_index) bs.s_o += double(ell);
  }
  if (a.none_out) {
    const double coef = y == c.o_index ? a.none_a + a.none_b : a.none_a;
    static_cast<scalar_t*>(a.none_out)[i] =
        static_cast<scalar_t>(valid ? acc_t(coef) * ell : acc_t(0));
  }
}

// Classifies a target: returns true for a valid row; marks out-of-range ones.
inline bool check_target(const Common& c, int64_t i, int64_t y, BlockSums& bs, bool& bad) {
  bad = false;
  if (y == c.ignore_index) return false;
  if (y < 0 || y >= c.C) {
    bad = true;
    if (bs.bad < 0) bs.bad = i;
    return false;
  }
  return true;
}

// ---------------------------------------------------------------- forward

template <typename scalar_t>
void forward_rows(const FwdArgs& a, int64_t blk) {
  using acc_t = acc_t_of<scalar_t>;
  const Common& c = a.c;
  const scalar_t* x = static_cast<const scalar_t*>(c.x);
  acc_t* stats = static_cast<acc_t*>(a.stats_out);
  const acc_t* w = static_cast<const acc_t*>(c.w);
  const bool smooth = c.opt.label_smoothing > 0;
  alignas(64) acc_t buf[kChunkElems];
  BlockSums bs;
  const int64_t r0 = blk * c.block_rows, r1 = std::min(c.N, r0 + c.block_rows);
  for (int64_t i = r0; i < r1; ++i) {
    const int64_t y = load_target(c, i);
    bool bad;
    const bool valid = check_target(c, i, y, bs, bad);
    if (!valid) {
      stats[2 * i] = stats[2 * i + 1] = acc_t(0);
      finish_row<acc_t, scalar_t>(a, i, y, false, acc_t(0), acc_t(0), bs);
      if (bad && a.none_out)
        static_cast<scalar_t*>(a.none_out)[i] = std::numeric_limits<scalar_t>::quiet_NaN();
      continue;
    }
    const scalar_t* row = x + i * c.sN;
    RowState<acc_t> st;
    for (int64_t c0 = 0; c0 < c.C; c0 += kChunkElems) {
      const int64_t n = std::min(kChunkElems, c.C - c0);
      const acc_t* v = load_span(row + c0 * c.sC, c.sC, n, buf);
      const acc_t cm = span_max(v, n);
      acc_t cties = 0, crest = 0, cwdev = 0, cwsum = 0;
      // A chunk whose logits are all -inf adds exactly 0 to the normaliser
      // (exp(x - cm) would be exp(-inf + inf) = NaN); its smoothing term is
      // +inf (or NaN for a zero weight), as in PyTorch, whatever the reference.
      const bool all_neg_inf = cm == -std::numeric_limits<acc_t>::infinity();
      if (!all_neg_inf) span_expsum(v, n, cm, cties, crest);
      if (smooth)
        span_weighted_dev(v, w ? w + c0 : nullptr, n, all_neg_inf ? acc_t(0) : cm, cwdev, cwsum);
      st.merge(cm, cties, crest, cwdev, cwsum);
    }
    const acc_t logs = log_normaliser(st.ties, st.rest);
    stats[2 * i] = st.m;
    stats[2 * i + 1] = logs;
    const acc_t w_y = class_weight<acc_t>(c, y);
    const acc_t x_y = static_cast<acc_t>(row[y * c.sC]);
    finish_row<acc_t, scalar_t>(a, i, y, true, row_value(c, x_y, st.m, logs, st.wdev, w_y), w_y, bs);
  }
  a.partials[3 * blk] = bs.s_valid;
  a.partials[3 * blk + 1] = bs.s_o;
  a.partials[3 * blk + 2] = bs.denom;
  a.bad_row[blk] = bs.bad;
}

// Tile path: rows in vector lanes.  A group of V = Vec::size() rows is
// transposed into cols[j * V + l] = x[row l][class j], so every pass over the C
// classes is one vector op for V rows: no horizontal reductions and no
// per-row transcendental calls for ce (log1p, exp and expm1 run on vectors).
template <typename scalar_t, typename acc_t>
inline void load_cols(const Common& c, int64_t i0, int64_t nr, acc_t* cols) {
  constexpr int64_t V = Vectorized<acc_t>::size();
  const int64_t C = c.C;
  const scalar_t* x = static_cast<const scalar_t*>(c.x);
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    // a full group of float rows with unit class stride: one vector gather
    // per class, rows sN apart (int32 offsets: checked to fit)
    if (nr == V && c.sC == 1 && c.sN * V < (int64_t(1) << 31)) {
      alignas(64) int32_t idx[V];
      for (int64_t l = 0; l < V; ++l) idx[l] = int32_t(l * c.sN);
      const Vectorized<int32_t> vidx = Vectorized<int32_t>::loadu(idx);
      const float* base = x + i0 * c.sN;
      for (int64_t j = 0; j < C; ++j)
        at::vec::gather<sizeof(float)>(base + j, vidx).store(cols + j * V);
      return;
    }
  }
  for (int64_t l = 0; l < nr; ++l) {
    const scalar_t* row = x + (i0 + l) * c.sN;
    if (c.sC == 1) {
      for (int64_t j = 0; j < C; ++j) cols[j * V + l] = static_cast<acc_t>(row[j]);
    } else {
      for (int64_t j = 0; j < C; ++j) cols[j * V + l] = static_cast<acc_t>(row[j * c.sC]);
    }
  }
  for (int64_t l = nr; l < V; ++l) {
    for (int64_t j = 0; j < C; ++j) cols[j * V + l] = acc_t(0);
  }
}

// The inverse of load_cols for a contiguous (rows, C) output: out[l * C + j] =
// cols[j * V + l] for the first nr rows.  AVX-512 scatters one class column
// per instruction; elsewhere a scalar transpose.
template <typename acc_t, int64_t V>
inline void store_rows(const acc_t* cols, int64_t C, int64_t nr, acc_t* out) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<acc_t, float> && V == 16) {
    if (nr == V) {
      const __m512i idx = _mm512_mullo_epi32(
          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
          _mm512_set1_epi32(int32_t(C)));
      for (int64_t j = 0; j < C; ++j)
        _mm512_i32scatter_ps(out + j, idx, _mm512_load_ps(cols + j * V), sizeof(float));
      return;
    }
  }
#endif
  for (int64_t l = 0; l < nr; ++l) {
    acc_t* row = out + l * C;
    for (int64_t j = 0; j < C; ++j) row[j] = cols[j * V + l];
  }
}

// store_rows for half-precision output: the float tile is rounded once, with
// at::vec's vectorised conversion, into tmp (C * V values, same layout), then
// transposed as 2-byte values.
template <typename scalar_t, typename acc_t, int64_t V>
inline void store_rows_reduced(const acc_t* cols, int64_t C, int64_t nr, scalar_t* tmp,
                               scalar_t* out) {
  static_assert(std::is_same_v<acc_t, float>);
  at::vec::convert(cols, tmp, C * V);
  for (int64_t l = 0; l < nr; ++l) {
    scalar_t* row = out + l * C;
    for (int64_t j = 0; j < C; ++j) row[j] = tmp[j * V + l];
  }
}

// Per-lane facts of a group of rows, gathered with integer logic and no
// data-dependent branches; padding lanes (beyond the block) are invalid.
template <typename acc_t, int64_t V>
struct Lanes {
  alignas(64) acc_t xy[V];     // logit of the target class (0 if invalid)
  alignas(64) acc_t wy[V];     // class weight of the target (0 if invalid)
  alignas(64) acc_t valid[V];  // 1 / 0
  alignas(64) acc_t is_o[V];   // 1 / 0: valid and target == o_index
  int64_t y[V];                // target, clamped to 0 when invalid
  bool any_bad;                // an out-of-range target that is not ignore_index
  int64_t first_bad;
};

template <typename acc_t, int64_t V>
inline void classify_lanes(const Common& c, int64_t i0, int64_t nr, const acc_t* cols,
                           Lanes<acc_t, V>& L) {
  const acc_t* w = static_cast<const acc_t*>(c.w);
  L.any_bad = false;
  L.first_bad = -1;
  for (int64_t l = 0; l < V; ++l) {
    const int64_t y = l < nr ? load_target(c, i0 + l) : c.ignore_index;
    const bool ignored = y == c.ignore_index;
    const bool in_range = static_cast<uint64_t>(y) < static_cast<uint64_t>(c.C);
    const bool valid = !ignored && in_range;
    if (!ignored && !in_range && !L.any_bad) {
      L.any_bad = true;
      L.first_bad = i0 + l;
    }
    const int64_t yc = valid ? y : 0;
    L.y[l] = yc;
    L.xy[l] = valid ? cols[yc * V + l] : acc_t(0);
    L.wy[l] = valid ? (w ? w[yc] : acc_t(1)) : acc_t(0);
    L.valid[l] = valid ? acc_t(1) : acc_t(0);
    L.is_o[l] = valid && y == c.o_index ? acc_t(1) : acc_t(0);
  }
}

// Targets of a block as acc_t: the class for a valid row, -1 for an ignored
// or out-of-range one (and for the padding up to a multiple of V); returns the
// first out-of-range row (not ignore_index), or -1.  Contiguous targets take
// classify_span: a scalar loop (GCC compiles it to branches), or 8 int64
// targets at a time with AVX-512.
template <typename acc_t, typename tgt_t>
inline bool classify_span_scalar(const tgt_t* t, int64_t n, int64_t C, int64_t ignore,
                                 acc_t* ycls) {
  bool any_bad = false;
  for (int64_t l = 0; l < n; ++l) {
    const int64_t y = int64_t(t[l]);
    const bool ign = y == ignore;
    const bool in_range = static_cast<uint64_t>(y) < static_cast<uint64_t>(C);
    ycls[l] = (in_range && !ign) ? acc_t(y) : acc_t(-1);
    any_bad |= !ign && !in_range;
  }
  return any_bad;
}

template <typename acc_t, typename tgt_t>
inline bool classify_span(const tgt_t* t, int64_t n, int64_t C, int64_t ignore, acc_t* ycls) {
  return classify_span_scalar(t, n, C, ignore, ycls);
}

#if defined(CPU_CAPABILITY_AVX512)
// int64 targets -> float classes, 8 at a time with mask compares (the scalar
// loop compiles to branches, mispredicted on NER targets); the tail is scalar.
template <>
inline bool classify_span<float, int64_t>(const int64_t* t, int64_t n, int64_t C, int64_t ignore,
                                          float* ycls) {
  const __m512i vign = _mm512_set1_epi64(ignore), vC = _mm512_set1_epi64(C);
  const __m256 minus_one = _mm256_set1_ps(-1.0f);
  __mmask8 bad = 0;
  int64_t l = 0;
  for (; l + 8 <= n; l += 8) {
    const __m512i y = _mm512_loadu_si512(t + l);
    const __mmask8 ign = _mm512_cmpeq_epi64_mask(y, vign);
    const __mmask8 in_range = _mm512_cmplt_epu64_mask(y, vC);  // negatives are huge unsigned
    const __mmask8 valid = _kandn_mask8(ign, in_range);
    bad = _kor_mask8(bad, _kandn_mask8(ign, _knot_mask8(in_range)));
    _mm256_storeu_ps(ycls + l, _mm256_mask_blend_ps(valid, minus_one, _mm512_cvtepi64_ps(y)));
  }
  const bool tail_bad = classify_span_scalar(t + l, n - l, C, ignore, ycls + l);
  return bad != 0 || tail_bad;
}
#endif

template <typename acc_t>
inline int64_t classify_block(const Common& c, int64_t r0, int64_t n, int64_t n_pad,
                              acc_t* ycls) {
  bool any_bad;
  if (c.sT == 1) {
    any_bad = c.t_int32
                  ? classify_span(static_cast<const int32_t*>(c.t) + r0, n, c.C, c.ignore_index, ycls)
                  : classify_span(static_cast<const int64_t*>(c.t) + r0, n, c.C, c.ignore_index, ycls);
  } else {
    any_bad = false;
    for (int64_t l = 0; l < n; ++l) {
      const int64_t y = load_target(c, r0 + l);
      const bool ign = y == c.ignore_index;
      const bool in_range = static_cast<uint64_t>(y) < static_cast<uint64_t>(c.C);
      ycls[l] = (in_range && !ign) ? acc_t(y) : acc_t(-1);
      any_bad |= !ign && !in_range;
    }
  }
  for (int64_t l = n; l < n_pad; ++l) ycls[l] = acc_t(-1);
  if (!any_bad) return -1;
  for (int64_t l = 0; l < n; ++l) {  // rare: find the first bad row
    const int64_t y = load_target(c, r0 + l);
    if (y != c.ignore_index && (y < 0 || y >= c.C)) return r0 + l;
  }
  return -1;
}

template <typename scalar_t>
void forward_tile(const FwdArgs& a, int64_t blk) {
  using acc_t = acc_t_of<scalar_t>;
  using Vec = Vectorized<acc_t>;
  using L = LaneOps<acc_t>;
  using Mask = typename L::Mask;
  constexpr int64_t V = Vec::size();
  const Common& c = a.c;
  const int64_t C = c.C;
  acc_t* stats = static_cast<acc_t*>(a.stats_out);
  const acc_t* w = static_cast<const acc_t*>(c.w);
  const bool smooth = c.opt.label_smoothing > 0;
  const bool is_ce = c.opt.kind == LossKind::CE;
  const acc_t eps = acc_t(c.opt.label_smoothing);
  alignas(64) acc_t cols[kTileMaxC * V];
  alignas(64) acc_t m_l[V], logs_l[V], ell_l[V], isx_l[V];
  alignas(64) acc_t ycls[kTileRows + V];
  const Vec one(1), zero(0), minus_one(-1);
  // fused gradient, written in the logits dtype.  A half-precision one is
  // rounded once here; ops_cpu.cpp only fuses it when the global factor is
  // folded in, and autograd recomputes it with the backward operator for an
  // upstream gradient other than 1 (never a second rounding).
  constexpr bool kReduced = !std::is_same_v<scalar_t, acc_t>;
  const bool fused = a.gfused != nullptr;
  alignas(64) acc_t ecols[kTileMaxC * V];
  alignas(64) scalar_t hcols[kReduced ? kTileMaxC * V : 1];
  const Vec rel_a(acc_t(a.rel_a)), rel_ab(acc_t(a.rel_a + a.rel_b));
  // o_index as acc_t; one that is not a class (cross_entropy passes -1)
  // never matches a valid row, whose class is >= 0
  const Vec o_f(c.o_index >= 0 && c.o_index < C ? acc_t(c.o_index) : acc_t(-2));
  // block sums kept in vector lanes (each lane adds block_rows / V rows), then
  // added in double at the end: fixed order, so deterministic
  Vec acc_valid(0), acc_o(0), acc_den(0);
  const int64_t r0 = blk * c.block_rows, r1 = std::min(c.N, r0 + c.block_rows);
  const int64_t nrows = r1 - r0;
  const int64_t first_bad = classify_block<acc_t>(c, r0, nrows, (nrows + V - 1) / V * V, ycls);
  for (int64_t i0 = r0; i0 < r1; i0 += V) {
    const int64_t nr = std::min<int64_t>(V, r1 - i0);
    load_cols<scalar_t, acc_t>(c, i0, nr, cols);
    const Vec yv = Vec::loadu(ycls + (i0 - r0));
    const Mask valid = L::gt(yv, minus_one);  // a valid row
    const Mask is_o = L::both(valid, L::eq(yv, o_f));
    // max, and the target logit / weight picked by class (no per-lane code)
    Vec m = Vec::loadu(cols);
    Mask is_j = L::eq(yv, zero);
    Vec xy = L::sel(is_j, m, zero);
    Vec wy = w ? L::sel(is_j, Vec(w[0]), zero) : L::sel(valid, one, zero);
    Vec jv = zero;  // the class index j in every lane
    for (int64_t j = 1; j < C; ++j) {
      const Vec col = Vec::loadu(cols + j * V);
      jv = jv + one;
      is_j = L::eq(yv, jv);
      m = L::max(m, col);
      xy = L::sel(is_j, col, xy);
      if (w) wy = L::sel(is_j, Vec(w[j]), wy);
    }
    // dsum = sum of x - m: NaN exactly when a logit of the row is NaN or
    // +inf, or all are -inf (then x - m is NaN somewhere; -inf logits alone
    // only make it -inf).  Such rows get a NaN normaliser, so their loss and
    // gradient are NaN as in PyTorch, and the exps need no NaN handling
    // (exp_u20 turns a NaN input into a finite value or +inf).
    Vec ties(0), rest(0), wdev(0), ey(0), dsum(0);
    jv = zero;
    for (int64_t j = 0; j < C; ++j, jv = jv + one) {
      const Vec d = Vec::loadu(cols + j * V) - m;
      dsum += d;
      const Vec e = tile_exp(d);
      if (fused) {
        e.store(ecols + j * V);
        ey = L::sel(L::eq(yv, jv), e, ey);
      }
      const Mask tie = L::eq(e, one);
      rest = L::add_unless(rest, tie, e);
      ties = L::add_if(ties, tie, one);
    }
    rest = L::sel(L::isnan(dsum), dsum, rest);
    // log(ties + rest) = log1p((ties - 1) + rest): exact log1p(rest) for one max
    const Vec logs = tile_log1p<acc_t>((ties - one) + rest);
    if (smooth) {
      for (int64_t j = 0; j < C; ++j)
        wdev += (m - Vec::loadu(cols + j * V)) * Vec(w ? w[j] : acc_t(1));
    }
    Vec ell, h_fd = one;  // h_fd: focal / dice gradient factor (row_loss's h)
    if (is_ce) {
      ell = wy * (logs - (xy - m));  // w_y * -log p_y
      if (smooth) {
        ell = Vec(acc_t(1) - eps) * ell +
              Vec(eps / acc_t(C)) * (wdev + Vec(acc_t(c.W)) * logs);
      }
    } else {  // focal / dice
      Vec value;
      row_loss_vec<acc_t>(L::sel(valid, (xy - m) - logs, zero), c.opt, value, h_fd);
      ell = wy * value;
    }
    ell = L::sel(valid, ell, zero);
    acc_valid += ell;
    acc_o = L::add_if(acc_o, is_o, ell);
    acc_den += wy;
    if (fused) {
      // the backward of this group, with the row's coefficient as its
      // scale (see backward_tile for the formulas); p_j = e_j / Z
      const Vec scale = L::sel(valid, L::sel(is_o, rel_ab, rel_a), zero);
      const Mask live = L::ne(scale, zero);
      const Vec A = scale * Vec(acc_t(1) - eps) * wy * h_fd;
      const Vec S = scale * Vec(eps / acc_t(C));
      const Vec Bs = S * Vec(acc_t(c.W));
      const Vec invZ = one / (ties + rest);
      // p_y - 1 = -(Z - e_y) / Z with Z - e_y = (ties - e_y) + rest: when y
      // is the (single) max, e_y = 1 = ties exactly and this is -rest / Z,
      // exact as p_y -> 1 (no expm1 needed); otherwise p_y <= 1/2 and the
      // subtraction loses nothing
      Vec gy = -(A * ((ties - ey) + rest)) * invZ;
      if (smooth) gy = gy + Bs * ey * invZ - S * wy;
      const Vec P = (A + Bs) * invZ;
      jv = zero;
      for (int64_t j = 0; j < C; ++j, jv = jv + one) {
        Vec g = P * Vec::loadu(ecols + j * V);
        if (smooth) g = g - S * Vec(w ? w[j] : acc_t(1));
        g = L::sel(L::eq(yv, jv), gy, g);
        g = L::sel(live, g, zero);  // rows without gradient: exact zeros
        g.store(ecols + j * V);
      }
      scalar_t* gout = static_cast<scalar_t*>(a.gfused) + i0 * C;
      if constexpr (kReduced) {
        store_rows_reduced<scalar_t, acc_t, V>(ecols, C, nr, hcols, gout);
      } else {
        store_rows<acc_t, V>(ecols, C, nr, gout);
      }
    }
    // stats (max, log normaliser) per row, 0 for rows without a valid target
    const Vec ms = L::sel(valid, m, zero), ls = L::sel(valid, logs, zero);
    if (nr == V) {
      const auto il = at::vec::interleave2<acc_t>(ms, ls);
      std::get<0>(il).store(stats + 2 * i0);
      std::get<1>(il).store(stats + 2 * i0 + V);
    } else {
      ms.store(m_l);
      ls.store(logs_l);
      for (int64_t l = 0; l < nr; ++l) {
        stats[2 * (i0 + l)] = m_l[l];
        stats[2 * (i0 + l) + 1] = logs_l[l];
      }
    }
    if (a.none_out) {
      scalar_t* out = static_cast<scalar_t*>(a.none_out);
      ell.store(ell_l);
      L::sel(is_o, one, zero).store(isx_l);
      for (int64_t l = 0; l < nr; ++l) {
        const double coef = isx_l[l] != acc_t(0) ? a.none_a + a.none_b : a.none_a;
        out[i0 + l] = static_cast<scalar_t>(acc_t(coef) * ell_l[l]);
      }
      if (first_bad >= 0) {  // rare: mark out-of-range rows NaN, as the GPU kernels do
        for (int64_t l = 0; l < nr; ++l) {
          const int64_t y = load_target(c, i0 + l);
          if (y != c.ignore_index && (y < 0 || y >= C))
            out[i0 + l] = std::numeric_limits<scalar_t>::quiet_NaN();
        }
      }
    }
  }
  alignas(64) acc_t sv[V], so[V], sd[V];
  acc_valid.store(sv);
  acc_o.store(so);
  acc_den.store(sd);
  double s_valid = 0, s_o = 0, denom = 0;
  for (int64_t l = 0; l < V; ++l) {
    s_valid += double(sv[l]);
    s_o += double(so[l]);
    denom += double(sd[l]);
  }
  a.partials[3 * blk] = s_valid;
  a.partials[3 * blk + 1] = s_o;
  a.partials[3 * blk + 2] = denom;
  a.bad_row[blk] = first_bad;
}

// In place: g[e] *= s over a flat span (the fused backward's common case).
template <typename acc_t>
void scale_span(acc_t* g, int64_t n, acc_t s) {
  using Vec = Vectorized<acc_t>;
  at::vec::map([s](Vec v) { return v * Vec(s); }, g, g, n);
}

// ---------------------------------------------------------------- backward

template <typename acc_t>
inline acc_t upstream(const BwdArgs& a, int64_t i) {
  const acc_t* g = static_cast<const acc_t*>(a.grad);
  return a.grad_per_row ? g[i] : g[0];
}

// Row scale (upstream gradient x row coefficient), 0 for rows without gradient.
template <typename acc_t>
inline acc_t row_scale(const BwdArgs& a, int64_t i, int64_t& y) {
  const Common& c = a.c;
  y = load_target(c, i);
  if (y == c.ignore_index || y < 0 || y >= c.C) return acc_t(0);
  const acc_t coef = row_coefficient<acc_t>(acc_t(a.a), acc_t(a.b), y == c.o_index);
  return upstream<acc_t>(a, i) * coef;
}

// grad = P * p - S * w over a span, p = exp((v - m) - logs); written to out.
// (v - m) - logs, not v - (m + logs): the latter rounds m + logs to the
// magnitude of m and loses p's relative accuracy for huge logits.
template <typename acc_t>
inline void span_grad(const acc_t* v, const acc_t* w, int64_t n, acc_t m, acc_t logs, acc_t P,
                      acc_t S, acc_t* out) {
  using Vec = Vectorized<acc_t>;
  if (S == acc_t(0)) {
    at::vec::map([m, logs, P](Vec x) { return bulk_exp((x - Vec(m)) - Vec(logs)) * Vec(P); }, out, v,
                 n);
  } else if (w == nullptr) {
    at::vec::map(
        [m, logs, P, S](Vec x) { return bulk_exp((x - Vec(m)) - Vec(logs)) * Vec(P) - Vec(S); }, out,
        v, n);
  } else {
    at::vec::map2(
        [m, logs, P, S](Vec x, Vec ww) {
          return bulk_exp((x - Vec(m)) - Vec(logs)) * Vec(P) - Vec(S) * ww;
        },
        out, v, w, n);
  }
}

template <typename scalar_t>
void backward_rows(const BwdArgs& a, int64_t blk) {
  using acc_t = acc_t_of<scalar_t>;
  const Common& c = a.c;
  const int64_t C = c.C;
  const scalar_t* x = static_cast<const scalar_t*>(c.x);
  scalar_t* gout = static_cast<scalar_t*>(a.grad_in);
  const acc_t* stats = static_cast<const acc_t*>(c.stats);
  const acc_t* w = static_cast<const acc_t*>(c.w);
  alignas(64) acc_t buf[kChunkElems];
  alignas(64) acc_t obuf[kChunkElems];
  const int64_t r0 = blk * c.block_rows, r1 = std::min(c.N, r0 + c.block_rows);
  for (int64_t i = r0; i < r1; ++i) {
    int64_t y;
    const acc_t scale = row_scale<acc_t>(a, i, y);
    scalar_t* grow = gout + i * C;
    if (scale == acc_t(0)) {
      std::fill(grow, grow + C, scalar_t(0));
      continue;
    }
    const scalar_t* row = x + i * c.sN;
    const acc_t m = stats[2 * i], logs = stats[2 * i + 1];
    const acc_t lp = (static_cast<acc_t>(row[y * c.sC]) - m) - logs;
    const acc_t w_y = class_weight<acc_t>(c, y);
    const RowGrad<acc_t> g = row_grad<acc_t>(c, scale, lp, w_y);
    for (int64_t c0 = 0; c0 < C; c0 += kChunkElems) {
      const int64_t n = std::min(kChunkElems, C - c0);
      const acc_t* v = load_span(row + c0 * c.sC, c.sC, n, buf);
      acc_t* o = obuf;
      if constexpr (std::is_same_v<scalar_t, acc_t>) o = grow + c0;
      span_grad(v, w ? w + c0 : nullptr, n, m, logs, g.A + g.Bs, g.S, o);
      store_span(o, grow + c0, n);
    }
    // true class: A (p_y - 1) with p_y - 1 = expm1(lp), exact for p_y -> 1
    grow[y] = static_cast<scalar_t>(g.A * std::expm1(lp) + g.Bs * std::exp(lp) - g.S * w_y);
  }
}

template <typename scalar_t>
void backward_tile(const BwdArgs& a, int64_t blk) {
  using acc_t = acc_t_of<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const Common& c = a.c;
  const int64_t C = c.C;
  scalar_t* gout = static_cast<scalar_t*>(a.grad_in);
  const acc_t* stats = static_cast<const acc_t*>(c.stats);
  const acc_t* w = static_cast<const acc_t*>(c.w);
  const acc_t* up = static_cast<const acc_t*>(a.grad);
  const bool smooth = c.opt.label_smoothing > 0;
  const bool is_ce = c.opt.kind == LossKind::CE;
  const acc_t eps = acc_t(c.opt.label_smoothing);
  const acc_t coef_a = acc_t(a.a), coef_ab = acc_t(a.a) + acc_t(a.b);
  alignas(64) acc_t cols[kTileMaxC * V];
  alignas(64) acc_t m_l[V], logs_l[V], scale_l[V];
  alignas(64) scalar_t hcols[std::is_same_v<scalar_t, acc_t> ? 1 : kTileMaxC * V];
  Lanes<acc_t, V> L;
  const Vec zero(0), one(1);
  const int64_t r0 = blk * c.block_rows, r1 = std::min(c.N, r0 + c.block_rows);
  for (int64_t i0 = r0; i0 < r1; i0 += V) {
    const int64_t nr = std::min<int64_t>(V, r1 - i0);
    load_cols<scalar_t, acc_t>(c, i0, nr, cols);
    classify_lanes<acc_t, V>(c, i0, nr, cols, L);
    for (int64_t l = 0; l < V; ++l) {
      const bool v = L.valid[l] != acc_t(0);
      const int64_t i = v ? i0 + l : 0;
      m_l[l] = v ? stats[2 * i] : acc_t(0);
      logs_l[l] = v ? stats[2 * i + 1] : acc_t(0);
      const acc_t g = a.grad_per_row ? up[i] : up[0];
      // row coefficient a + b [y == o]: b is added, never multiplied by 0.
      // Rows without a valid target get exactly 0 (a may be inf: mean of an
      // all-ignored batch, where 0 * inf would be NaN).
      scale_l[l] = v ? g * (L.is_o[l] != acc_t(0) ? coef_ab : coef_a) : acc_t(0);
    }
    const Vec m = Vec::loadu(m_l), logs = Vec::loadu(logs_l), scale = Vec::loadu(scale_l);
    const Vec xy = Vec::loadu(L.xy), wy = Vec::loadu(L.wy);
    const Vec live = Vec::blendv(zero, one, scale != zero) == one;  // else exact zeros
    const Vec lp = (xy - m) - logs;  // log p_y
    Vec h = one;
    if (!is_ce) {
      Vec value;
      row_loss_vec<acc_t>(Vec::blendv(zero, lp, live), c.opt, value, h);
    }
    const Vec A = scale * Vec(acc_t(1) - eps) * wy * h;
    const Vec S = scale * Vec(eps / acc_t(C));
    const Vec Bs = S * Vec(acc_t(c.W));
    const Vec P = A + Bs;
    // true class: A (p_y - 1) + Bs p_y - S w_y, with p_y - 1 = expm1(lp) (exact as p_y -> 1)
    Vec gy = A * lp.expm1();
    if (smooth) gy = gy + Bs * lp.exp() - S * wy;
    alignas(64) acc_t yf_l[V];
    for (int64_t l = 0; l < V; ++l) yf_l[l] = acc_t(L.y[l]);
    const Vec yv = Vec::loadu(yf_l);
    for (int64_t j = 0; j < C; ++j) {
      const Vec p = bulk_exp((Vec::loadu(cols + j * V) - m) - logs);
      Vec g = P * p;
      if (smooth) g = g - S * Vec(w ? w[j] : acc_t(1));
      g = Vec::blendv(g, gy, yv == Vec(acc_t(j)));
      g = Vec::blendv(zero, g, live);
      g.store(cols + j * V);
    }
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      store_rows<acc_t, V>(cols, C, nr, gout + i0 * C);
    } else {
      store_rows_reduced<scalar_t, acc_t, V>(cols, C, nr, hcols, gout + i0 * C);
    }
  }
}

// ---------------------------------------------------------------- dispatch

template <typename F>
inline void by_dtype(c10::ScalarType t, F&& f) {
  switch (t) {
    case c10::ScalarType::Float: f(float{}); break;
    case c10::ScalarType::Double: f(double{}); break;
    case c10::ScalarType::Half: f(c10::Half{}); break;
    case c10::ScalarType::BFloat16: f(c10::BFloat16{}); break;
    default: break;  // rejected by the operator before any kernel runs
  }
}

inline void forward(const FwdArgs& a, int64_t b0, int64_t b1) {
  by_dtype(a.c.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    for (int64_t b = b0; b < b1; ++b) {
      if (a.c.C <= kTileMaxC) forward_tile<scalar_t>(a, b); else forward_rows<scalar_t>(a, b);
    }
  });
}

inline void backward(const BwdArgs& a, int64_t b0, int64_t b1) {
  by_dtype(a.c.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    for (int64_t b = b0; b < b1; ++b) {
      if (a.c.C <= kTileMaxC) backward_tile<scalar_t>(a, b); else backward_rows<scalar_t>(a, b);
    }
  });
}

#define MOMK_STR2(s) #s
#define MOMK_STR(s) MOMK_STR2(s)

inline void scale(void* g, c10::ScalarType t, int64_t n, double s) {
  if (t == c10::ScalarType::Double) scale_span<double>(static_cast<double*>(g), n, s);
  else scale_span<float>(static_cast<float*>(g), n, float(s));
}

KernelTable kernels() {
  return KernelTable{MOMK_STR(CPU_CAPABILITY), &forward, &backward, &scale};
}

}  // namespace CPU_CAPABILITY
}  // namespace momkernels::cpu
