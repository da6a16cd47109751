// Unit test of the per-row math in mom_loss.h (run by ctest; no torch needed).
//  * values against the formulas of docs/spec.md written independently here;
//  * the gradient factor h against a central finite difference of the value:
//    l(lp) with lp = log p_y gives dl/dlp = -h;
//  * log_normaliser keeps log(1 + rest) exact for rest far below epsilon;
//  * reduce_loss drops zero-coefficient terms (lam = 1 stays finite-safe);
//  * factor_coefficients x global_factor give reduce_loss's coefficients;
//  * the target rule (classify_target) against the spec's wording;
//  * SoftmaxState: merging the parts of a row in any split and order gives
//    its normaliser, merge is symmetric bit for bit;
//  * row_loss_of under a lane-wise policy gives row_loss's bits in every lane
//    (the CPU tile kernels run the same template on at::vec vectors).
#include <cmath>
#include <array>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <limits>

#include "mom_loss.h"

using namespace momkernels;

static int failures = 0;

static void expect_close(const char* what, double got, double want, double rtol, double atol) {
  const double err = std::fabs(got - want);
  if (!(err <= atol + rtol * std::fabs(want))) {
    std::printf("FAIL %s: got %.17g want %.17g (err %.3g)\n", what, got, want, err);
    ++failures;
  }
}

static LossOptions opts(LossKind k, double gamma = 2.0, double alpha = 1.0, double smooth = 0.01) {
  LossOptions o;
  o.kind = k;
  o.gamma = gamma;
  o.dice_alpha = alpha;
  o.dice_smooth = smooth;
  return o;
}

static double spec_value(const LossOptions& o, double p) {
  switch (o.kind) {
    case LossKind::CE: return -std::log(p);
    case LossKind::FOCAL: return -std::pow(1 - p, o.gamma) * std::log(p);
    case LossKind::DICE: {
      const double a = std::pow(1 - p, o.dice_alpha) * p;
      return 1 - (2 * a + o.dice_smooth) / (a + 1 + o.dice_smooth);
    }
  }
  return 0;
}

static void test_values_and_gradients() {
  const LossOptions cases[] = {
      opts(LossKind::CE),          opts(LossKind::FOCAL, 0.0),  opts(LossKind::FOCAL, 0.5),
      opts(LossKind::FOCAL, 2.0),  opts(LossKind::FOCAL, 3.7),  opts(LossKind::DICE, 2, 1.0),
      opts(LossKind::DICE, 2, 0.5), opts(LossKind::DICE, 2, 2.0, 1.0)};
  const double ps[] = {1e-6, 0.01, 0.2, 0.5, 0.9, 0.999};
  char name[128];
  for (const LossOptions& o : cases) {
    for (double p : ps) {
      const double lp = std::log(p);
      const RowLoss<double> r = row_loss<double>(lp, o);
      std::snprintf(name, sizeof name, "value kind=%d g=%.2f a=%.2f p=%g", int(o.kind), o.gamma,
                    o.dice_alpha, p);
      expect_close(name, r.value, spec_value(o, p), 1e-12, 1e-15);
      const double hstep = 1e-6;
      const double dl = (row_loss<double>(lp + hstep, o).value - row_loss<double>(lp - hstep, o).value) /
                        (2 * hstep);
      std::snprintf(name, sizeof name, "h kind=%d g=%.2f a=%.2f p=%g", int(o.kind), o.gamma,
                    o.dice_alpha, p);
      expect_close(name, r.h, -dl, 1e-5, 1e-8);
      // float agrees with double
      const RowLoss<float> rf = row_loss<float>(float(lp), o);
      expect_close("float value", rf.value, r.value, 1e-4, 1e-6);
      expect_close("float h", rf.h, r.h, 1e-3, 1e-6);
    }
  }
  // gamma = 0 is exactly ce
  const RowLoss<double> f0 = row_loss<double>(std::log(0.3), opts(LossKind::FOCAL, 0.0));
  expect_close("focal gamma=0 value", f0.value, -std::log(0.3), 0, 1e-15);
  expect_close("focal gamma=0 h", f0.h, 1.0, 0, 1e-15);
}

static void test_confident_rows() {
  // p_y -> 1: lp -> 0^-.  Finite value and h for every loss; h >= 0 for ce and
  // focal, which decrease in p.  (Self-adjusting dice is not monotone: a =
  // (1-p)^alpha p falls for confident rows, so its h is negative there.)
  const LossOptions cases[] = {opts(LossKind::CE), opts(LossKind::FOCAL, 0.5),
                               opts(LossKind::FOCAL, 2.0), opts(LossKind::DICE, 2, 0.5),
                               opts(LossKind::DICE, 2, 1.0)};
  for (const LossOptions& o : cases) {
    for (double lp : {-1e-3, -1e-7, -1e-12, 0.0}) {
      const RowLoss<float> r = row_loss<float>(float(lp), o);
      const bool monotone = o.kind != LossKind::DICE;
      if (!std::isfinite(r.value) || !std::isfinite(r.h) || (monotone && r.h < 0)) {
        std::printf("FAIL confident kind=%d lp=%g: value %g h %g\n", int(o.kind), lp, r.value, r.h);
        ++failures;
      }
    }
  }
  // focal h ~ q^g (1 + g p) for small q: at q = 1e-4, g = 2: ~ 3e-8
  const double q = 1e-4, lp = std::log1p(-q);
  expect_close("focal h small q", row_loss<double>(lp, opts(LossKind::FOCAL, 2.0)).h,
               q * q * (1 - 2 * (1 - q) * lp / q), 1e-9, 0);
}

static void test_log_normaliser() {
  // one max and a tiny rest: log(1 + 1e-10) must not round to 0 in float
  const float v = log_normaliser<float>(1.0f, 1e-10f);
  expect_close("log1p tiny rest", v, 1e-10, 1e-6, 0);
  expect_close("two ties", log_normaliser<double>(2.0, 0.5), std::log(2.5), 1e-15, 0);
}

static void test_reduce() {
  const double inf = std::numeric_limits<double>::infinity();
  // lam = 1: an inf O-row loss must give inf, not 0 * inf = NaN
  Reduced<double> r = reduce_loss<double>(inf, inf, 4, 5, 1.0, Reduction::MEAN, MoMNorm::VALID);
  if (!(std::isinf(r.loss) && r.b == 0)) { std::printf("FAIL lam=1 inf: %g\n", r.loss); ++failures; }
  r = reduce_loss<double>(inf, inf, 4, 5, 1.0, Reduction::SUM, MoMNorm::VALID);
  if (!std::isinf(r.loss)) { std::printf("FAIL lam=1 sum inf: %g\n", r.loss); ++failures; }
  // mean, both terms
  r = reduce_loss<double>(10, 4, 5, 8, 0.25, Reduction::MEAN, MoMNorm::VALID);
  expect_close("mean valid", r.loss, 0.25 * 10 / 5 + 0.75 * 4 / 5, 1e-15, 0);
  expect_close("coef a", r.a, 0.25 / 5, 1e-15, 0);
  expect_close("coef b", r.b, 0.75 / 5, 1e-15, 0);
  r = reduce_loss<double>(10, 4, 5, 8, 0.25, Reduction::MEAN, MoMNorm::ROWS);
  expect_close("mean rows", r.loss, 0.25 * 10 / 5 + 0.75 * 4 / 8, 1e-15, 0);
  r = reduce_loss<double>(10, 4, 5, 8, 0.25, Reduction::SUM, MoMNorm::VALID);
  expect_close("sum", r.loss, 0.25 * 10 + 0.75 * 4, 1e-15, 0);
  // all rows ignored: mean is 0/0 = NaN (as PyTorch), sum is 0
  r = reduce_loss<double>(0, 0, 0, 3, 1.0, Reduction::MEAN, MoMNorm::VALID);
  if (!std::isnan(r.loss)) { std::printf("FAIL all-ignored mean: %g\n", r.loss); ++failures; }
  r = reduce_loss<double>(0, 0, 0, 3, 0.5, Reduction::SUM, MoMNorm::VALID);
  expect_close("all-ignored sum", r.loss, 0, 0, 0);
  // row coefficients
  expect_close("row coef O", row_coefficient<double>(0.1, 0.3, true), 0.4, 1e-15, 0);
  expect_close("row coef entity", row_coefficient<double>(0.1, 0.3, false), 0.1, 1e-15, 0);
}


static void test_factors() {
  // (rel_a + rel_b [y == o]) * global must be reduce_loss's a + b [y == o]
  const double lams[] = {0.0, 0.25, 1.0};
  const Reduction reds[] = {Reduction::NONE, Reduction::SUM, Reduction::MEAN};
  const MoMNorm norms[] = {MoMNorm::VALID, MoMNorm::ROWS};
  const double denom = 5, d_mom = 8;
  char name[128];
  for (double lam : lams) {
    for (Reduction red : reds) {
      for (MoMNorm norm : norms) {
        double ra = -1, rb = -1;
        const bool factors = factor_coefficients(lam, red, norm, ra, rb);
        const bool two_denominators = red == Reduction::MEAN && norm == MoMNorm::ROWS &&
                                      lam != 0.0 && lam != 1.0;
        std::snprintf(name, sizeof name, "factors lam=%g red=%d norm=%d", lam, int(red), int(norm));
        if (factors == two_denominators) {
          std::printf("FAIL %s: factors=%d\n", name, int(factors));
          ++failures;
          continue;
        }
        if (!factors) continue;
        const Reduced<double> r = reduce_loss<double>(1, 1, denom, d_mom, lam, red, norm);
        const double g = global_factor(red, norm, lam, denom, d_mom);
        expect_close(name, ra * g, r.a, 1e-15, 0);
        expect_close(name, (ra + rb) * g, r.a + r.b, 1e-15, 0);
        if (constant_global_factor(lam, red, norm)) {
          // known before any kernel: no use of denom
          expect_close(name, global_factor(red, norm, lam, 12345.0, d_mom), g, 0, 0);
        }
      }
    }
  }
}

static void test_targets() {
  const int64_t C = 5;
  const int64_t ignores[] = {-100, -1, 0, 3, 5, 7};
  for (int64_t ign : ignores) {
    for (int64_t y = -3; y <= 8; ++y) {
      // docs/spec.md: ignore_index wins, then [0, C) is valid, the rest bad
      const RowKind want =
          y == ign ? RowKind::IGNORED : (y >= 0 && y < C ? RowKind::VALID : RowKind::BAD);
      const RowKind got = classify_target(y, C, ign);
      if (got != want || target_valid(y, C, ign) != (want == RowKind::VALID) ||
          target_bad(y, C, ign) != (want == RowKind::BAD)) {
        std::printf("FAIL target y=%lld ignore=%lld: got %d want %d\n", (long long)y,
                    (long long)ign, int(got), int(want));
        ++failures;
      }
    }
  }
  // extremes: no overflow in the range test
  if (classify_target(INT64_MIN, C, -100) != RowKind::BAD ||
      classify_target(INT64_MAX, C, -100) != RowKind::BAD) {
    std::printf("FAIL target extremes\n");
    ++failures;
  }
}

// The state of xs[0:n] built element by element, as one part.
static SoftmaxState<double> state_of(const double* xs, int n) {
  SoftmaxState<double> s = SoftmaxState<double>::empty();
  for (int k = 0; k < n; ++k) {
    const SoftmaxState<double> one{xs[k], 1.0, 0.0, 0.0, 1.0};
    s = merge(s, one);
  }
  return s;
}

static bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

static void test_softmax_state() {
  const double xs[] = {0.5, -2.0, 3.0, 3.0, -40.0, 1.25, 2.999, -1e300};
  const int n = 8;
  double m = xs[0];
  for (double x : xs) m = x > m ? x : m;
  double Z = 0, wdev = 0;
  for (double x : xs) {
    Z += std::exp(x - m);
    wdev += m - x;
  }
  for (int cut = 0; cut <= n; ++cut) {
    const SoftmaxState<double> a = state_of(xs, cut), b = state_of(xs + cut, n - cut);
    const SoftmaxState<double> ab = merge(a, b), ba = merge(b, a);
    if (!(same_bits(ab.m, ba.m) && same_bits(ab.ties, ba.ties) && same_bits(ab.rest, ba.rest) &&
          same_bits(ab.wdev, ba.wdev) && same_bits(ab.wsum, ba.wsum))) {
      std::printf("FAIL merge not symmetric at cut %d\n", cut);
      ++failures;
    }
    expect_close("merged max", ab.m, m, 0, 0);
    expect_close("merged ties", ab.ties, 2, 0, 0);  // 3.0 twice
    expect_close("merged normaliser", log_normaliser(ab.ties, ab.rest), std::log(Z), 1e-14, 0);
    expect_close("merged wdev", ab.wdev, wdev, 1e-14, 0);
    expect_close("merged wsum", ab.wsum, n, 0, 0);
  }
  // a NaN part makes the max NaN, whatever the order
  const SoftmaxState<double> nan_part{std::nan(""), 1.0, 0.0, 0.0, 1.0};
  const SoftmaxState<double> s = state_of(xs, n);
  if (!std::isnan(merge(s, nan_part).m) || !std::isnan(merge(nan_part, s).m)) {
    std::printf("FAIL NaN max not propagated\n");
    ++failures;
  }
}

// A 4-lane "vector" policy made of the scalar functions, lane by lane: the
// template must give every lane exactly row_loss's bits.
template <typename T>
struct Lanes4 {
  std::array<T, 4> v;
  friend Lanes4 operator+(Lanes4 a, Lanes4 b) { for (int i = 0; i < 4; ++i) a.v[i] += b.v[i]; return a; }
  friend Lanes4 operator-(Lanes4 a, Lanes4 b) { for (int i = 0; i < 4; ++i) a.v[i] -= b.v[i]; return a; }
  friend Lanes4 operator*(Lanes4 a, Lanes4 b) { for (int i = 0; i < 4; ++i) a.v[i] *= b.v[i]; return a; }
  friend Lanes4 operator/(Lanes4 a, Lanes4 b) { for (int i = 0; i < 4; ++i) a.v[i] /= b.v[i]; return a; }
};

template <typename T>
struct LaneMath {
  using V = Lanes4<T>;
  using S = T;
  using M = std::array<bool, 4>;
  template <typename F>
  static V map(V a, F f) { for (auto& x : a.v) x = f(x); return a; }
  static V c(double x) { return V{{T(x), T(x), T(x), T(x)}}; }
  static V exp(V a) { return map(a, [](T x) { return ScalarMath<T>::exp(x); }); }
  static V expm1(V a) { return map(a, [](T x) { return ScalarMath<T>::expm1(x); }); }
  static V pow(V b, V e) { for (int i = 0; i < 4; ++i) b.v[i] = ScalarMath<T>::pow(b.v[i], e.v[i]); return b; }
  static V neg(V a) { return map(a, [](T x) { return -x; }); }
  static M gt(V a, V b) { M m; for (int i = 0; i < 4; ++i) m[i] = a.v[i] > b.v[i]; return m; }
  static V max(V a, V b) { for (int i = 0; i < 4; ++i) a.v[i] = ScalarMath<T>::max(a.v[i], b.v[i]); return a; }
  static V select(M m, V a, V b) { for (int i = 0; i < 4; ++i) a.v[i] = m[i] ? a.v[i] : b.v[i]; return a; }
};

template <typename T>
static void lane_parity_for(const LossOptions& o) {
  const T lps[] = {T(-20), T(-1), T(-0.3), T(-1e-6), T(-1e-30), T(0), T(-0.0), T(-700)};
  for (int k = 0; k + 4 <= 8; k += 4) {
    Lanes4<T> lp;
    for (int i = 0; i < 4; ++i) lp.v[i] = lps[k + i];
    const RowLoss<Lanes4<T>> r = row_loss_of<LaneMath<T>>(lp, o);
    for (int i = 0; i < 4; ++i) {
      const RowLoss<T> s = row_loss<T>(lp.v[i], o);
      if (std::memcmp(&s.value, &r.value.v[i], sizeof(T)) != 0 ||
          std::memcmp(&s.h, &r.h.v[i], sizeof(T)) != 0) {
        std::printf("FAIL lane parity kind=%d lp=%g\n", int(o.kind), double(lp.v[i]));
        ++failures;
      }
    }
  }
}

static void test_lane_parity() {
  const LossOptions cases[] = {opts(LossKind::CE), opts(LossKind::FOCAL, 0.0),
                               opts(LossKind::FOCAL, 2.0), opts(LossKind::FOCAL, 3.0),
                               opts(LossKind::DICE, 2, 0.5), opts(LossKind::DICE, 2, 1.0),
                               opts(LossKind::DICE, 2, 2.0, 1.0)};
  for (const LossOptions& o : cases) {
    lane_parity_for<float>(o);
    lane_parity_for<double>(o);
  }
}

static void test_row_grad() {
  // the true-class gradient of ce without smoothing is scale * w_y * (p_y - 1)
  LossOptions o = opts(LossKind::CE);
  const double lp = std::log(0.3);
  const RowGrad<double> g = row_grad<double>(o, 7, 7.0, 2.0, lp, 0.5);
  expect_close("ce grad true class", g.true_class(lp, 0.5), 2.0 * 0.5 * (0.3 - 1), 1e-15, 0);
  expect_close("ce grad P", g.P, 2.0 * 0.5, 1e-15, 0);
  // label smoothing: the gradient of a row sums to 0 over the classes when
  // the weights are 1 (sum_j P p_j - S C + A (p_y - 1) ... = 0)
  o.label_smoothing = 0.1;
  const RowGrad<double> s = row_grad<double>(o, 4, 4.0, 1.0, lp, 1.0);
  const double p_y = 0.3, rest = 1 - p_y;  // sum of the other p_j
  const double total = s.true_class(lp, 1.0) + s.P * rest - 3 * s.S;
  expect_close("smoothed gradient sums to 0", total, 0, 0, 1e-15);
}

int main() {
  test_values_and_gradients();
  test_confident_rows();
  test_log_normaliser();
  test_reduce();
  test_factors();
  test_targets();
  test_softmax_state();
  test_lane_parity();
  test_row_grad();
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all per-row math checks passed\n");
  return 0;
}
