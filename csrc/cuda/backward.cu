// Backward kernel of the MoM loss on CUDA: d loss / d logits from the logits,
// the per-row statistics and the coefficients (a, b) that the forward left on
// the device (never read on the host).  One launch; layout as the forward's
// (launch.h).  Rows with an ignored target, or whose coefficient times the
// upstream gradient is 0, get exact zeros; rows with an out-of-range target
// (not ignore_index; their forward loss is NaN) get NaN in every class.
#include "device_common.cuh"

namespace momkernels::cuda {
namespace {

template <typename scalar_t>
__device__ __forceinline__ acc_of<scalar_t> upstream(const BwdParams& p, int64_t i) {
  using acc_t = acc_of<scalar_t>;
  if (p.grad_is_acc) return static_cast<const acc_t*>(p.grad)[i * p.sG];
  return to_acc(static_cast<const scalar_t*>(p.grad)[i * p.sG]);
}

// Upstream gradient x row coefficient c_i = a + b [y == o_index]; 0 when the
// row is not VALID.
template <typename scalar_t>
__device__ __forceinline__ acc_of<scalar_t> row_scale(const BwdParams& p, int64_t i, int64_t y,
                                                      RowKind kind) {
  using acc_t = acc_of<scalar_t>;
  if (kind != RowKind::VALID) return acc_t(0);
  const acc_t* coef = static_cast<const acc_t*>(p.coef);
  const acc_t c = row_coefficient<acc_t>(coef[0], coef[p.sCoef], y == p.r.o_index);
  return upstream<scalar_t>(p, i) * c;
}

template <typename scalar_t>
__device__ __forceinline__ void load_stats(const BwdParams& p, int64_t i, acc_of<scalar_t>& m,
                                           acc_of<scalar_t>& logs) {
  const acc_of<scalar_t>* st = static_cast<const acc_of<scalar_t>*>(p.stats);
  m = st[i * p.sS0];
  logs = st[i * p.sS0 + p.sS1];
}

// ---------------------------------------------------------------- small C

template <typename scalar_t, int G>
__global__ void __launch_bounds__(kSmallThreads) bwd_small(const BwdParams p) {
  using acc_t = acc_of<scalar_t>;
  constexpr int kRows = kSmallThreads / G;
  const Rows& r = p.r;
  const int lane = threadIdx.x % G;
  const int64_t i = int64_t(blockIdx.x) * kRows + threadIdx.x / G;
  const bool in_range = i < r.N;

  // W = sum of the class weights (label smoothing with weights only); the
  // shuffles need every lane, so this comes before any early exit.
  acc_t W = acc_t(r.C);
  if (r.opt.label_smoothing > 0 && r.w) {
    acc_t ws = 0;
#pragma unroll
    for (int k = 0; k < kSmallK; ++k) {
      const int64_t j = lane + int64_t(k) * G;
      if (j < r.C) ws += class_weight<acc_t>(r, j);
    }
    W = group_sum<G>(ws);
  }
  if (!in_range) return;

  const int64_t y = load_target(r, i);
  const RowKind kind = classify(r, y);
  const acc_t scale = row_scale<scalar_t>(p, i, y, kind);
  scalar_t* out = static_cast<scalar_t*>(p.grad_in) + i * r.C;
  if (kind != RowKind::VALID || scale == acc_t(0)) {
    const scalar_t fill = from_acc<scalar_t>(kind == RowKind::BAD ? qnan<acc_t>() : acc_t(0));
#pragma unroll
    for (int k = 0; k < kSmallK; ++k) {
      const int64_t j = lane + int64_t(k) * G;
      if (j < r.C) out[j] = fill;
    }
    return;
  }
  const scalar_t* x = static_cast<const scalar_t*>(r.x) + i * r.sN;
  acc_t m, logs;
  load_stats<scalar_t>(p, i, m, logs);
  const RowGradAt<acc_t> g =
      row_grad_at(r, scale, to_acc(x[y * r.sC]), m, logs, W, class_weight<acc_t>(r, y));
#pragma unroll
  for (int k = 0; k < kSmallK; ++k) {
    const int64_t j = lane + int64_t(k) * G;
    if (j < r.C) out[j] = from_acc<scalar_t>(grad_elem(g, r, to_acc(x[j * r.sC]), j, y));
  }
}

// ---------------------------------------------------------------- large C

template <typename scalar_t>
__device__ void fill_row(scalar_t* out, int64_t C, scalar_t value) {
  constexpr int V = Pack<scalar_t>::kN;
  const int tid = threadIdx.x, nt = blockDim.x;
  const Split sp = split_row<scalar_t>(out, C);
  Pack<scalar_t> pk;
#pragma unroll
  for (int k = 0; k < V; ++k) pk.v[k] = value;
  if (tid < sp.head) out[tid] = value;
  for (int64_t q = tid; q < sp.nvec; q += nt) store_pack(out + sp.head + q * V, pk);
  if (tid < C - sp.tail0) out[sp.tail0 + tid] = value;
}

template <typename scalar_t>
__global__ void __launch_bounds__(512) bwd_large(const BwdParams p) {
  using acc_t = acc_of<scalar_t>;
  constexpr int V = Pack<scalar_t>::kN;
  __shared__ acc_t smem[32];
  __shared__ acc_t smem_W;
  const Rows& r = p.r;
  const int64_t i = blockIdx.x;
  const int tid = threadIdx.x, nt = blockDim.x;
  const int64_t y = load_target(r, i);
  const RowKind kind = classify(r, y);
  const acc_t scale = row_scale<scalar_t>(p, i, y, kind);
  scalar_t* out = static_cast<scalar_t*>(p.grad_in) + i * r.C;
  if (kind != RowKind::VALID || scale == acc_t(0)) {  // uniform over the block
    fill_row(out, r.C, from_acc<scalar_t>(kind == RowKind::BAD ? qnan<acc_t>() : acc_t(0)));
    return;
  }
  acc_t W = acc_t(r.C);
  if (r.opt.label_smoothing > 0 && r.w) {
    acc_t ws = 0;
    for (int64_t j = tid; j < r.C; j += nt) ws += class_weight<acc_t>(r, j);
    ws = block_sum(ws, smem);
    if (tid == 0) smem_W = ws;
    __syncthreads();
    W = smem_W;
  }
  const scalar_t* row = static_cast<const scalar_t*>(r.x) + i * r.sN;
  acc_t m, logs;
  load_stats<scalar_t>(p, i, m, logs);
  const RowGradAt<acc_t> g =
      row_grad_at(r, scale, to_acc(row[y * r.sC]), m, logs, W, class_weight<acc_t>(r, y));

  const bool vec = r.sC == 1 && (reinterpret_cast<uintptr_t>(row) & 15) ==
                                    (reinterpret_cast<uintptr_t>(out) & 15);
  if (!vec) {
    for (int64_t j = tid; j < r.C; j += nt)
      out[j] = from_acc<scalar_t>(grad_elem(g, r, to_acc(row[j * r.sC]), j, y));
    return;
  }
  // same misalignment for logits and gradient: one split serves both
  const Split sp = split_row<scalar_t>(row, r.C);
  if (tid < sp.head) out[tid] = from_acc<scalar_t>(grad_elem(g, r, to_acc(row[tid]), tid, y));
  const scalar_t* xb = row + sp.head;
  scalar_t* ob = out + sp.head;
  int64_t q = tid;
  for (; q + nt < sp.nvec; q += 2 * nt) {  // two 16-byte loads in flight per thread
    const Pack<scalar_t> a = load_pack(xb + q * V);
    const Pack<scalar_t> b = load_pack(xb + (q + nt) * V);
    Pack<scalar_t> ga, gb;
    const int64_t ja = sp.head + q * V, jb = sp.head + (q + nt) * V;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      ga.v[k] = from_acc<scalar_t>(grad_elem(g, r, to_acc(a.v[k]), ja + k, y));
      gb.v[k] = from_acc<scalar_t>(grad_elem(g, r, to_acc(b.v[k]), jb + k, y));
    }
    store_pack(ob + q * V, ga);
    store_pack(ob + (q + nt) * V, gb);
  }
  if (q < sp.nvec) {
    const Pack<scalar_t> a = load_pack(xb + q * V);
    Pack<scalar_t> ga;
    const int64_t ja = sp.head + q * V;
#pragma unroll
    for (int k = 0; k < V; ++k)
      ga.v[k] = from_acc<scalar_t>(grad_elem(g, r, to_acc(a.v[k]), ja + k, y));
    store_pack(ob + q * V, ga);
  }
  if (tid < r.C - sp.tail0) {
    const int64_t j = sp.tail0 + tid;
    out[j] = from_acc<scalar_t>(grad_elem(g, r, to_acc(row[j]), j, y));
  }
}

template <typename scalar_t>
void launch_backward_typed(const BwdParams& p, cudaStream_t stream) {
  const int64_t N = p.r.N, C = p.r.C;
  if (C > kSmallMaxC) {
    MOMK_LAUNCH(unsigned(N), large_threads(C), stream, bwd_large<scalar_t>)(p);
    return;
  }
  const unsigned nb = unsigned(forward_num_partials(N, C));  // same row blocks as the forward
  switch (small_group(C)) {
    case 1: MOMK_LAUNCH(nb, kSmallThreads, stream, bwd_small<scalar_t, 1>)(p); break;
    case 2: MOMK_LAUNCH(nb, kSmallThreads, stream, bwd_small<scalar_t, 2>)(p); break;
    case 4: MOMK_LAUNCH(nb, kSmallThreads, stream, bwd_small<scalar_t, 4>)(p); break;
    case 8: MOMK_LAUNCH(nb, kSmallThreads, stream, bwd_small<scalar_t, 8>)(p); break;
    case 16: MOMK_LAUNCH(nb, kSmallThreads, stream, bwd_small<scalar_t, 16>)(p); break;
    default: MOMK_LAUNCH(nb, kSmallThreads, stream, bwd_small<scalar_t, 32>)(p); break;
  }
}

}  // namespace

cudaError_t launch_backward(const BwdParams& p, cudaStream_t stream) {
  if (p.r.N == 0) return cudaSuccess;
  switch (p.r.dtype) {
    case DType::Half: launch_backward_typed<__half>(p, stream); break;
    case DType::BFloat16: launch_backward_typed<__nv_bfloat16>(p, stream); break;
    case DType::Float: launch_backward_typed<float>(p, stream); break;
    case DType::Double: launch_backward_typed<double>(p, stream); break;
  }
  return MOMK_LAST_ERROR();
}

}  // namespace momkernels::cuda
