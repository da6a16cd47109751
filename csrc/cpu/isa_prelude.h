// The common start of the per-ISA headers of the CPU kernels (vec_math.h,
// targets.h, row_kernels.h, tile_kernels.h): they are compiled once per
// instruction set, inside kernel_impl.h, with CPU_CAPABILITY naming the ISA
// (DEFAULT, AVX2, AVX512) -- included anywhere else they must not compile.
// Brings in ATen's at::vec, mom_loss.h (the row math shared with CUDA) and
// kernel.h (the row view and argument structs), and makes Vectorized visible
// in this ISA's namespace.
#pragma once

#ifndef CPU_CAPABILITY
#error "include csrc/cpu/kernel_impl.h, which is compiled once per CPU_CAPABILITY"
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "../mom_loss.h"
#include "kernel.h"

namespace momkernels::cpu {
namespace CPU_CAPABILITY {
using at::vec::Vectorized;
}  // namespace CPU_CAPABILITY
}  // namespace momkernels::cpu
