// AVX2 + FMA build of the CPU kernels, used only on CPUs that have them
// (ops_cpu.cpp asks at::get_cpu_capability(), which honours ATEN_CPU_CAPABILITY).
// The build compiles this file alone with -mavx2 -mfma -mf16c (setup.py's
// ISA_FLAGS, CMakeLists.txt), as ATen compiles its own AVX2 kernels.
#if defined(__x86_64__) || defined(_M_X64)
#ifndef __AVX2__
#error "kernel_avx2.cpp must be compiled with -mavx2 -mfma -mf16c"
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "kernel_impl.h"
#endif
