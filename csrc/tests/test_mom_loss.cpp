// Unit test of the per-row math in mom_loss.h (run by ctest; no torch needed).
//  * values against the formulas of docs/spec.md written independently here;
//  * the gradient factor h against a central finite difference of the value:
//    l(lp) with lp = log p_y gives dl/dlp = -h;
//  * log_normaliser keeps log(1 + rest) exact for rest far below epsilon;
//  * reduce_loss drops zero-coefficient terms (lam = 1 stays finite-safe).
#include <cmath>
#include <cstdio>
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

int main() {
  test_values_and_gradients();
  test_confident_rows();
  test_log_normaliser();
  test_reduce();
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all per-row math checks passed\n");
  return 0;
}
