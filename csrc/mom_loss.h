// Per-row math of the MoM loss family (docs/spec.md), shared by the C++ CPU kernels
// and the CUDA kernels. Header-only, no torch includes: usable from host and
// device code and from the plain C++ unit test in csrc/tests.
//
// Notation for one valid row i with logits x, target y, weights w (1 without):
//   m        = max_c x_c
//   logs     = log(sum_c exp(x_c - m))              (the row statistic we save)
//   lp       = log p_y = (x_y - m) - logs           (accurate even when p_y -> 1)
//   p        = exp(lp),  q = 1 - p = -expm1(lp)     (never computed as 1 - p)
//
// Every per-token loss here except label smoothing is a function f(p_y) of the
// true-class probability only, so its gradient with respect to the logits is
//   d l / d x_j = w_y * f'(p) * p * (delta_jy - p_j) = w_y * h * (p_j - delta_jy)
// with h = -p * f'(p) (>= 0 for ce and focal; self-adjusting dice is not
// monotone in p, so its h changes sign).  The kernels therefore need just two numbers per
// row, the value and h; `row_loss` returns both.  The true-class gradient
// p_y - 1 = expm1(x_y - m - logs) is formed with expm1 in the kernels, which
// keeps it accurate for the confident majority-class (`O`) tokens of NER,
// where p_y - 1 would otherwise cancel to zero in float32.
//
// Label smoothing (ce only) adds (eps/C) * sum_c w_c * (-log p_c), whose
// gradient is (eps/C) * (W p_j - w_j) with W = sum_c w_c; see `smoothing_*`.
#pragma once

#include <cfloat>

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MOMK_HD __host__ __device__ __forceinline__
#else
#define MOMK_HD inline
#endif

namespace momkernels {

enum class LossKind : int32_t { CE = 0, FOCAL = 1, DICE = 2 };
enum class Reduction : int32_t { NONE = 0, SUM = 1, MEAN = 2 };
enum class MoMNorm : int32_t { VALID = 0, ROWS = 1 };

// Scalar options of one call, identical for every row.
struct LossOptions {
  LossKind kind = LossKind::CE;
  double gamma = 2.0;          // focal exponent
  double dice_alpha = 1.0;     // self-adjusting dice exponent
  double dice_smooth = 0.01;   // dice smoothing delta (> 0)
  double label_smoothing = 0;  // eps, ce only
};

template <typename acc_t>
struct RowLoss {
  acc_t value;  // f(p_y), before the class weight w_y
  acc_t h;      // -p f'(p): gradient factor of (p_j - delta_jy), before w_y
};

namespace detail {
MOMK_HD float m_exp(float v) { return ::expf(v); }
MOMK_HD double m_exp(double v) { return ::exp(v); }
MOMK_HD float m_expm1(float v) { return ::expm1f(v); }
MOMK_HD double m_expm1(double v) { return ::expm1(v); }
MOMK_HD float m_log(float v) { return ::logf(v); }
MOMK_HD double m_log(double v) { return ::log(v); }
MOMK_HD float m_log1p(float v) { return ::log1pf(v); }
MOMK_HD double m_log1p(double v) { return ::log1p(v); }
MOMK_HD float m_pow(float b, float e) { return ::powf(b, e); }
MOMK_HD double m_pow(double b, double e) { return ::pow(b, e); }
}  // namespace detail

// log of the softmax normaliser from its two parts: `ties` elements equal to the
// row max (each contributing exactly 1) and `rest` = sum of exp(x_c - m) over the
// others.  Keeping them apart means log(1 + rest) is log1p(rest), exact to
// rounding even when rest is far below float32's epsilon.
template <typename acc_t>
MOMK_HD acc_t log_normaliser(acc_t ties, acc_t rest) {
  return ties == acc_t(1) ? detail::m_log1p(rest) : detail::m_log(ties + rest);
}

// Value and gradient factor of the per-token loss for log p_y = lp.
// Focal and dice use q = 1 - p = -expm1(lp); the focal derivative is written as
//   h = q^g * (1 - g * p * lp / q),
// which is finite as q -> 0 (lp / q -> -1), so confident tokens give h -> 0
// instead of 0 * inf.
template <typename acc_t>
MOMK_HD RowLoss<acc_t> row_loss(acc_t lp, const LossOptions& o) {
  using detail::m_exp;
  using detail::m_expm1;
  using detail::m_pow;
  RowLoss<acc_t> r;
  if (o.kind == LossKind::CE) {
    r.value = -lp;
    r.h = acc_t(1);
    return r;
  }
  const acc_t p = m_exp(lp);
  const acc_t q = -m_expm1(lp);
  if (o.kind == LossKind::FOCAL) {
    const acc_t g = acc_t(o.gamma);
    const acc_t qg = m_pow(q, g);  // pow(0, 0) == 1: gamma = 0 is exactly CE
    const acc_t lp_over_q = q > acc_t(0) ? lp / q : acc_t(-1);
    r.value = -qg * lp;
    r.h = qg * (acc_t(1) - g * p * lp_over_q);
    return r;
  }
  // DICE: l = 1 - (2a + d) / (a + 1 + d), a = q^al * p  (Li et al., ACL 2020)
  const acc_t al = acc_t(o.dice_alpha);
  const acc_t d = acc_t(o.dice_smooth);
  const acc_t qa = m_pow(q, al);
  const acc_t a = qa * p;
  const acc_t den = a + acc_t(1) + d;
  r.value = acc_t(1) - (acc_t(2) * a + d) / den;
  // dl/da = -(2 + d) / den^2 ;  da/dp = q^al - al * p * q^(al-1)
  // q^(al-1) only multiplies gradients that vanish with q, so at q == 0 it is 0.
  // Its base is clamped to the smallest normal number: for al < 1 a subnormal q
  // would overflow q^(al-1) to inf (and the gradient to inf * 0 = NaN), while
  // h * (p_j - [j == y]) ~ q^al stays finite (docs/SEMANTICS.md, S9).
  const acc_t qmin = sizeof(acc_t) == sizeof(float) ? acc_t(FLT_MIN) : acc_t(DBL_MIN);
  const acc_t qa1 = q > acc_t(0) ? m_pow(q > qmin ? q : qmin, al - acc_t(1))
                                 : (al == acc_t(1) ? acc_t(1) : acc_t(0));
  const acc_t da_dp = qa - al * p * qa1;
  r.h = p * (acc_t(2) + d) / (den * den) * da_dp;
  return r;
}

// Label-smoothing part of the ce value for one row:
//   (eps/C) * sum_c w_c * (-log p_c) = (eps/C) * (sum_c w_c (m - x_c) + W * logs)
// `wdev` = sum_c w_c (m - x_c) >= 0 (accumulated without cancellation), W = sum_c w_c.
template <typename acc_t>
MOMK_HD acc_t smoothing_value(acc_t wdev, acc_t W, acc_t logs, acc_t eps, int64_t C) {
  return eps / acc_t(C) * (wdev + W * logs);
}

// Per-row coefficient that multiplies l_i in the reduced loss, from the two
// call-wide coefficients (a, b) produced by the forward:
//   c_i = a + b * [y_i == o_index]
// none/sum: a = lam, b = 1 - lam ; mean: a = lam / D, b = (1 - lam) / D_MoM.
// Adding b is safe even when it is 0 (unlike multiplying an inf loss by a zero
// coefficient, which reduce_loss avoids), so lam = 1 is exactly plain CE.
template <typename acc_t>
MOMK_HD acc_t row_coefficient(acc_t a, acc_t b, bool is_o) {
  return is_o ? a + b : a;
}

// The reduced loss from the three sums of the forward; see row_coefficient.
// s_valid = sum over valid rows of w_y-weighted l_i, s_o = the same over rows
// whose target is o_index, denom = D (sum of w_y over valid rows), rows = N.
template <typename acc_t>
struct Reduced {
  acc_t loss;
  acc_t a;
  acc_t b;
};

template <typename acc_t>
MOMK_HD Reduced<acc_t> reduce_loss(acc_t s_valid, acc_t s_o, acc_t denom, acc_t rows,
                                   double lam, Reduction red, MoMNorm norm) {
  Reduced<acc_t> out;
  const acc_t l = acc_t(lam);
  const acc_t ml = acc_t(1) - l;
  if (red == Reduction::MEAN) {
    const acc_t d_mom = norm == MoMNorm::VALID ? denom : rows;
    out.a = lam != 0.0 ? l / denom : acc_t(0);
    out.b = lam != 1.0 ? ml / d_mom : acc_t(0);
    // A term whose coefficient is exactly 0 is left out, not multiplied:
    // 0 * inf (an inf row loss) or 0 * NaN (0 / 0 of an empty set) would
    // otherwise poison lam = 1 (plain CE) and lam = 0.
    acc_t v = acc_t(0);
    if (lam != 0.0) v = l * s_valid / denom;
    if (lam != 1.0) v = v + ml * s_o / d_mom;
    out.loss = v;
  } else {
    out.a = lam != 0.0 ? l : acc_t(0);
    out.b = lam != 1.0 ? ml : acc_t(0);
    acc_t v = acc_t(0);
    if (lam != 0.0) v = l * s_valid;
    if (lam != 1.0) v = v + ml * s_o;
    out.loss = v;
  }
  return out;
}

}  // namespace momkernels
