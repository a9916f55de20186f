// Helpers shared by the CUDA kernels.
//
// Only c10/cuda and ATen core headers are used (no ATen/cuda/CUDAContext.h, which pulls in the
// cuBLAS/cuSPARSE headers that a bare CUDA toolkit may lack).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

namespace ferfast::cuda {

#define FERFAST_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// fp64 inputs compute in fp64 (so gradcheck is meaningful); everything else in fp32.
template <typename... Ts>
using acc_type_t = std::conditional_t<(std::is_same_v<Ts, double> || ...), double, float>;

constexpr int kWarpSize = 32;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int round_up_warp(int64_t n) {
  return static_cast<int>(std::max<int64_t>(kWarpSize, ceil_div(n, kWarpSize) * kWarpSize));
}

// Number of SMs of a device, cached per device index.
inline int sm_count(c10::DeviceIndex device) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  const int idx = static_cast<int>(device);
  if (idx >= 0 && idx < kMaxDevices) {
    const int cached = cache[idx].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, idx));
  n = std::max(n, 1);
  if (idx >= 0 && idx < kMaxDevices) cache[idx].store(n, std::memory_order_relaxed);
  return n;
}

// Resident blocks of `kernel` per SM at the given block size and dynamic shared memory (>= 1).
template <typename Kernel>
int blocks_per_sm(Kernel kernel, int threads, size_t dynamic_smem = 0) {
  int n = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, dynamic_smem));
  return std::max(n, 1);
}

// ---- device helpers ------------------------------------------------------------------------

// Sum over a warp with an xor butterfly: every lane ends with the same, bitwise identical value
// (each step adds the same two operands on both partner lanes, and addition is commutative).
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over a 1-D block (blockDim.x a multiple of 32, at most 1024); every thread gets the same
// value, computed in a fixed order (deterministic). `red` is a shared array of >= 32 elements; it
// may be reused only after another __syncthreads() that all threads reach after this call.
template <typename T>
__device__ __forceinline__ T block_sum_all(T v, T* red) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  v = warp_sum(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  return warp_sum(lane < num_warps ? red[lane] : T(0));
}

// Native atomicAdd for float and double (fp64 atomicAdd needs sm_60+); the result is unused, so
// the compiler emits a fire-and-forget RED.
__device__ __forceinline__ void atomic_add(float* address, float v) { atomicAdd(address, v); }
__device__ __forceinline__ void atomic_add(double* address, double v) { atomicAdd(address, v); }

template <typename T>
__device__ __forceinline__ T device_sqrt(T v) {
  if constexpr (std::is_same_v<T, double>) {
    return ::sqrt(v);
  } else {
    return ::sqrtf(v);
  }
}

// Location of element e (nhwpqc order: e = (i*p + j)*C + c) of a patch, relative to the patch's
// top-left pixel of channel 0 in an NCHW image: c*H*W + i*W + j. index_t is int32_t when
// C*H*W fits (the kernels' offset tables), else int64_t.
template <typename index_t = int64_t>
__device__ __forceinline__ index_t patch_elem_offset(int e, int C, int p, int64_t HW, int64_t W) {
  const int pix = e / C;
  const int c = e - pix * C;
  const int i = pix / p;
  const int j = pix - i * p;
  return static_cast<index_t>(c * HW + i * W + j);
}

// fp32/fp64 arithmetic with explicit rounding: never contracted into an FMA, so results round step by
// step like the eager reference's separate torch ops.
template <typename T>
__device__ __forceinline__ T mul_rn(T a, T b) {
  if constexpr (std::is_same_v<T, double>) {
    return __dmul_rn(a, b);
  } else {
    return __fmul_rn(a, b);
  }
}

template <typename T>
__device__ __forceinline__ T add_rn(T a, T b) {
  if constexpr (std::is_same_v<T, double>) {
    return __dadd_rn(a, b);
  } else {
    return __fadd_rn(a, b);
  }
}

template <typename T>
__device__ __forceinline__ T sub_rn(T a, T b) {
  if constexpr (std::is_same_v<T, double>) {
    return __dsub_rn(a, b);
  } else {
    return __fsub_rn(a, b);
  }
}

template <typename T>
__device__ __forceinline__ T device_exp(T v) {
  if constexpr (std::is_same_v<T, double>) {
    return ::exp(v);
  } else {
    return ::expf(v);
  }
}

template <typename T>
__device__ __forceinline__ T device_log(T v) {
  if constexpr (std::is_same_v<T, double>) {
    return ::log(v);
  } else {
    return ::logf(v);
  }
}

// max that propagates NaN (torch.maximum and torch's max reductions); symmetric, so a butterfly
// gives every lane the same value.
template <typename T>
__device__ __forceinline__ T max_nan(T a, T b) {
  return (a != a || a > b) ? a : b;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

}  // namespace ferfast::cuda
