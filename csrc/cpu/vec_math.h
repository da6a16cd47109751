// Vector math of the CPU kernels, over ATen's at::vec: the exp / log1p variants
// the kernels use, per-lane predicates (LaneOps), reductions over a span of
// one row, and VecMath, the policy under which mom_loss.h's row_loss runs on
// a vector of rows.  Part of kernel_impl.h (compiled once per ISA).
#pragma once

#include "isa_prelude.h"

#include <cfloat>
#include <cmath>
#include <type_traits>

namespace momkernels::cpu {
namespace CPU_CAPABILITY {

template <typename scalar_t>
using acc_t_of = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

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

// ---------------------------------------------------------------- VecMath

// mom_loss.h's math policy on V = Vectorized<acc_t>::size() rows at once:
// row_loss_of<VecMath<acc_t>> is row_loss with at::vec's exp / expm1 / pow
// (Sleef, 1 ulp) and blends for the branches.  The tile kernels call it for
// focal and dice; lanes with lp = 0 (padding, ignored rows) give finite
// values, which the callers mask.
template <typename acc_t>
struct VecMath {
  using V = Vectorized<acc_t>;
  using S = acc_t;
  using M = V;  // at::vec's all-ones-lanes mask
  static V c(double v) { return V(static_cast<acc_t>(v)); }
  static V exp(const V& v) { return v.exp(); }
  static V expm1(const V& v) { return v.expm1(); }
  static V pow(const V& b, const V& e) { return b.pow(e); }
  static V neg(const V& v) { return V(acc_t(0)) - v; }
  static M gt(const V& a, const V& b) { return a > b; }
  static V max(const V& a, const V& b) { return at::vec::maximum(a, b); }
  static V select(const M& m, const V& a, const V& b) { return V::blendv(b, a, m); }
};

// row_loss of one vector of rows.
template <typename acc_t>
inline RowLoss<Vectorized<acc_t>> row_loss_vec(const Vectorized<acc_t>& lp,
                                               const LossOptions& o) {
  return row_loss_of<VecMath<acc_t>>(lp, o);
}

// In place: g[e] *= s over a flat span (the fused backward's common case).
template <typename acc_t>
void scale_span(acc_t* g, int64_t n, acc_t s) {
  using Vec = Vectorized<acc_t>;
  at::vec::map([s](Vec v) { return v * Vec(s); }, g, g, n);
}

}  // namespace CPU_CAPABILITY
}  // namespace momkernels::cpu
