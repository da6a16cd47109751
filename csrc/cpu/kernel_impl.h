// Vectorised CPU kernels of the MoM loss, written once with ATen's at::vec and
// compiled once per instruction set: include this after defining
// CPU_CAPABILITY (DEFAULT, AVX2, AVX512) and the matching CPU_CAPABILITY_<ISA>
// macro, as kernel_<isa>.cpp do.  The math and the row bookkeeping are
// mom_loss.h's; the headers below hold only layout and ISA code:
//   vec_math.h     exp / log1p variants, lane predicates, span reductions,
//                  VecMath (mom_loss.h's row_loss on a vector of rows)
//   targets.h      the target rule of mom_loss.h over lanes and blocks
//   row_kernels.h  C > kTileMaxC: rows streamed in chunks, online softmax
//   tile_kernels.h C <= kTileMaxC: rows in vector lanes, the fused gradient
// This file: the dtype dispatch and the KernelTable of this ISA.
// Math is in float (double for double logits); accumulators for the reduced
// sums are double.
#pragma once

#include <c10/core/ScalarType.h>

#include "kernel.h"
#include "row_kernels.h"
#include "tile_kernels.h"
#include "vec_math.h"

namespace momkernels::cpu {
namespace CPU_CAPABILITY {

// ---------------------------------------------------------------- dispatch

template <typename F>
inline void by_dtype(c10::ScalarType t, F&& f) {
  switch (t) {
    case c10::ScalarType::Float: f(float{}); break;
    case c10::ScalarType::Double: f(double{}); break;
    case c10::ScalarType::Half: f(c10::Half{}); break;
    case c10::ScalarType::BFloat16: f(c10::BFloat16{}); break;
    default: break;  // rejected by the operator before any kernel runs
  }
}

inline void forward(const FwdArgs& a, int64_t b0, int64_t b1) {
  by_dtype(a.c.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    for (int64_t b = b0; b < b1; ++b) {
      if (a.c.C <= kTileMaxC) forward_tile<scalar_t>(a, b); else forward_rows<scalar_t>(a, b);
    }
  });
}

inline void backward(const BwdArgs& a, int64_t b0, int64_t b1) {
  by_dtype(a.c.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    for (int64_t b = b0; b < b1; ++b) {
      if (a.c.C <= kTileMaxC) backward_tile<scalar_t>(a, b); else backward_rows<scalar_t>(a, b);
    }
  });
}

#define MOMK_STR2(s) #s
#define MOMK_STR(s) MOMK_STR2(s)

inline void scale(void* g, c10::ScalarType t, int64_t n, double s) {
  if (t == c10::ScalarType::Double) scale_span<double>(static_cast<double*>(g), n, s);
  else scale_span<float>(static_cast<float*>(g), n, float(s));
}

KernelTable kernels() {
  return KernelTable{MOMK_STR(CPU_CAPABILITY), &forward, &backward, &scale};
}

}  // namespace CPU_CAPABILITY
}  // namespace momkernels::cpu
