// Device helpers shared by the forward and backward kernels: element types,
// loads, warp/group reductions of mom_loss.h's online-softmax state, and the
// gradient of one element from mom_loss.h's row_grad.  The math, the target
// rule and the row view are mom_loss.h's (shared with the CPU kernels).
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

// mom_loss.h's SoftmaxState and merge; here the per-element accumulation and
// the warp / block reductions of states.

template <typename acc_t>
__device__ __forceinline__ SoftmaxState<acc_t> state_empty() {
  return SoftmaxState<acc_t>::empty();
}

// Add V consecutive logits v (classes j0 .. j0 + V - 1) to the state.
template <typename acc_t, int V>
__device__ __forceinline__ void state_add(SoftmaxState<acc_t>& s, const acc_t (&v)[V],
                                          const Rows& r, int64_t j0, bool smooth) {
  acc_t cm = v[0];
#pragma unroll
  for (int k = 1; k < V; ++k) cm = nanmax(cm, v[k]);
  if (cm > s.m || cm != cm) s.rescale(cm);
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
  for (int o = 16; o > 0; o >>= 1) s = merge(s, state_shfl_xor(s, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  if (lane == 0) smem[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < nwarps ? smem[lane] : state_empty<acc_t>();
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s = merge(s, state_shfl_xor(s, o));
  }
  return s;
}

// ---------------------------------------------------------------- per-row math

// mom_loss.h's row_grad for one row, with what grad_elem needs beside it.
template <typename acc_t>
struct RowGradAt {
  RowGrad<acc_t> g;
  acc_t m, logs, lp, w_y;
};

template <typename acc_t>
__device__ __forceinline__ RowGradAt<acc_t> row_grad_at(const Rows& r, acc_t scale, acc_t x_y,
                                                        acc_t m, acc_t logs, acc_t W, acc_t w_y) {
  RowGradAt<acc_t> a;
  a.m = m;
  a.logs = logs;
  a.lp = (x_y - m) - logs;
  a.w_y = w_y;
  a.g = row_grad<acc_t>(r.opt, r.C, W, scale, a.lp, w_y);
  return a;
}

// d loss / d x_j.  (x - m) - logs, not x - (m + logs): the latter rounds
// m + logs to m's magnitude and loses p's relative accuracy for huge logits.
template <typename acc_t>
__device__ __forceinline__ acc_t grad_elem(const RowGradAt<acc_t>& a, const Rows& r, acc_t x,
                                           int64_t j, int64_t y) {
  const RowGrad<acc_t>& g = a.g;
  if (j == y) return g.true_class(a.lp, a.w_y);
  const acc_t p = bulk_exp((x - a.m) - a.logs);
  return g.S == acc_t(0) ? g.P * p : g.P * p - g.S * class_weight<acc_t>(r, j);
}

}  // namespace momkernels::cuda
