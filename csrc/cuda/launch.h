// Interface between the CUDA operators (ops_cuda.cu: checks, allocation,
// stream, registration) and the kernel files (forward.cu, backward.cu), which
// include no torch headers so they compile quickly.
//
// Layout of the work, picked from C alone (never from the GPU or the thread
// count, so results are bitwise reproducible):
//  * small C (C <= kSmallMaxC, NER tag sets): a group of G lanes per row,
//    G = next power of two >= ceil(C / kSmallK), each lane holding up to
//    kSmallK logits in registers; kSmallThreads / G rows per block, so an
//    8192 x 9 batch is 128 blocks of 64 rows;
//  * large C (vocabularies): one block per row, 16-byte vector loads and stores
//    where the row is contiguous, a single-pass online softmax (running max and
//    normaliser merged), int64 offsets.
// Reductions: each block of the forward writes (sum_V l, sum_O l, sum_V w_y) to
// its own slot of a double buffer; a one-block kernel adds the slots in a fixed
// order and applies reduce_loss (mom_loss.h).  No host synchronisation.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../mom_loss.h"

// Kernel launch, as a macro so that host_emulation/ can run the very same
// launch code on the CPU (it defines both before including the kernel files).
#ifndef MOMK_LAUNCH
#define MOMK_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<(grid), (block), 0, (stream)>>>
#define MOMK_LAST_ERROR() cudaGetLastError()
#endif

namespace momkernels::cuda {

enum class DType : int32_t { Half = 0, BFloat16 = 1, Float = 2, Double = 3 };

constexpr int64_t kSmallMaxC = 128;
constexpr int kSmallK = 4;          // logits per lane on the small-C path
constexpr int kSmallThreads = 256;  // threads per block on the small-C path
constexpr int kFinishThreads = 512;

// Lanes per row on the small-C path: a power of two in [1, 32].
inline int small_group(int64_t C) {
  const int64_t need = (C + kSmallK - 1) / kSmallK;
  int g = 1;
  while (g < need && g < 32) g <<= 1;
  return g;
}

inline int64_t small_rows_per_block(int64_t C) { return kSmallThreads / small_group(C); }

// Threads per row on the large-C path.
inline int large_threads(int64_t C) {
  if (C <= 2048) return 128;
  if (C <= 16384) return 256;
  return 512;
}

// Number of (s_valid, s_o, denom) partial-sum slots the forward writes.
inline int64_t forward_num_partials(int64_t N, int64_t C) {
  if (C <= kSmallMaxC) {
    const int64_t r = small_rows_per_block(C);
    return (N + r - 1) / r;
  }
  return N;
}

// Rows of logits and their targets, as the kernels see them: mom_loss.h's
// RowView and the logits' dtype.
struct Rows : RowView {
  DType dtype;        // of the logits (and of the gradient, and of none_out)
};

struct FwdParams {
  Rows r;
  void* stats;          // (N, 2) contiguous, math dtype: (max, log normaliser)
  void* none_out;       // (N,) logits dtype, c_i * l_i (reduction 'none'), or nullptr
  double none_a, none_b;  // c_i = none_a + none_b [y_i == o_index] for none_out
  double* partials;     // (forward_num_partials, 3) or nullptr (reduction 'none')
  void* coef;           // (2,) math dtype; written by the forward kernel only when
  double coef_a, coef_b;  // partials == nullptr (reduction 'none'), else by finish
};

struct FinishParams {
  const double* partials;  // (num_partials, 3)
  int64_t num_partials;
  double rows;             // the MoM denominator of mom_norm 'rows' (N) / 'fixed'
  double lam;
  Reduction red;
  MoMNorm norm;
  DType dtype;             // of the logits; loss_out has it
  void* loss_out;          // 0-dim, or nullptr (reduction 'none')
  void* coef;              // (2,) math dtype
};

struct BwdParams {
  Rows r;
  const void* grad;     // upstream gradient: logits dtype, or math dtype if grad_is_acc
  int64_t sG;           // its stride (0: one value for every row)
  bool grad_is_acc;
  const void* stats;    // (N, 2) math dtype, strides (sS0, sS1)
  int64_t sS0, sS1;
  const void* coef;     // (2,) math dtype, stride sCoef: (a, b), read on the device
  int64_t sCoef;
  void* grad_in;        // (N, C) contiguous, logits dtype
};

// Each returns the launch error (cudaSuccess when the kernel was queued).
cudaError_t launch_forward(const FwdParams& p, cudaStream_t stream);
cudaError_t launch_finish(const FinishParams& p, cudaStream_t stream);
cudaError_t launch_backward(const BwdParams& p, cudaStream_t stream);

}  // namespace momkernels::cuda
