// The CUDA forward kernels (forward.cu, unchanged) run on the CPU through
// cuda_shim.h, without torch: a program that compiles in seconds, for tests
// of the per-row math (python_tests/test_regressions.py).  check_kernels.py
// is the full emulation (both directions, every dtype and layout).
//
// stdin:  N C label_smoothing, then N targets, then N * C float32 logits
//         (row-major; "-inf" / "inf" / "nan" accepted)
// stdout: the N per-row losses of reduction 'none' with lam = 1 (printf %.9g)
#include "cuda_shim.h"

#include <cmath>
#include <iostream>
#include <string>

#include "../forward.cu"

namespace mc = momkernels::cuda;

static float read_float(std::istream& in) {
  std::string s;
  in >> s;
  return std::strtof(s.c_str(), nullptr);
}

int main() {
  int64_t N = 0, C = 0;
  double eps = 0;
  if (!(std::cin >> N >> C >> eps) || N < 1 || C < 1) {
    std::fprintf(stderr, "usage: N C label_smoothing, N targets, N*C logits on stdin\n");
    return 2;
  }
  std::vector<int64_t> t(N);
  for (auto& v : t) std::cin >> v;
  std::vector<float> x(N * C), stats(2 * N), none(N), coef(2);
  for (auto& v : x) v = read_float(std::cin);

  mc::FwdParams p{};
  p.r.dtype = mc::DType::Float;
  p.r.x = x.data();
  p.r.N = N;
  p.r.C = C;
  p.r.sN = C;
  p.r.sC = 1;
  p.r.t = t.data();
  p.r.sT = 1;
  p.r.t_int32 = false;
  p.r.w = nullptr;
  p.r.ignore_index = -100;
  p.r.o_index = 0;
  p.r.opt.label_smoothing = eps;
  p.stats = stats.data();
  p.none_out = none.data();
  p.none_a = 1.0;  // lam = 1: c_i = 1
  p.none_b = 0.0;
  p.partials = nullptr;  // reduction 'none'
  p.coef = coef.data();
  p.coef_a = 1.0;
  p.coef_b = 0.0;
  mc::launch_forward(p, nullptr);
  for (int64_t i = 0; i < N; ++i) std::printf("%.9g\n", double(none[i]));
  return 0;
}
