// random_masking on CUDA: one block per row ranks every patch by its (order key, index) pair,
//   rank[i] = #{j : (key_j, j) < (key_i, i)},
// which is the position of i in a stable ascending argsort (identical to the CPU kernel, which
// sorts the same unique pairs). Keys are compared tile by tile from shared memory (4096 keys a
// tile, so any L works); partial counts accumulate in ids_restore. O(L^2) per row: fine for MAE's
// L = 196..1024 (and a few thousand).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>

#include "ops/cuda/cuda_helpers.cuh"
#include "ops/random_masking.h"

namespace ferfast {
namespace {

using namespace ferfast::cuda;

constexpr int kMaxThreads = 256;
constexpr int kTileKeys = 4096;  // 32 KiB of uint64 keys, 16 KiB of uint32 keys

// The device twins of float_order_key / double_order_key (ops/common.h). The host versions add
// +0.0 to map -0.0 to +0.0; on x86 that addition also quiets a signalling NaN (payload and sign
// kept), which is emulated here because a GPU add would return the canonical NaN instead.
__device__ __forceinline__ uint32_t device_order_key(float v) {
  uint32_t u = __float_as_uint(v);
  if (v == 0.0f) {
    u = 0u;
  } else if (v != v) {
    u |= 0x00400000u;
  }
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ uint64_t device_order_key(double v) {
  uint64_t u = static_cast<uint64_t>(__double_as_longlong(v));
  if (v == 0.0) {
    u = 0ull;
  } else if (v != v) {
    u |= 0x0008000000000000ull;
  }
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

template <typename scalar_t>
__device__ __forceinline__ auto order_key(scalar_t v) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return device_order_key(v);
  } else {
    return device_order_key(static_cast<float>(v));  // fp16/bf16 -> float is exact
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kMaxThreads)
    random_masking_kernel(const scalar_t* __restrict__ noise, int L, int K, int tile, int64_t* __restrict__ ids_keep,
                          scalar_t* __restrict__ mask, int64_t* __restrict__ ids_restore) {
  using key_t = decltype(order_key(scalar_t(0)));
  extern __shared__ __align__(16) unsigned char smem_raw[];
  key_t* keys = reinterpret_cast<key_t*>(smem_raw);

  const int64_t b = blockIdx.x;
  const scalar_t* row = noise + b * L;
  int64_t* restore = ids_restore + b * L;

  for (int t0 = 0; t0 < L; t0 += tile) {
    const int n = min(tile, L - t0);
    __syncthreads();  // the previous tile has been consumed
    for (int j = threadIdx.x; j < n; j += blockDim.x) keys[j] = order_key(row[t0 + j]);
    __syncthreads();
    for (int i = threadIdx.x; i < L; i += blockDim.x) {
      const key_t ki = order_key(row[i]);
      const int rel = i - t0;  // keys[j] precedes ki on ties iff j < rel
      int count = 0;
#pragma unroll 4
      for (int j = 0; j < n; ++j) {
        const key_t kj = keys[j];
        count += (kj < ki) | ((kj == ki) & (j < rel));
      }
      restore[i] = (t0 == 0 ? 0 : restore[i]) + count;  // only this thread touches restore[i]
    }
  }

  scalar_t* mask_row = mask + b * L;
  int64_t* keep = ids_keep + b * K;
  for (int i = threadIdx.x; i < L; i += blockDim.x) {
    const int64_t r = restore[i];
    mask_row[i] = static_cast<scalar_t>(r < K ? 0.0f : 1.0f);
    if (r < K) keep[r] = i;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> random_masking_cuda(const at::Tensor& noise_in, double mask_ratio) {
  const int64_t K = check_random_masking(noise_in, mask_ratio);
  c10::cuda::CUDAGuard guard(noise_in.device());
  const at::Tensor noise = noise_in.contiguous();
  const int64_t B = noise.size(0), L = noise.size(1);
  at::Tensor ids_keep = at::empty({B, K}, noise.options().dtype(at::kLong));
  at::Tensor mask = at::empty({B, L}, noise.options());
  at::Tensor ids_restore = at::empty({B, L}, noise.options().dtype(at::kLong));
  if (B == 0 || L == 0) return {ids_keep, mask, ids_restore};
  TORCH_CHECK(B <= std::numeric_limits<int32_t>::max(), "random_masking: too many rows (", B, ")");

  const int threads = std::min(kMaxThreads, round_up_warp(L));
  const int tile = static_cast<int>(std::min<int64_t>(L, kTileKeys));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FERFAST_DISPATCH_FLOATING(noise.scalar_type(), "random_masking_cuda", [&] {
    const size_t key_bytes = std::is_same_v<scalar_t, double> ? sizeof(uint64_t) : sizeof(uint32_t);
    random_masking_kernel<scalar_t><<<static_cast<unsigned int>(B), threads, tile * key_bytes, stream>>>(
        noise.const_data_ptr<scalar_t>(), static_cast<int>(L), static_cast<int>(K), tile,
        ids_keep.mutable_data_ptr<int64_t>(), mask.mutable_data_ptr<scalar_t>(),
        ids_restore.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {ids_keep, mask, ids_restore};
}

}  // namespace

TORCH_LIBRARY_IMPL(ferfast, CUDA, m) { m.impl("random_masking", &random_masking_cuda); }

}  // namespace ferfast
