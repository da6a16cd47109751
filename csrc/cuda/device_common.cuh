// Device helpers shared by the forward and backward kernels: element types,
// loads, warp/group reductions, the online-softmax state and the composition
// of mom_loss.h's per-row math into a row's loss and gradient coefficients
// (the same composition as the CPU kernels' row_value / row_grad).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../mom_loss.h"
#include "launch.h"

namespace momkernels::cuda {

using detail::m_exp;
using detail::m_expm1;

// ---------------------------------------------------------------- types

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using acc_of = typename AccOf<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

// Round to nearest even, as c10::Half / c10::BFloat16 do.
template <typename T> struct FromAcc;
template <> struct FromAcc<float> {
  __device__ __forceinline__ static float cvt(float v) { return v; }
};
template <> struct FromAcc<double> {
  __device__ __forceinline__ static double cvt(double v) { return v; }
};
template <> struct FromAcc<__half> {
  __device__ __forceinline__ static __half cvt(float v) { return __float2half_rn(v); }
};
template <> struct FromAcc<__nv_bfloat16> {
  __device__ __forceinline__ static __nv_bfloat16 cvt(float v) { return __float2bfloat16_rn(v); }
};
template <typename T>
__device__ __forceinline__ T from_acc(acc_of<T> v) { return FromAcc<T>::cvt(v); }

template <typename acc_t> __device__ __forceinline__ acc_t neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return __int_as_float(0xff800000); }
template <> __device__ __forceinline__ double neg_inf<double>() {
  return __longlong_as_double(static_cast<long long>(0xfff0000000000000ULL));
}
template <typename acc_t> __device__ __forceinline__ acc_t qnan();
template <> __device__ __forceinline__ float qnan<float>() { return __int_as_float(0x7fffffff); }
template <> __device__ __forceinline__ double qnan<double>() {
  return __longlong_as_double(0x7fffffffffffffffLL);
}

// exp(v) for the bulk of a row (the softmax sum and the gradient's p_j), where
// the exact exp's range reduction costs more instructions than the memory
// traffic allows at LM vocabularies: float uses exp2f(v * log2 e), one MUFU op
// and a multiply, 2 ulp plus |v| * 2^-23 relative (far below the 1e-5 of the
// tests for every term that matters).  v = 0 still gives exactly 1, so ties
// with the row max are counted exactly (log_normaliser).  The per-row math
// (row_loss, expm1 of the true class) keeps mom_loss.h's exact functions.
__device__ __forceinline__ float bulk_exp(float v) { return exp2f(v * 1.4426950408889634f); }
__device__ __forceinline__ double bulk_exp(double v) { return m_exp(v); }

// max that propagates NaN (a NaN logit makes the row NaN, as in PyTorch).
template <typename acc_t>
__device__ __forceinline__ acc_t nanmax(acc_t a, acc_t b) {
  return (a > b || a != a) ? a : b;
}

// 16 bytes of logits: one vector load / store.
template <typename scalar_t>
struct alignas(16) Pack {
  static constexpr int kN = 16 / sizeof(scalar_t);
  scalar_t v[kN];
};

template <typename scalar_t>
__device__ __forceinline__ Pack<scalar_t> load_pack(const scalar_t* ptr) {
  Pack<scalar_t> out;
  *reinterpret_cast<uint4*>(&out) = __ldg(reinterpret_cast<const uint4*>(ptr));
  return out;
}

template <typename scalar_t>
__device__ __forceinline__ void store_pack(scalar_t* ptr, const Pack<scalar_t>& pk) {
#ifdef MOMK_CUDA_EMULATION
  momk_check_aligned16(ptr);
#endif
  *reinterpret_cast<uint4*>(ptr) = *reinterpret_cast<const uint4*>(&pk);
}

// Head / 16-byte body / tail split of a contiguous row at address `base`.
struct Split {
  int64_t head, nvec, tail0;
};

template <typename scalar_t>
__device__ __forceinline__ Split split_row(const void* base, int64_t C) {
  constexpr int V = Pack<scalar_t>::kN;
  const int64_t mis = int64_t(reinterpret_cast<uintptr_t>(base) & 15) / int64_t(sizeof(scalar_t));
  Split s;
  s.head = mis == 0 ? 0 : (C < V - mis ? C : V - mis);
  s.nvec = (C - s.head) / V;
  s.tail0 = s.head + s.nvec * V;
  return s;
}

__device__ __forceinline__ int64_t load_target(const Rows& r, int64_t i) {
  return r.t_int32 ? static_cast<int64_t>(static_cast<const int32_t*>(r.t)[i * r.sT])
                   : static_cast<const int64_t*>(r.t)[i * r.sT];
}

template <typename acc_t>
__device__ __forceinline__ acc_t class_weight(const Rows& r, int64_t j) {
  return r.w ? static_cast<const acc_t*>(r.w)[j] : acc_t(1);
}

enum class RowKind { VALID, IGNORED, BAD };

// A target equal to ignore_index is ignored (even inside [0, C)); any other
// value outside [0, C) is BAD: never used as an index, its row becomes NaN.
__device__ __forceinline__ RowKind classify(const Rows& r, int64_t y) {
  if (y == r.ignore_index) return RowKind::IGNORED;
  if (y < 0 || y >= r.C) return RowKind::BAD;
  return RowKind::VALID;
}

// ---------------------------------------------------------------- reductions

constexpr unsigned kFullMask = 0xffffffffu;

// Sum over the G lanes of a group (G a power of two <= 32, groups aligned in
// the warp); every lane of the group gets the same value.  All 32 lanes of the
// warp must call it.
template <int G, typename T>
__device__ __forceinline__ T group_sum(T v) {
#pragma unroll
  for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o, G);
  return v;
}

template <int G, typename T>
__device__ __forceinline__ T group_max(T v) {
#pragma unroll
  for (int o = G / 2; o > 0; o >>= 1) v = nanmax(v, __shfl_xor_sync(kFullMask, v, o, G));
  return v;
}

// Sum over the block in a fixed order (butterfly in each warp, then warp 0
// over the warps); the result is valid in thread 0.  Every thread must call it.
template <typename T>
__device__ T block_sum(T v, T* smem /* >= 32 */) {
  v = group_sum<32>(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  __syncthreads();  // smem may be in use by a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nwarps ? smem[lane] : T(0);
    v = group_sum<32>(v);
  }
  return v;
}

// ---------------------------------------------------------------- online softmax

// Softmax normaliser of part of a row relative to its running max m, split as
// in mom_loss.h's log_normaliser: `ties` elements whose exp(x - m) is exactly 1
// and `rest` = the sum of the others.  For label smoothing also
// wdev = sum w_c (m - x_c) (all terms >= 0) and wsum = sum w_c.
template <typename acc_t>
struct SoftmaxState {
  acc_t m, ties, rest, wdev, wsum;
};

template <typename acc_t>
__device__ __forceinline__ SoftmaxState<acc_t> state_empty() {
  return SoftmaxState<acc_t>{neg_inf<acc_t>(), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
}

// Re-express the state relative to a larger (or NaN) max.
template <typename acc_t>
__device__ __forceinline__ void state_rescale(SoftmaxState<acc_t>& s, acc_t new_m) {
  const acc_t scale = m_exp(s.m - new_m);  // 0 when s.m = -inf; NaN when new_m is NaN
  s.rest = (s.ties + s.rest) * scale;
  s.ties = acc_t(0);
  s.wdev = s.wsum > acc_t(0) ? s.wdev + (new_m - s.m) * s.wsum : acc_t(0);
  s.m = new_m;
}

// Add V consecutive logits v (classes j0 .. j0 + V - 1) to the state.
template <typename acc_t, int V>
__device__ __forceinline__ void state_add(SoftmaxState<acc_t>& s, const acc_t (&v)[V],
                                          const Rows& r, int64_t j0, bool smooth) {
  acc_t cm = v[0];
#pragma unroll
  for (int k = 1; k < V; ++k) cm = nanmax(cm, v[k]);
  if (cm > s.m || cm != cm) state_rescale(s, cm);
  // While m = -inf every logit seen is -inf and contributes exp(-inf) = 0
  // (computing it would give exp(-inf + inf) = NaN); a NaN m already made rest NaN.
  if (s.m > neg_inf<acc_t>()) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const acc_t e = bulk_exp(v[k] - s.m);
      if (e == acc_t(1)) s.ties += acc_t(1); else s.rest += e;
    }
  }
  if (smooth) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const acc_t wj = class_weight<acc_t>(r, j0 + k);
      // v == m adds 0, also while both are -inf (a pack of -inf logits before
      // any finite one: -inf - (-inf) would be NaN; the later rescale by
      // (new_m - (-inf)) wsum makes wdev +inf, PyTorch's value)
      if (v[k] != s.m) s.wdev += wj * (s.m - v[k]);
      s.wsum += wj;
    }
  }
}

// Part of state s relative to the common max M >= s.m (or NaN).
template <typename acc_t>
__device__ __forceinline__ void state_shift(const SoftmaxState<acc_t>& s, acc_t M, acc_t& ties,
                                            acc_t& rest, acc_t& wdev) {
  if (s.m == M) {
    ties = s.ties;
    rest = s.rest;
    wdev = s.wdev;
  } else {
    ties = acc_t(0);
    rest = (s.ties + s.rest) * m_exp(s.m - M);
    wdev = s.wsum > acc_t(0) ? s.wdev + (M - s.m) * s.wsum : acc_t(0);
  }
}

template <typename acc_t>
__device__ __forceinline__ SoftmaxState<acc_t> state_merge(const SoftmaxState<acc_t>& a,
                                                           const SoftmaxState<acc_t>& b) {
  SoftmaxState<acc_t> o;
  o.m = nanmax(a.m, b.m);
  acc_t ta, ra, wa, tb, rb, wb;
  state_shift(a, o.m, ta, ra, wa);
  state_shift(b, o.m, tb, rb, wb);
  o.ties = ta + tb;
  o.rest = ra + rb;
  o.wdev = wa + wb;
  o.wsum = a.wsum + b.wsum;
  return o;
}

template <typename acc_t>
__device__ __forceinline__ SoftmaxState<acc_t> state_shfl_xor(const SoftmaxState<acc_t>& s,
                                                              int o) {
  SoftmaxState<acc_t> t;
  t.m = __shfl_xor_sync(kFullMask, s.m, o);
  t.ties = __shfl_xor_sync(kFullMask, s.ties, o);
  t.rest = __shfl_xor_sync(kFullMask, s.rest, o);
  t.wdev = __shfl_xor_sync(kFullMask, s.wdev, o);
  t.wsum = __shfl_xor_sync(kFullMask, s.wsum, o);
  return t;
}

// Merge the states of the whole block in a fixed order; result in thread 0.
template <typename acc_t>
__device__ SoftmaxState<acc_t> block_merge(SoftmaxState<acc_t> s, SoftmaxState<acc_t>* smem) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s = state_merge(s, state_shfl_xor(s, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  if (lane == 0) smem[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < nwarps ? smem[lane] : state_empty<acc_t>();
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s = state_merge(s, state_shfl_xor(s, o));
  }
  return s;
}

// ---------------------------------------------------------------- per-row math

// Loss l_i of one valid row from its statistics (mom_loss.h's row_loss and
// smoothing_value): w_y f(p_y), and with label smoothing
// (1 - eps) w_y (-log p_y) + (eps / C) sum_c w_c (-log p_c).
template <typename acc_t>
__device__ __forceinline__ acc_t row_value(const Rows& r, acc_t x_y, acc_t m, acc_t logs,
                                           acc_t wdev, acc_t W, acc_t w_y) {
  const acc_t lp = (x_y - m) - logs;
  acc_t ell = w_y * row_loss<acc_t>(lp, r.opt).value;
  if (r.opt.label_smoothing > 0) {
    const acc_t eps = acc_t(r.opt.label_smoothing);
    ell = (acc_t(1) - eps) * ell + smoothing_value<acc_t>(wdev, W, logs, eps, r.C);
  }
  return ell;
}

// Gradient of one valid row, scaled by upstream gradient x row coefficient:
//   j != y:  P p_j - S w_j                      (P = A + Bs)
//   j == y:  A expm1(lp) + Bs p_y - S w_y       (p_y - 1 = expm1(lp), exact as p_y -> 1)
// with A = scale (1 - eps) w_y h, S = scale eps / C, Bs = S W.
template <typename acc_t>
struct RowGrad {
  acc_t A, Bs, S, P;
  acc_t m, logs, lp, w_y;
};

template <typename acc_t>
__device__ __forceinline__ RowGrad<acc_t> row_grad(const Rows& r, acc_t scale, acc_t x_y,
                                                   acc_t m, acc_t logs, acc_t W, acc_t w_y) {
  RowGrad<acc_t> g;
  g.m = m;
  g.logs = logs;
  g.lp = (x_y - m) - logs;
  g.w_y = w_y;
  const acc_t h = row_loss<acc_t>(g.lp, r.opt).h;
  const acc_t eps = acc_t(r.opt.label_smoothing);
  g.A = scale * (acc_t(1) - eps) * w_y * h;
  g.S = scale * eps / acc_t(r.C);
  g.Bs = g.S * W;
  g.P = g.A + g.Bs;
  return g;
}

// d loss / d x_j.  (x - m) - logs, not x - (m + logs): the latter rounds
// m + logs to m's magnitude and loses p's relative accuracy for huge logits.
template <typename acc_t>
__device__ __forceinline__ acc_t grad_elem(const RowGrad<acc_t>& g, const Rows& r, acc_t x,
                                           int64_t j, int64_t y) {
  if (j == y) return g.A * m_expm1(g.lp) + g.Bs * m_exp(g.lp) - g.S * g.w_y;
  const acc_t p = bulk_exp((x - g.m) - g.logs);
  return g.S == acc_t(0) ? g.P * p : g.P * p - g.S * class_weight<acc_t>(r, j);
}

}  // namespace momkernels::cuda
