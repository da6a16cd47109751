// Portable build of the CPU kernels (at::vec's generic Vectorized).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#include "kernel_impl.h"
