// Interface between the CPU operator (ops_cpu.cpp: checks, allocation,
// at::parallel_for, the final reduction) and the vectorised kernels, which are
// compiled once per instruction set (kernel_default.cpp, kernel_avx2.cpp,
// kernel_avx512.cpp) from kernel_impl.h and picked at run time.  Its
// constants (kTileMaxC above all) are also what grad_plan.h decides with.
//
// The rows are split into blocks whose size depends on C only, never on the
// thread count; each block writes its partial sums to its own slot and the
// operator adds the slots in order.  Results are therefore bitwise identical
// for any number of threads.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "../mom_loss.h"

namespace momkernels::cpu {

// C at or below this goes to the tile path (rows in vector lanes, classes
// transposed into a stack buffer); above it, each row is streamed in chunks
// with an online softmax.
constexpr int64_t kTileMaxC = 64;
// Rows per block on the tile path: a multiple of every vector width.
constexpr int64_t kTileRows = 256;
// Elements of one row chunk held in a stack buffer on the row path.
constexpr int64_t kChunkElems = 2048;
// Rows per block on the row path: about 32K elements of work per block.
constexpr int64_t kRowBlockElems = 32768;

inline int64_t block_rows_for(int64_t C) {
  if (C <= kTileMaxC) return kTileRows;
  const int64_t r = kRowBlockElems / C;
  return r > 0 ? r : 1;
}

// The rows of a call (mom_loss.h's RowView) and what the CPU kernels add.
struct Common : RowView {
  c10::ScalarType dtype;  // of the logits (and of the gradient)
  double W;               // sum of the class weights (C when there are none)
  const void* stats;      // (N, 2) math dtype: (max, log normaliser) per row
  int64_t block_rows;
};

// Number of rows with a valid target (mom_loss.h's target_valid): the
// unweighted mean's denominator, known before the kernel runs.  A branch-free
// loop over the targets (its cost at the NER shape: docs/bench/README.md,
// "Measurements quoted by the code").
template <typename tgt_t>
int64_t count_valid_span(const tgt_t* t, int64_t n, int64_t sT, int64_t C, int64_t ignore) {
  int64_t k = 0;
  for (int64_t i = 0; i < n; ++i) k += int64_t(target_valid(int64_t(t[i * sT]), C, ignore));
  return k;
}

inline int64_t count_valid_rows(const Common& c) {
  return c.t_int32
             ? count_valid_span(static_cast<const int32_t*>(c.t), c.N, c.sT, c.C, c.ignore_index)
             : count_valid_span(static_cast<const int64_t*>(c.t), c.N, c.sT, c.C, c.ignore_index);
}

struct FwdArgs {
  Common c;
  void* stats_out;   // (N, 2) math dtype, written
  void* none_out;    // (N,) logits dtype, per-row c_i * l_i, or nullptr
  double none_a, none_b;  // coefficients for none_out
  double* partials;  // (num_blocks, 3): sum_valid l, sum_O l, sum_valid w_y
  int64_t* bad_row;  // (num_blocks,): first row with an out-of-range target, or -1
  // Fused gradient (tile path; nullptr otherwise; half-precision logits only
  // when the global factor is folded into rel_a / rel_b, so that it is
  // rounded once): (N, C) contiguous in the logits dtype, d l_i / d x_i scaled by
  // the row's relative coefficient rel_a + rel_b [y_i == o_index]; the backward
  // then only multiplies by the upstream gradient and one global factor.
  void* gfused;
  double rel_a, rel_b;
};

struct BwdArgs {
  Common c;
  const void* grad;  // upstream gradient in the math dtype: 1 value or (N,)
  bool grad_per_row;
  double a, b;       // row coefficient c_i = a + b [y_i == o_index]
  void* grad_in;     // (N, C) contiguous, logits dtype, written
};

struct KernelTable {
  const char* isa;
  void (*forward)(const FwdArgs&, int64_t block_begin, int64_t block_end);
  void (*backward)(const BwdArgs&, int64_t block_begin, int64_t block_end);
  // in place g[0:n] *= s, float or double g (the fused backward)
  void (*scale)(void* g, c10::ScalarType dtype, int64_t n, double s);
};

// The kernels for this CPU (at::get_cpu_capability(), so ATEN_CPU_CAPABILITY
// also selects ours) and their name.
const KernelTable& kernels_for_this_cpu();
const char* isa_name();

namespace DEFAULT { KernelTable kernels(); }
namespace AVX2 { KernelTable kernels(); }
namespace AVX512 { KernelTable kernels(); }

}  // namespace momkernels::cpu
