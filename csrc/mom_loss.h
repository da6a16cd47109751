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

// o_index of a call without a majority class (cross_entropy: the schema's
// `int? o_index` is None).  Negative, so no valid row (target in [0, C))
// matches it; it never reaches a reduction coefficient (lam = 1 there).
constexpr int64_t kNoClass = -1;

// ---------------------------------------------------------------- targets

// The one rule that classifies a row by its target y (docs/spec.md): y equal
// to ignore_index is IGNORED (even inside [0, C)); any other y outside [0, C)
// is BAD (never used as an index: an IndexError on the CPU, a NaN row on
// CUDA); everything else is VALID.  target_valid / target_bad are the rule as
// branch-free predicates (the form the CPU's target loops vectorise); every
// classification in the kernels -- scalar, SIMD or CUDA -- is written against
// these (the AVX-512 one in csrc/cpu/targets.h is checked against them by
// python_tests/test_autograd_ops.py::test_target_classification_parity).
enum class RowKind : int32_t { VALID = 0, IGNORED = 1, BAD = 2 };

MOMK_HD bool target_in_range(int64_t y, int64_t C) {
  return static_cast<uint64_t>(y) < static_cast<uint64_t>(C);  // negatives are huge
}
MOMK_HD bool target_valid(int64_t y, int64_t C, int64_t ignore_index) {
  return (y != ignore_index) & target_in_range(y, C);
}
MOMK_HD bool target_bad(int64_t y, int64_t C, int64_t ignore_index) {
  return (y != ignore_index) & !target_in_range(y, C);
}
MOMK_HD RowKind classify_target(int64_t y, int64_t C, int64_t ignore_index) {
  return target_valid(y, C, ignore_index)
             ? RowKind::VALID
             : (target_bad(y, C, ignore_index) ? RowKind::BAD : RowKind::IGNORED);
}

// ---------------------------------------------------------------- the rows

// The rows of one call as every kernel sees them (CPU: cpu::Common adds the
// dtype and block bookkeeping; CUDA: cuda::Rows adds the dtype).
struct RowView {
  const void* x;          // logits, (N, C) with strides (sN, sC), in elements
  int64_t N, C, sN, sC;
  const void* t;          // targets, (N,) with stride sT, int32 or int64
  int64_t sT;
  bool t_int32;
  const void* w;          // class weights (C,) contiguous in the math dtype, or nullptr
  int64_t ignore_index;
  int64_t o_index;        // the majority class, or kNoClass
  LossOptions opt;
};

MOMK_HD int64_t load_target(const RowView& r, int64_t i) {
  return r.t_int32 ? static_cast<int64_t>(static_cast<const int32_t*>(r.t)[i * r.sT])
                   : static_cast<const int64_t*>(r.t)[i * r.sT];
}

template <typename acc_t>
MOMK_HD acc_t class_weight(const RowView& r, int64_t j) {
  return r.w ? static_cast<const acc_t*>(r.w)[j] : acc_t(1);
}

MOMK_HD RowKind classify(const RowView& r, int64_t y) {
  return classify_target(y, r.C, r.ignore_index);
}

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

// max that propagates NaN (a NaN logit makes the row NaN, as in PyTorch).
template <typename acc_t>
MOMK_HD acc_t nanmax(acc_t a, acc_t b) {
  return (a > b || a != a) ? a : b;
}

// Online-softmax state of part of a row (a chunk on the CPU, a thread's or a
// block's share on CUDA): its max m, the normaliser relative to m split as in
// log_normaliser (`ties` elements whose exp(x - m) is exactly 1, `rest` the sum
// of the others), and for label smoothing wdev = sum w_c (m - x_c) (all terms
// >= 0: no cancellation) and wsum = sum w_c.
template <typename acc_t>
struct SoftmaxState {
  acc_t m, ties, rest, wdev, wsum;

  static MOMK_HD SoftmaxState empty() {
    return SoftmaxState{acc_t(-INFINITY), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  }

  // (ties, rest, wdev) relative to a common max M >= m (or NaN).  A state
  // without weight (wsum 0: nothing seen yet, m = -inf) contributes wdev 0,
  // never (M - (-inf)) * 0 = NaN.
  MOMK_HD void shifted(acc_t M, acc_t& t, acc_t& r, acc_t& wd) const {
    if (m == M) {
      t = ties;
      r = rest;
      wd = wdev;
    } else {
      t = acc_t(0);
      r = (ties + rest) * detail::m_exp(m - M);  // 0 when m = -inf; NaN when M is NaN
      wd = wsum > acc_t(0) ? wdev + (M - m) * wsum : acc_t(0);
    }
  }

  // Re-express the state relative to a larger (or NaN) max.
  MOMK_HD void rescale(acc_t new_m) {
    acc_t t, r, wd;
    shifted(new_m, t, r, wd);
    ties = t;
    rest = r;
    wdev = wd;
    m = new_m;
  }
};

// The state of the union of two parts of a row.  Symmetric (a, b give the
// same bits as b, a), so CUDA's butterflies leave every lane with the same
// state; a NaN max makes the merged max NaN.
template <typename acc_t>
MOMK_HD SoftmaxState<acc_t> merge(const SoftmaxState<acc_t>& a, const SoftmaxState<acc_t>& b) {
  SoftmaxState<acc_t> o;
  o.m = nanmax(a.m, b.m);
  acc_t ta, ra, wa, tb, rb, wb;
  a.shifted(o.m, ta, ra, wa);
  b.shifted(o.m, tb, rb, wb);
  o.ties = ta + tb;
  o.rest = ra + rb;
  o.wdev = wa + wb;
  o.wsum = a.wsum + b.wsum;
  return o;
}

// The elementary operations row_loss is written with, for one value
// (ScalarMath: float / double on host and device) or for a vector of rows
// (the CPU tile kernels' VecMath over at::vec, csrc/cpu/vec_math.h).  So the
// formulas below exist once; each policy only says what exp, a select or a
// negation is.  `neg` is -v here and 0 - v for vectors: both are what the
// kernels computed before this policy existed (they differ only in the sign
// of a zero result).
template <typename T>
struct ScalarMath {
  using V = T;     // a value
  using S = T;     // its scalar type
  using M = bool;  // a predicate
  static MOMK_HD V c(double v) { return T(v); }
  static MOMK_HD V exp(V v) { return detail::m_exp(v); }
  static MOMK_HD V expm1(V v) { return detail::m_expm1(v); }
  static MOMK_HD V pow(V b, V e) { return detail::m_pow(b, e); }
  static MOMK_HD V neg(V v) { return -v; }
  static MOMK_HD M gt(V a, V b) { return a > b; }
  static MOMK_HD V max(V a, V b) { return a > b ? a : b; }
  static MOMK_HD V select(M m, V a, V b) { return m ? a : b; }
};

// Value and gradient factor of the per-token loss for log p_y = lp, with the
// operations of `Math` (ScalarMath, or a vector policy: then lp holds one row
// per lane, and lanes that are not rows -- padding, ignored rows, passed with
// lp = 0 -- give finite values that the caller masks).
// Focal and dice use q = 1 - p = -expm1(lp); the focal derivative is written as
//   h = q^g * (1 - g * p * lp / q),
// which is finite as q -> 0 (lp / q -> -1), so confident tokens give h -> 0
// instead of 0 * inf.
template <typename Math>
MOMK_HD RowLoss<typename Math::V> row_loss_of(typename Math::V lp, const LossOptions& o) {
  using V = typename Math::V;
  using S = typename Math::S;
  const V one = Math::c(1);
  RowLoss<V> r;
  if (o.kind == LossKind::CE) {
    r.value = Math::neg(lp);
    r.h = one;
    return r;
  }
  const V zero = Math::c(0);
  const V p = Math::exp(lp);
  const V q = Math::neg(Math::expm1(lp));
  const auto q_pos = Math::gt(q, zero);
  if (o.kind == LossKind::FOCAL) {
    const V g = Math::c(o.gamma);
    const V qg = Math::pow(q, g);  // pow(0, 0) == 1: gamma = 0 is exactly CE
    const V lp_over_q = Math::select(q_pos, lp / q, Math::c(-1));
    r.value = Math::neg(qg * lp);
    r.h = qg * (one - g * p * lp_over_q);
    return r;
  }
  // DICE: l = 1 - (2a + d) / (a + 1 + d), a = q^al * p  (Li et al., ACL 2020)
  const V al = Math::c(o.dice_alpha);
  const V d = Math::c(o.dice_smooth);
  const V qa = Math::pow(q, al);
  const V a = qa * p;
  const V den = a + one + d;
  r.value = one - (Math::c(2) * a + d) / den;
  // dl/da = -(2 + d) / den^2 ;  da/dp = q^al - al * p * q^(al-1)
  // q^(al-1) only multiplies gradients that vanish with q, so at q == 0 it is 0.
  // Its base is clamped to the smallest normal number: for al < 1 a subnormal q
  // would overflow q^(al-1) to inf (and the gradient to inf * 0 = NaN), while
  // h * (p_j - [j == y]) ~ q^al stays finite (docs/SEMANTICS.md, S9).
  const V qmin = Math::c(sizeof(S) == sizeof(float) ? double(FLT_MIN) : DBL_MIN);
  // q^(al-1) at q == 0: 1 when al is 1 in the math type, else 0
  const V q0 = Math::c(S(o.dice_alpha) == S(1) ? 1.0 : 0.0);
  const V qa1 = Math::select(q_pos, Math::pow(Math::max(q, qmin), al - one), q0);
  const V da_dp = qa - al * p * qa1;
  r.h = p * (Math::c(2) + d) / (den * den) * da_dp;
  return r;
}

template <typename acc_t>
MOMK_HD RowLoss<acc_t> row_loss(acc_t lp, const LossOptions& o) {
  return row_loss_of<ScalarMath<acc_t>>(lp, o);
}

// Label-smoothing part of the ce value for one row:
//   (eps/C) * sum_c w_c * (-log p_c) = (eps/C) * (sum_c w_c (m - x_c) + W * logs)
// `wdev` = sum_c w_c (m - x_c) >= 0 (accumulated without cancellation), W = sum_c w_c.
template <typename acc_t>
MOMK_HD acc_t smoothing_value(acc_t wdev, acc_t W, acc_t logs, acc_t eps, int64_t C) {
  return eps / acc_t(C) * (wdev + W * logs);
}

// Loss l_i of one valid row from its statistics (row_loss and
// smoothing_value): w_y f(p_y), and with label smoothing
// (1 - eps) w_y (-log p_y) + (eps / C) sum_c w_c (-log p_c).  W = sum_c w_c.
template <typename acc_t>
MOMK_HD acc_t row_value(const LossOptions& o, int64_t C, acc_t W, acc_t x_y, acc_t m, acc_t logs,
                        acc_t wdev, acc_t w_y) {
  const acc_t lp = (x_y - m) - logs;
  acc_t ell = w_y * row_loss<acc_t>(lp, o).value;
  if (o.label_smoothing > 0) {
    const acc_t eps = acc_t(o.label_smoothing);
    ell = (acc_t(1) - eps) * ell + smoothing_value<acc_t>(wdev, W, logs, eps, C);
  }
  return ell;
}

// Gradient of one valid row, scaled by `scale` (upstream gradient x row
// coefficient):
//   j != y:  P p_j - S w_j                      (P = A + Bs)
//   j == y:  A (p_y - 1) + Bs p_y - S w_y       (true_class: p_y - 1 = expm1(lp),
//                                                exact as p_y -> 1)
// with A = scale (1 - eps) w_y h, S = scale eps / C, Bs = S W.
template <typename acc_t>
struct RowGrad {
  acc_t A, Bs, S, P;

  MOMK_HD acc_t true_class(acc_t lp, acc_t w_y) const {
    return A * detail::m_expm1(lp) + Bs * detail::m_exp(lp) - S * w_y;
  }
};

template <typename acc_t>
MOMK_HD RowGrad<acc_t> row_grad(const LossOptions& o, int64_t C, acc_t W, acc_t scale, acc_t lp,
                                acc_t w_y) {
  const acc_t h = row_loss<acc_t>(lp, o).h;
  const acc_t eps = acc_t(o.label_smoothing);
  RowGrad<acc_t> g;
  g.A = scale * (acc_t(1) - eps) * w_y * h;
  g.S = scale * eps / acc_t(C);
  g.Bs = g.S * W;
  g.P = g.A + g.Bs;
  return g;
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

// The same coefficients split as (rel_a + rel_b [y == o_index]) * global, with
// rel_* known before any kernel runs (the CPU's fused gradient writes the
// gradient with rel_* inside the forward kernel).  Returns false when the
// reduction does not factor so: mean with mom_norm 'rows' / 'fixed' and
// 0 < lam < 1 has two denominators.  A zero coefficient stays exactly 0.
MOMK_HD bool factor_coefficients(double lam, Reduction red, MoMNorm norm, double& rel_a,
                                 double& rel_b) {
  rel_a = lam != 0.0 ? lam : 0.0;
  rel_b = lam != 1.0 ? 1.0 - lam : 0.0;
  if (red != Reduction::MEAN || norm == MoMNorm::VALID) return true;
  if (lam == 1.0) return true;                   // a = 1 / D, b = 0
  if (lam == 0.0) {                              // a = 0, b = 1 / d_mom
    rel_b = 1.0;
    return true;
  }
  return false;
}

// True when the global factor of factor_coefficients needs no kernel result:
// 1 for sum / none, 1 / d_mom for mean with mom_norm 'rows' / 'fixed' and
// lam = 0 (otherwise it is 1 / D, D = sum of w_y over valid rows).
MOMK_HD bool constant_global_factor(double lam, Reduction red, MoMNorm norm) {
  return red != Reduction::MEAN || (norm == MoMNorm::ROWS && lam == 0.0);
}

// The global factor of factor_coefficients; denom = D, d_mom = the MoM
// denominator of mom_norm 'rows' / 'fixed'.
MOMK_HD double global_factor(Reduction red, MoMNorm norm, double lam, double denom,
                             double d_mom) {
  if (red != Reduction::MEAN) return 1.0;
  if (norm == MoMNorm::ROWS && lam == 0.0) return 1.0 / d_mom;
  return 1.0 / denom;
}

}  // namespace momkernels
