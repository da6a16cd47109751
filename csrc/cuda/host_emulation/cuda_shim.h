// A tiny CPU stand-in for the CUDA execution model, just enough to run
// momkernels' kernels (csrc/cuda/*.cu) unchanged on a machine without a GPU:
// one std::thread per CUDA thread, blocks one after another, __syncthreads as a
// block barrier, warp shuffles through per-warp slots and a warp barrier,
// __shared__ as function-static storage (blocks never overlap).  Slow and only
// for tests of the kernels' indexing, reductions and per-row math; it says
// nothing about speed, memory ordering on a real GPU or compiler differences.
//
// Include after torch's headers and before the kernel files, with
// MOMK_CUDA_EMULATION defined.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>  // types only: dim3, uint4, cudaStream_t, cudaError_t

#include <array>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __host__
#define __host__
#undef __forceinline__
#define __forceinline__ inline
#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)

namespace momk_emu {

inline thread_local dim3 tl_thread, tl_block;
inline dim3 g_block_dim, g_grid_dim;
inline std::barrier<>* g_block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> g_warp_barriers;
inline std::vector<std::array<uint64_t, 32>> g_warp_slots;

inline void run(unsigned grid, int block, const std::function<void()>& body) {
  if (block % 32 != 0) throw std::runtime_error("emulation: block size must be a multiple of 32");
  g_block_dim = dim3(block);
  g_grid_dim = dim3(grid);
  const int nwarps = block / 32;
  for (unsigned b = 0; b < grid; ++b) {
    std::barrier<> bar(block);
    g_block_barrier = &bar;
    g_warp_barriers.clear();
    for (int w = 0; w < nwarps; ++w) g_warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
    g_warp_slots.assign(nwarps, {});
    std::vector<std::thread> threads;
    threads.reserve(block);
    for (int t = 0; t < block; ++t) {
      threads.emplace_back([&, t, b] {
        tl_thread = dim3(t);
        tl_block = dim3(b);
        body();
      });
    }
    for (auto& th : threads) th.join();
  }
}

template <typename P>
struct Launcher {
  unsigned grid;
  int block;
  void (*kernel)(P);
  void operator()(const P& p) const {
    run(grid, block, [&] { kernel(p); });
  }
};

template <typename P>
Launcher<P> launcher(unsigned grid, int block, void (*kernel)(P)) {
  return Launcher<P>{grid, block, kernel};
}

}  // namespace momk_emu

#define threadIdx (::momk_emu::tl_thread)
#define blockIdx (::momk_emu::tl_block)
#define blockDim (::momk_emu::g_block_dim)
#define gridDim (::momk_emu::g_grid_dim)

#define MOMK_LAUNCH(grid, block, stream, ...) ::momk_emu::launcher((grid), (block), __VA_ARGS__)
#define MOMK_LAST_ERROR() cudaSuccess

inline void __syncthreads() { momk_emu::g_block_barrier->arrive_and_wait(); }

// All 32 lanes of the warp must call it (the kernels only use full masks).
template <typename T>
inline T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask, int /*width*/ = 32) {
  static_assert(sizeof(T) <= 8, "emulated shuffle of at most 8 bytes");
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
  auto& slots = momk_emu::g_warp_slots[warp];
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  slots[lane] = bits;
  momk_emu::g_warp_barriers[warp]->arrive_and_wait();
  const uint64_t src = slots[lane ^ lane_mask];
  momk_emu::g_warp_barriers[warp]->arrive_and_wait();
  T out;
  std::memcpy(&out, &src, sizeof(T));
  return out;
}

// A 16-byte access must be 16-byte aligned on the GPU; x86 would not notice.
inline void momk_check_aligned16(const void* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    std::fprintf(stderr, "emulation: misaligned 16-byte access at %p\n", p);
    std::abort();
  }
}

inline uint4 __ldg(const uint4* p) {
  momk_check_aligned16(p);
  return *p;
}

inline float __int_as_float(int v) {
  float f;
  std::memcpy(&f, &v, 4);
  return f;
}
inline double __longlong_as_double(long long v) {
  double d;
  std::memcpy(&d, &v, 8);
  return d;
}
