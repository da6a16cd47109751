// AVX-512 build of the CPU kernels (F, BW, VL, DQ, as ATen's own AVX512 build),
// used only on CPUs that have them; compiled alone with setup.py's ISA_FLAGS.
#if defined(__x86_64__) || defined(_M_X64)
#ifndef __AVX512F__
#error "kernel_avx512.cpp must be compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma"
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "kernel_impl.h"
#endif
