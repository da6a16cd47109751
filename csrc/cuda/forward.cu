// Forward kernels of the MoM loss on CUDA: per-row statistics (max, log
// normaliser), the 'none' output, per-block partial sums, and the one-block
// kernel that reduces the partials into the loss and the coefficients (a, b).
// Layout and reduction scheme: launch.h.  Per-row math: mom_loss.h.
#include "device_common.cuh"

namespace momkernels::cuda {
namespace {

// Where a row's results go once its loss ell is known (group/block leader).
// Invalid rows: stats (0, 0); ignored rows add nothing; BAD rows (target
// outside [0, C), not ignore_index) make the 'none' entry and all three
// partial sums NaN, so the reduced loss is NaN whatever lam is.
template <typename scalar_t>
struct RowOut {
  double s_valid = 0, s_o = 0, denom = 0;

  __device__ void invalid(const FwdParams& p, int64_t i, RowKind kind) {
    using acc_t = acc_of<scalar_t>;
    acc_t* stats = static_cast<acc_t*>(p.stats);
    stats[2 * i] = acc_t(0);
    stats[2 * i + 1] = acc_t(0);
    const bool bad = kind == RowKind::BAD;
    if (p.none_out)
      static_cast<scalar_t*>(p.none_out)[i] = from_acc<scalar_t>(bad ? qnan<acc_t>() : acc_t(0));
    if (bad) s_valid = s_o = denom = qnan<double>();
  }

  __device__ void valid(const FwdParams& p, int64_t i, int64_t y, acc_of<scalar_t> m,
                        acc_of<scalar_t> logs, acc_of<scalar_t> ell, acc_of<scalar_t> w_y) {
    using acc_t = acc_of<scalar_t>;
    acc_t* stats = static_cast<acc_t*>(p.stats);
    stats[2 * i] = m;
    stats[2 * i + 1] = logs;
    const bool is_o = y == p.r.o_index;
    s_valid = double(ell);
    denom = double(w_y);
    if (is_o) s_o = double(ell);
    if (p.none_out) {
      const double coef = is_o ? p.none_a + p.none_b : p.none_a;
      static_cast<scalar_t*>(p.none_out)[i] = from_acc<scalar_t>(acc_t(coef) * ell);
    }
  }
};

__device__ __forceinline__ void write_partials(const FwdParams& p, int64_t slot, double a,
                                               double b, double c) {
  p.partials[3 * slot] = a;
  p.partials[3 * slot + 1] = b;
  p.partials[3 * slot + 2] = c;
}

template <typename acc_t>
__device__ __forceinline__ void write_none_coef(const FwdParams& p) {
  if (p.partials == nullptr && blockIdx.x == 0 && threadIdx.x == 0) {
    static_cast<acc_t*>(p.coef)[0] = acc_t(p.coef_a);
    static_cast<acc_t*>(p.coef)[1] = acc_t(p.coef_b);
  }
}

// ---------------------------------------------------------------- small C

// One row per group of G lanes; lane l holds classes l, l + G, ..., (< C).
template <typename scalar_t, int G>
__global__ void __launch_bounds__(kSmallThreads) fwd_small(const FwdParams p) {
  using acc_t = acc_of<scalar_t>;
  constexpr int kRows = kSmallThreads / G;
  const Rows& r = p.r;
  const int lane = threadIdx.x % G;
  const int64_t i = int64_t(blockIdx.x) * kRows + threadIdx.x / G;
  const bool in_range = i < r.N;
  const int64_t y = in_range ? load_target(r, i) : r.ignore_index;
  const RowKind kind = in_range ? classify(r, y) : RowKind::IGNORED;
  const bool smooth = r.opt.label_smoothing > 0;
  const scalar_t* x = static_cast<const scalar_t*>(r.x);
  write_none_coef<acc_t>(p);

  // Rows without a valid target load nothing; their (NaN) statistics are
  // discarded.  Every lane runs the shuffles below.
  acc_t v[kSmallK];
#pragma unroll
  for (int k = 0; k < kSmallK; ++k) {
    const int64_t j = lane + int64_t(k) * G;
    v[k] = (kind == RowKind::VALID && j < r.C) ? to_acc(x[i * r.sN + j * r.sC]) : neg_inf<acc_t>();
  }
  acc_t m = v[0];
#pragma unroll
  for (int k = 1; k < kSmallK; ++k) m = nanmax(m, v[k]);
  m = group_max<G>(m);
  acc_t ties = 0, rest = 0, wdev = 0, wsum = 0;
#pragma unroll
  for (int k = 0; k < kSmallK; ++k) {
    const int64_t j = lane + int64_t(k) * G;
    if (j < r.C) {
      const acc_t e = bulk_exp(v[k] - m);
      if (e == acc_t(1)) ties += acc_t(1); else rest += e;
      if (smooth) {
        const acc_t wj = class_weight<acc_t>(r, j);
        wdev += wj * (m - v[k]);
        wsum += wj;
      }
    }
  }
  ties = group_sum<G>(ties);
  rest = group_sum<G>(rest);
  if (smooth) {
    wdev = group_sum<G>(wdev);
    wsum = group_sum<G>(wsum);
  }

  RowOut<scalar_t> out;
  if (in_range && lane == 0) {
    if (kind != RowKind::VALID) {
      out.invalid(p, i, kind);
    } else {
      const acc_t logs = log_normaliser(ties, rest);
      const acc_t w_y = class_weight<acc_t>(r, y);
      const acc_t x_y = to_acc(x[i * r.sN + y * r.sC]);
      const acc_t W = r.w ? wsum : acc_t(r.C);
      out.valid(p, i, y, m, logs, row_value<acc_t>(r.opt, r.C, W, x_y, m, logs, wdev, w_y), w_y);
    }
  }
  if (p.partials == nullptr) return;  // uniform over the grid

  // Block partials: butterfly in each warp (only group leaders hold non-zero
  // values), then the warps in order.
  __shared__ double sm[32][3];
  const double a = group_sum<32>(out.s_valid);
  const double b = group_sum<32>(out.s_o);
  const double c = group_sum<32>(out.denom);
  const int wl = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (wl == 0) {
    sm[warp][0] = a;
    sm[warp][1] = b;
    sm[warp][2] = c;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double ta = 0, tb = 0, tc = 0;
    for (int w = 0; w < kSmallThreads / 32; ++w) {
      ta += sm[w][0];
      tb += sm[w][1];
      tc += sm[w][2];
    }
    write_partials(p, blockIdx.x, ta, tb, tc);
  }
}

// ---------------------------------------------------------------- large C

template <typename scalar_t>
__device__ __forceinline__ void add_pack(SoftmaxState<acc_of<scalar_t>>& s,
                                         const Pack<scalar_t>& pk, const Rows& r, int64_t j0,
                                         bool smooth) {
  constexpr int V = Pack<scalar_t>::kN;
  acc_of<scalar_t> v[V];
#pragma unroll
  for (int k = 0; k < V; ++k) v[k] = to_acc(pk.v[k]);
  state_add(s, v, r, j0, smooth);
}

template <typename scalar_t>
__device__ __forceinline__ void add_one(SoftmaxState<acc_of<scalar_t>>& s, scalar_t x,
                                        const Rows& r, int64_t j, bool smooth) {
  const acc_of<scalar_t> v[1] = {to_acc(x)};
  state_add(s, v, r, j, smooth);
}

// One block per row: single pass over the logits with an online softmax.
template <typename scalar_t>
__global__ void __launch_bounds__(512) fwd_large(const FwdParams p) {
  using acc_t = acc_of<scalar_t>;
  __shared__ SoftmaxState<acc_t> smem[32];
  const Rows& r = p.r;
  const int64_t i = blockIdx.x;
  const int tid = threadIdx.x, nt = blockDim.x;
  write_none_coef<acc_t>(p);
  const int64_t y = load_target(r, i);
  const RowKind kind = classify(r, y);
  if (kind != RowKind::VALID) {  // uniform over the block
    if (tid == 0) {
      RowOut<scalar_t> out;
      out.invalid(p, i, kind);
      if (p.partials) write_partials(p, i, out.s_valid, out.s_o, out.denom);
    }
    return;
  }
  const bool smooth = r.opt.label_smoothing > 0;
  const scalar_t* row = static_cast<const scalar_t*>(r.x) + i * r.sN;
  SoftmaxState<acc_t> s = state_empty<acc_t>();
  if (r.sC == 1) {
    // scalar head up to the first 16-byte boundary, 16-byte body, scalar tail
    constexpr int V = Pack<scalar_t>::kN;
    const Split sp = split_row<scalar_t>(row, r.C);
    if (tid < sp.head) add_one(s, row[tid], r, tid, smooth);
    const scalar_t* body = row + sp.head;
    int64_t q = tid;
    for (; q + nt < sp.nvec; q += 2 * nt) {  // two 16-byte loads in flight per thread
      const Pack<scalar_t> a = load_pack(body + q * V);
      const Pack<scalar_t> b = load_pack(body + (q + nt) * V);
      add_pack(s, a, r, sp.head + q * V, smooth);
      add_pack(s, b, r, sp.head + (q + nt) * V, smooth);
    }
    if (q < sp.nvec) add_pack(s, load_pack(body + q * V), r, sp.head + q * V, smooth);
    if (tid < r.C - sp.tail0) add_one(s, row[sp.tail0 + tid], r, sp.tail0 + tid, smooth);
  } else {
    for (int64_t j = tid; j < r.C; j += nt) add_one(s, row[j * r.sC], r, j, smooth);
  }
  s = block_merge(s, smem);
  if (tid == 0) {
    const acc_t logs = log_normaliser(s.ties, s.rest);
    const acc_t w_y = class_weight<acc_t>(r, y);
    const acc_t x_y = to_acc(row[y * r.sC]);
    const acc_t W = r.w ? s.wsum : acc_t(r.C);
    RowOut<scalar_t> out;
    out.valid(p, i, y, s.m, logs, row_value<acc_t>(r.opt, r.C, W, x_y, s.m, logs, s.wdev, w_y), w_y);
    if (p.partials) write_partials(p, i, out.s_valid, out.s_o, out.denom);
  }
}

// ---------------------------------------------------------------- finish

// Adds the partial slots in a fixed order (thread t: slots t, t + T, ...; then
// a fixed tree), applies reduce_loss and writes the loss and (a, b).
__global__ void __launch_bounds__(kFinishThreads) finish_kernel(const FinishParams p) {
  __shared__ double smem[32];
  double a = 0, b = 0, c = 0;
  for (int64_t k = threadIdx.x; k < p.num_partials; k += blockDim.x) {
    a += p.partials[3 * k];
    b += p.partials[3 * k + 1];
    c += p.partials[3 * k + 2];
  }
  a = block_sum(a, smem);
  b = block_sum(b, smem);
  c = block_sum(c, smem);
  if (threadIdx.x != 0) return;
  const Reduced<double> red = reduce_loss<double>(a, b, c, p.rows, p.lam, p.red, p.norm);
  if (p.dtype == DType::Double) {
    static_cast<double*>(p.coef)[0] = red.a;
    static_cast<double*>(p.coef)[1] = red.b;
    if (p.loss_out) *static_cast<double*>(p.loss_out) = red.loss;
    return;
  }
  static_cast<float*>(p.coef)[0] = float(red.a);
  static_cast<float*>(p.coef)[1] = float(red.b);
  if (p.loss_out == nullptr) return;
  const float l = float(red.loss);  // double -> float -> dtype, as fill_ does
  switch (p.dtype) {
    case DType::Half: *static_cast<__half*>(p.loss_out) = __float2half_rn(l); break;
    case DType::BFloat16: *static_cast<__nv_bfloat16*>(p.loss_out) = __float2bfloat16_rn(l); break;
    default: *static_cast<float*>(p.loss_out) = l; break;
  }
}

template <typename scalar_t>
void launch_forward_typed(const FwdParams& p, cudaStream_t stream) {
  const int64_t N = p.r.N, C = p.r.C;
  if (C > kSmallMaxC) {
    MOMK_LAUNCH(unsigned(N), large_threads(C), stream, fwd_large<scalar_t>)(p);
    return;
  }
  const unsigned nb = unsigned(forward_num_partials(N, C));
  switch (small_group(C)) {
    case 1: MOMK_LAUNCH(nb, kSmallThreads, stream, fwd_small<scalar_t, 1>)(p); break;
    case 2: MOMK_LAUNCH(nb, kSmallThreads, stream, fwd_small<scalar_t, 2>)(p); break;
    case 4: MOMK_LAUNCH(nb, kSmallThreads, stream, fwd_small<scalar_t, 4>)(p); break;
    case 8: MOMK_LAUNCH(nb, kSmallThreads, stream, fwd_small<scalar_t, 8>)(p); break;
    case 16: MOMK_LAUNCH(nb, kSmallThreads, stream, fwd_small<scalar_t, 16>)(p); break;
    default: MOMK_LAUNCH(nb, kSmallThreads, stream, fwd_small<scalar_t, 32>)(p); break;
  }
}

}  // namespace

cudaError_t launch_forward(const FwdParams& p, cudaStream_t stream) {
  if (p.r.N == 0) return cudaSuccess;
  switch (p.r.dtype) {
    case DType::Half: launch_forward_typed<__half>(p, stream); break;
    case DType::BFloat16: launch_forward_typed<__nv_bfloat16>(p, stream); break;
    case DType::Float: launch_forward_typed<float>(p, stream); break;
    case DType::Double: launch_forward_typed<double>(p, stream); break;
  }
  return MOMK_LAST_ERROR();
}

cudaError_t launch_finish(const FinishParams& p, cudaStream_t stream) {
  MOMK_LAUNCH(1, kFinishThreads, stream, finish_kernel)(p);
  return MOMK_LAST_ERROR();
}

}  // namespace momkernels::cuda
