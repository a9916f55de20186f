// unshuffle_tokens on CUDA.
//
// Forward: one row copy per output token (a byte copy, so no dtype dispatch), in the widest unit
// (16/8/4/2 bytes) that the row size and the pointers allow. Blocks are 2-D: threadIdx.x walks a
// row, threadIdx.y picks one of several rows, and blocks stride over all rows.
//
// Backward (deterministic, no float atomics):
//  1. inverse map: inv[b, j] = the l with ids_restore[b, l] == j < K, -1 if none, -2 if several
//     (an atomicCAS/atomicExch on int32 that only ever moves -1 -> l -> -2).
//  2. grad_x rows: prefix rows are copied; row j gets grad row l = inv[b, j] (a copy), zeros for
//     -1, or, for -2, the sum over all matching l in increasing l (like the CPU kernel).
//  3. grad_mask_token: per (image, segment of kSegRows token rows) partial sums over rows with
//     ids_restore >= K, one thread per channel; then a fixed-order reduction over the partials.
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <initializer_list>
#include <limits>

#include "ops/cuda/cuda_helpers.cuh"
#include "ops/unshuffle_tokens.h"

namespace ferfast {
namespace {

using namespace ferfast::cuda;

constexpr int kRowThreads = 256;  // threads per block of the row kernels
constexpr int kSegRows = 32;      // token rows per mask-token partial sum
constexpr int kTokenThreads = 128;

// Copy units: plain-old-data types of 2, 4, 8 and 16 bytes.
struct alignas(2) Unit2 {
  uint16_t v;
};
struct alignas(4) Unit4 {
  uint32_t v;
};
struct alignas(8) Unit8 {
  uint2 v;
};
struct alignas(16) Unit16 {
  uint4 v;
};

template <typename unit_t>
__device__ __forceinline__ unit_t zero_unit() {
  if constexpr (std::is_same_v<unit_t, Unit16>) {
    return Unit16{make_uint4(0u, 0u, 0u, 0u)};
  } else {
    return static_cast<unit_t>(0.0f);  // unit_t is the scalar type itself
  }
}

// Largest copy unit (bytes) that divides the row size and aligns every pointer.
int copy_unit_bytes(int64_t row_bytes, std::initializer_list<const void*> ptrs) {
  for (int unit : {16, 8, 4, 2}) {
    bool ok = row_bytes % unit == 0;
    for (const void* p : ptrs) ok = ok && reinterpret_cast<uintptr_t>(p) % unit == 0;
    if (ok) return unit;
  }
  return 1;  // unreachable for floating dtypes (>= 2 bytes)
}

struct RowLaunch {
  dim3 block;
  unsigned int blocks;
};

// threadIdx.x covers a row of `units` units (up to kRowThreads threads), threadIdx.y the rows.
RowLaunch plan_row_launch(int64_t units, int64_t rows, c10::DeviceIndex device) {
  const int tx = std::min(kRowThreads, round_up_warp(units));
  const int ty = std::max(1, kRowThreads / tx);
  const int64_t max_blocks = static_cast<int64_t>(sm_count(device)) * (2048 / kRowThreads) * 4;
  const int64_t blocks = std::max<int64_t>(1, std::min(ceil_div(rows, ty), max_blocks));
  return {dim3(tx, ty), static_cast<unsigned int>(blocks)};
}

template <typename unit_t>
__global__ void __launch_bounds__(kRowThreads)
    unshuffle_tokens_kernel(const unit_t* __restrict__ x, const unit_t* __restrict__ token,
                            const int64_t* __restrict__ ids, unit_t* __restrict__ out, int64_t units, int64_t rows_out,
                            int64_t N, int64_t L, int64_t prefix, int64_t K, int64_t total_rows) {
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; r < total_rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t b = r / rows_out, t = r - b * rows_out;
    const unit_t* src;
    if (t < prefix) {
      src = x + (b * N + t) * units;
    } else {
      const int64_t j = ids[b * L + (t - prefix)];
      CUDA_KERNEL_ASSERT(j >= 0 && j < L);
      src = (j >= 0 && j < K) ? x + (b * N + prefix + j) * units : token;
    }
    unit_t* dst = out + r * units;
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) dst[u] = src[u];
  }
}

// Step 1 of the backward: inv[b, j] for j < K (int32, pre-filled with -1).
__global__ void inverse_map_kernel(const int64_t* __restrict__ ids, int* __restrict__ inv, int64_t B, int64_t L,
                                   int64_t K) {
  const int64_t n = B * L;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = ids[idx];
    CUDA_KERNEL_ASSERT(j >= 0 && j < L);
    if (j >= 0 && j < K) {
      const int64_t b = idx / L;
      const int l = static_cast<int>(idx - b * L);
      int* slot = inv + b * K + j;
      if (atomicCAS(slot, -1, l) != -1) atomicExch(slot, -2);
    }
  }
}

// Step 2: grad_x [B, prefix+K, D]. unit_t is a 16-byte unit when aligned, else scalar_t itself.
template <typename scalar_t, typename unit_t>
__global__ void __launch_bounds__(kRowThreads)
    unshuffle_grad_x_kernel(const scalar_t* __restrict__ grad, const int64_t* __restrict__ ids,
                            const int* __restrict__ inv, scalar_t* __restrict__ grad_x, int64_t D, int64_t L,
                            int64_t prefix, int64_t K, int64_t total_rows) {
  using acc_t = acc_type_t<scalar_t>;
  constexpr int64_t kPer = sizeof(unit_t) / sizeof(scalar_t);
  const int64_t units = D / kPer;
  const int64_t rows_in = prefix + L, rows_out = prefix + K;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; r < total_rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t b = r / rows_out, t = r - b * rows_out;
    scalar_t* dst = grad_x + r * D;
    int64_t l = t;  // prefix rows copy straight through
    if (t >= prefix) {
      const int v = inv[b * K + (t - prefix)];
      if (v == -1) {  // no token maps here
        unit_t* d = reinterpret_cast<unit_t*>(dst);
        for (int64_t u = threadIdx.x; u < units; u += blockDim.x) d[u] = zero_unit<unit_t>();
        continue;
      }
      if (v == -2) {  // several tokens map here: add them in increasing l, as on the CPU
        const int64_t j = t - prefix;
        const int64_t* ids_b = ids + b * L;
        const scalar_t* grad_b = grad + (b * rows_in + prefix) * D;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
          scalar_t s = static_cast<scalar_t>(0.0f);
          for (int64_t ll = 0; ll < L; ++ll) {
            if (ids_b[ll] == j)
              s = static_cast<scalar_t>(static_cast<acc_t>(s) + static_cast<acc_t>(grad_b[ll * D + d]));
          }
          dst[d] = s;
        }
        continue;
      }
      l = prefix + v;
    }
    const unit_t* src = reinterpret_cast<const unit_t*>(grad + (b * rows_in + l) * D);
    unit_t* d = reinterpret_cast<unit_t*>(dst);
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) d[u] = src[u];
  }
}

// Step 3a: partial[(b*S + s), d] = sum over l in segment s with ids[b, l] >= K of grad[b, prefix+l, d].
// Grid: x = b*S + s, y = channel block.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTokenThreads)
    mask_token_partial_kernel(const scalar_t* __restrict__ grad, const int64_t* __restrict__ ids,
                              acc_t* __restrict__ partial, int64_t D, int64_t L, int64_t prefix, int64_t K,
                              int64_t S) {
  const int64_t bs = blockIdx.x;
  const int64_t b = bs / S, s = bs - b * S;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  const int64_t l0 = s * kSegRows, l1 = min(l0 + kSegRows, L);
  const int64_t* ids_b = ids + b * L;
  const scalar_t* g = grad + (b * (prefix + L) + prefix) * D + d;
  acc_t acc = 0;
  int64_t l = l0;
  for (; l + 4 <= l1; l += 4) {  // four independent loads in flight, added in order
    acc_t v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u)
      v[u] = ids_b[l + u] >= K ? static_cast<acc_t>(g[(l + u) * D]) : acc_t(0);
#pragma unroll
    for (int u = 0; u < 4; ++u) acc += v[u];
  }
  for (; l < l1; ++l)
    if (ids_b[l] >= K) acc += static_cast<acc_t>(g[l * D]);
  partial[bs * D + d] = acc;
}

// Step 3b: out[d] = sum over the n partial rows, in a fixed order. Block (32, 32): threadIdx.x
// picks the channel, threadIdx.y strides over partial rows; then a fixed-order sum over y.
template <typename acc_t>
__global__ void __launch_bounds__(1024)
    mask_token_reduce_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ out, int64_t n, int64_t D) {
  __shared__ acc_t sums[32][33];
  const int64_t d = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  acc_t acc = 0;
  if (d < D) {
#pragma unroll 4
    for (int64_t i = threadIdx.y; i < n; i += 32) acc += partial[i * D + d];
  }
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && d < D) {
    acc_t total = 0;
#pragma unroll 8
    for (int y = 0; y < 32; ++y) total += sums[y][threadIdx.x];
    out[d] = total;
  }
}

at::Tensor unshuffle_tokens_cuda(const at::Tensor& x_in, const at::Tensor& mask_token_in, const at::Tensor& ids_in,
                                 int64_t num_prefix) {
  check_unshuffle_tokens(x_in, mask_token_in, ids_in, num_prefix);
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor token = mask_token_in.reshape({-1}).to(x.scalar_type()).contiguous();
  const at::Tensor ids = ids_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2), L = ids.size(1), K = N - num_prefix;
  const int64_t rows_out = num_prefix + L;
  at::Tensor out = at::empty({B, rows_out, D}, x.options());
  const int64_t total_rows = B * rows_out;
  if (total_rows == 0 || D == 0) return out;

  const int64_t row_bytes = D * static_cast<int64_t>(x.element_size());
  const int unit = copy_unit_bytes(row_bytes, {x.const_data_ptr(), token.const_data_ptr(), out.const_data_ptr()});
  const int64_t units = row_bytes / unit;
  const RowLaunch launch = plan_row_launch(units, total_rows, x.get_device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto run = [&](auto unit_tag) {
    using unit_t = decltype(unit_tag);
    unshuffle_tokens_kernel<unit_t><<<launch.blocks, launch.block, 0, stream>>>(
        static_cast<const unit_t*>(x.const_data_ptr()), static_cast<const unit_t*>(token.const_data_ptr()),
        ids.const_data_ptr<int64_t>(), static_cast<unit_t*>(out.mutable_data_ptr()), units, rows_out, N, L,
        num_prefix, K, total_rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  switch (unit) {
    case 16:
      run(Unit16{});
      break;
    case 8:
      run(Unit8{});
      break;
    case 4:
      run(Unit4{});
      break;
    default:
      TORCH_CHECK(unit == 2, "unshuffle_tokens: unexpected copy unit ", unit);
      run(Unit2{});
      break;
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> unshuffle_tokens_backward_cuda(const at::Tensor& grad_in, const at::Tensor& ids_in,
                                                                  int64_t num_prefix, int64_t K) {
  check_unshuffle_tokens_backward(grad_in, ids_in, num_prefix, K);
  c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor ids = ids_in.contiguous();
  const int64_t B = grad.size(0), D = grad.size(2), L = ids.size(1), rows_out = num_prefix + K;
  TORCH_CHECK(L <= std::numeric_limits<int32_t>::max(), "unshuffle_tokens: too many patches per row");
  at::Tensor grad_x = at::empty({B, rows_out, D}, grad.options());
  const at::ScalarType token_dtype = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_token = at::zeros({D}, grad.options().dtype(token_dtype));
  if (B == 0) return {grad_x, grad_token};
  const c10::DeviceIndex device = grad.get_device();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  // 1. inverse map (also range-checks every index).
  at::Tensor inv = at::full({B, K}, -1, grad.options().dtype(at::kInt));
  if (L > 0) {
    const int threads = 256;
    const int64_t blocks = std::min(ceil_div(B * L, threads), static_cast<int64_t>(sm_count(device)) * 8);
    inverse_map_kernel<<<static_cast<unsigned int>(blocks), threads, 0, stream>>>(
        ids.const_data_ptr<int64_t>(), inv.mutable_data_ptr<int>(), B, L, K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (D == 0) return {grad_x, grad_token};

  FERFAST_DISPATCH_FLOATING(grad.scalar_type(), "unshuffle_tokens_backward_cuda", [&] {
    using acc_t = acc_type_t<scalar_t>;
    // 2. grad_x rows.
    const int64_t total_rows = B * rows_out;
    if (total_rows > 0) {
      const int64_t row_bytes = D * static_cast<int64_t>(sizeof(scalar_t));
      const bool vec = copy_unit_bytes(row_bytes, {grad.const_data_ptr(), grad_x.const_data_ptr()}) == 16;
      auto run = [&](auto unit_tag) {
        using unit_t = decltype(unit_tag);
        const int64_t units = row_bytes / static_cast<int64_t>(sizeof(unit_t));
        const RowLaunch launch = plan_row_launch(units, total_rows, device);
        unshuffle_grad_x_kernel<scalar_t, unit_t><<<launch.blocks, launch.block, 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), ids.const_data_ptr<int64_t>(), inv.const_data_ptr<int>(),
            grad_x.mutable_data_ptr<scalar_t>(), D, L, num_prefix, K, total_rows);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if (vec) {
        run(Unit16{});
      } else {
        run(scalar_t{});
      }
    }
    // 3. grad_mask_token.
    const int64_t S = ceil_div(L, kSegRows);
    if (S > 0) {
      at::Tensor partial = at::empty({B * S, D}, grad.options().dtype(token_dtype));
      const int64_t d_blocks = ceil_div(D, kTokenThreads);
      TORCH_CHECK(d_blocks <= 65535, "unshuffle_tokens: D too large");
      mask_token_partial_kernel<scalar_t, acc_t>
          <<<dim3(static_cast<unsigned int>(B * S), static_cast<unsigned int>(d_blocks)), kTokenThreads, 0, stream>>>(
              grad.const_data_ptr<scalar_t>(), ids.const_data_ptr<int64_t>(), partial.mutable_data_ptr<acc_t>(), D,
              L, num_prefix, K, S);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      mask_token_reduce_kernel<acc_t><<<static_cast<unsigned int>(ceil_div(D, 32)), dim3(32, 32), 0, stream>>>(
          partial.const_data_ptr<acc_t>(), grad_token.mutable_data_ptr<acc_t>(), B * S, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_x, grad_token};
}

}  // namespace

TORCH_LIBRARY_IMPL(ferfast, CUDA, m) {
  m.impl("unshuffle_tokens", &unshuffle_tokens_cuda);
  m.impl("_unshuffle_tokens_backward", &unshuffle_tokens_backward_cuda);
}

}  // namespace ferfast
