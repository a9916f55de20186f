// face_mixup and face_mixup_out on CUDA: mixed[i] = lam[i] * x[i] + (1 - lam[i]) * x[perm[i]].
//
// Bandwidth-bound: the grid walks (row, chunk) work items, a chunk being blockDim.x * kUnroll
// copy units of one row. A unit is 16 bytes (float4 / 8 halves / 2 doubles) when the row length
// divides into whole units and every base pointer is 16-byte aligned, else 8 bytes under the same
// conditions, else one element (any row length, any alignment). Every thread first issues all
// its loads of x[i] and x[perm[i]] (2 * kUnroll units in flight), then mixes and stores; perm[i]
// and lam[i] are read once per work item (a broadcast load). Short rows put several rows in one
// block (threadIdx.y), so a block never idles on a row of a few hundred elements. With the
// originals ([2B, ...] output), the same x[i] units that feed the mix are also stored to out[i]:
// x is read twice in all (x[i] and x[perm[i]]), never three times.
//
// The mix is computed in float32 (float64 for float64 x) with explicitly rounded products
// (__fmul_rn: never contracted into an FMA), i.e. exactly like the reference's separate torch ops
// (x * lam + x[perm] * (1 - lam)), then rounded once to x's dtype.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <initializer_list>
#include <vector>

#include "ops/cuda/cuda_helpers.cuh"
#include "ops/face_mixup.h"

namespace ferfast {
namespace {

using namespace ferfast::cuda;

constexpr int kThreads = 256;
constexpr int kUnroll = 4;          // copy units per thread per work item
constexpr int kMinBlocks = 4;       // resident blocks per SM (caps registers at 64)
constexpr int64_t kBlocksPerSm = 32;  // grid cap (grid-stride beyond it)

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Element <-> accumulation-dtype conversions. bfloat16 goes through its bits (a shift up; RNE
// __float2bfloat16_rn down), which keeps the whole 16-byte unit in registers: c10's operator float
// reinterprets the element's address, which made ptxas spill the unrolled bf16 loop.
template <typename scalar_t>
__device__ __forceinline__ acc_type_t<scalar_t> to_acc(scalar_t v) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    return __uint_as_float(static_cast<uint32_t>(v.x) << 16);
  } else {
    return static_cast<acc_type_t<scalar_t>>(v);
  }
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t from_acc(acc_type_t<scalar_t> v) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    return c10::BFloat16(__bfloat16_as_ushort(__float2bfloat16_rn(v)), c10::BFloat16::from_bits());
  } else {
    return static_cast<scalar_t>(v);
  }
}

// x, mixed: [B, row_units] units of N elements; originals: nullptr, or [B, row_units] (x copied).
// lam: B values (lam_stride 1) or one (lam_stride 0), in acc_t.
template <typename scalar_t, int N>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    face_mixup_kernel(const scalar_t* __restrict__ x, const acc_type_t<scalar_t>* __restrict__ lam,
                      int64_t lam_stride, const int64_t* __restrict__ perm, scalar_t* __restrict__ mixed,
                      scalar_t* __restrict__ originals, int64_t B, int64_t row_units, int64_t chunks_per_row) {
  using acc_t = acc_type_t<scalar_t>;
  using vec_t = Vec<scalar_t, N>;
  const vec_t* __restrict__ xv = reinterpret_cast<const vec_t*>(x);
  vec_t* __restrict__ mv = reinterpret_cast<vec_t*>(mixed);
  vec_t* __restrict__ ov = reinterpret_cast<vec_t*>(originals);
  const int64_t chunk_units = static_cast<int64_t>(blockDim.x) * kUnroll;
  const int64_t total = B * chunks_per_row;
  for (int64_t work = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; work < total;
       work += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t row = work / chunks_per_row;
    const int64_t chunk = work - row * chunks_per_row;
    int64_t p = perm[row];
    CUDA_KERNEL_ASSERT(p >= 0 && p < B);
    if (p < 0 || p >= B) p = row;  // unreachable after the assert; keeps the reads in bounds
    const acc_t l = lam[row * lam_stride];
    const acc_t lc = acc_t(1) - l;
    const int64_t base = row * row_units, pbase = p * row_units;
    const int64_t u0 = chunk * chunk_units + threadIdx.x;

    vec_t a[kUnroll], b[kUnroll];
#pragma unroll
    for (int s = 0; s < kUnroll; ++s) {
      const int64_t u = u0 + static_cast<int64_t>(s) * blockDim.x;
      if (u < row_units) {
        a[s] = xv[base + u];
        b[s] = xv[pbase + u];
      }
    }
#pragma unroll
    for (int s = 0; s < kUnroll; ++s) {
      const int64_t u = u0 + static_cast<int64_t>(s) * blockDim.x;
      if (u < row_units) {
        if (ov != nullptr) ov[base + u] = a[s];
        vec_t r;
#pragma unroll
        for (int e = 0; e < N; ++e) {
          r.v[e] = from_acc<scalar_t>(mul_rn(to_acc(a[s].v[e]), l) + mul_rn(to_acc(b[s].v[e]), lc));
        }
        mv[base + u] = r;
      }
    }
  }
}

bool aligned_to(int64_t bytes, std::initializer_list<const void*> ptrs) {
  for (const void* ptr : ptrs)
    if (reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(bytes) != 0) return false;
  return true;
}

// Writes the mix of x (contiguous, [B, ...]) into out (contiguous): rows [0, B) when !originals,
// else x into rows [0, B) and the mix into rows [B, 2B).
void launch_face_mixup(const at::Tensor& x, const at::Tensor& lam_in, const at::Tensor& perm_in,
                       const at::Tensor& out, bool originals) {
  const int64_t B = x.size(0);
  if (B == 0 || x.numel() == 0) return;
  const int64_t R = x.numel() / B;  // elements per row
  const at::ScalarType acc_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor lam = lam_in.to(acc_dtype).contiguous();
  const int64_t lam_stride = lam.dim() == 0 ? 0 : 1;
  const at::Tensor perm = perm_in.contiguous();
  const c10::DeviceIndex device = x.get_device();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  FERFAST_DISPATCH_FLOATING(x.scalar_type(), "face_mixup_cuda", [&] {
    using acc_t = acc_type_t<scalar_t>;
    const scalar_t* x_p = x.const_data_ptr<scalar_t>();
    scalar_t* out_p = out.mutable_data_ptr<scalar_t>();
    scalar_t* orig_p = originals ? out_p : nullptr;
    scalar_t* mixed_p = originals ? out_p + B * R : out_p;

    auto run = [&](auto n_tag) {
      constexpr int N = decltype(n_tag)::value;
      const int64_t row_units = R / N;
      // Threads along a row: enough for one chunk to cover it (up to kThreads); the rest of the
      // block takes further rows.
      const int tx = std::min(kThreads, round_up_warp(ceil_div(row_units, kUnroll)));
      const int ty = kThreads / tx;
      const int64_t chunks_per_row = ceil_div(row_units, static_cast<int64_t>(tx) * kUnroll);
      const int64_t work = B * chunks_per_row;
      const int64_t blocks = std::min(ceil_div(work, ty), static_cast<int64_t>(sm_count(device)) * kBlocksPerSm);
      face_mixup_kernel<scalar_t, N><<<static_cast<unsigned int>(blocks), dim3(tx, ty), 0, stream>>>(
          x_p, lam.const_data_ptr<acc_t>(), lam_stride, perm.const_data_ptr<int64_t>(), mixed_p, orig_p, B,
          row_units, chunks_per_row);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    constexpr int N16 = static_cast<int>(16 / sizeof(scalar_t));
    constexpr int N8 = static_cast<int>(8 / sizeof(scalar_t));
    // out_p and mixed_p (out_p + B*R) are aligned alike once R is a whole number of units.
    if (R % N16 == 0 && aligned_to(16, {x_p, out_p})) {
      run(std::integral_constant<int, N16>{});
    } else if (N8 > 1 && R % N8 == 0 && aligned_to(8, {x_p, out_p})) {
      if constexpr (N8 > 1) run(std::integral_constant<int, N8>{});
    } else {
      run(std::integral_constant<int, 1>{});
    }
  });
}

std::vector<int64_t> out_sizes(const at::Tensor& x, bool with_originals) {
  std::vector<int64_t> sizes = x.sizes().vec();
  if (with_originals) sizes[0] *= 2;
  return sizes;
}

at::Tensor face_mixup_cuda(const at::Tensor& x_in, const at::Tensor& lam, const at::Tensor& perm,
                           bool with_originals) {
  check_face_mixup(x_in, lam, perm);
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty(out_sizes(x, with_originals), x.options());
  launch_face_mixup(x, lam, perm, out, with_originals);
  return out;
}

// out by value: the C++ signature must match the CPU kernel's (the dispatcher checks).
void face_mixup_out_cuda(const at::Tensor& x_in, const at::Tensor& lam, const at::Tensor& perm, at::Tensor out) {
  check_face_mixup(x_in, lam, perm);
  const bool originals = check_face_mixup_out(x_in, out);
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  launch_face_mixup(x, lam, perm, out, originals);
}

}  // namespace

TORCH_LIBRARY_IMPL(ferfast, CUDA, m) {
  m.impl("face_mixup", &face_mixup_cuda);
  m.impl("face_mixup_out", &face_mixup_out_cuda);
}

}  // namespace ferfast
