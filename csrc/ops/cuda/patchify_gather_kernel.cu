// patchify_gather on CUDA: copy each kept patch from NCHW into nhwpqc order; the backward
// scatter-adds patch gradients back into an fp32 (fp64 for double) image buffer with atomics, so
// repeated indices add up, then casts to grad's dtype.
//
// Layout: a patch row (b, k) has P = p*p*C elements. Each block walks a contiguous chunk of rows
// (about one wave of blocks in all); thread t handles elements e = t + s*T (s < kElems) of every
// row, so reads/writes of the [B,K,P] side are coalesced, and the element -> image offset
// (c*H*W + i*W + j, which needs integer divisions) is computed once per thread, not per row.
// Patches bigger than kElems*1024 elements (or images of 2^31+ elements) take a (slower) loop
// that recomputes offsets.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <limits>

#include "ops/cuda/cuda_helpers.cuh"
#include "ops/patchify_gather.h"

namespace ferfast {
namespace {

using namespace ferfast::cuda;

constexpr int kMaxThreads = 1024;
constexpr int kElems = 8;  // elements per thread per row: 8 loads in flight per thread

struct PatchGeometry {
  int C, p, gw, P;
  int64_t H, W, L, K;
};

// Image offset of each of this thread's patch elements e = tid + s*T (shared by gather and scatter).
__device__ __forceinline__ void fill_offset_table(int32_t (&off)[kElems], const PatchGeometry& g, int tid, int T,
                                                  int64_t HW, bool use_table) {
#pragma unroll
  for (int s = 0; s < kElems; ++s) {
    const int e = tid + s * T;
    off[s] = (use_table && e < g.P) ? patch_elem_offset<int32_t>(e, g.C, g.p, HW, g.W) : 0;
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kMaxThreads)
    patchify_gather_kernel(const scalar_t* __restrict__ imgs, const int64_t* __restrict__ ids,
                           scalar_t* __restrict__ out, PatchGeometry g, int64_t rows, int64_t chunk,
                           bool use_table) {
  const int T = blockDim.x, tid = threadIdx.x;
  int64_t r = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t r_end = min(r + chunk, rows);
  if (r >= r_end) return;
  const int64_t HW = g.H * g.W, CHW = g.C * HW;
  int32_t off[kElems];  // offset table (when use_table: P <= kElems*T and C*H*W < 2^31)
  fill_offset_table(off, g, tid, T, HW, use_table);
  int64_t b = r / g.K, k = r - b * g.K;
  int64_t l_next = ids[r];
  for (; r < r_end; ++r) {
    const int64_t l = l_next;
    if (r + 1 < r_end) l_next = ids[r + 1];  // prefetch: hides the index load behind this row
    CUDA_KERNEL_ASSERT(l >= 0 && l < g.L);
    if (l >= 0 && l < g.L) {
      const int li = static_cast<int>(l), lh = li / g.gw, lw = li - lh * g.gw;  // L < 2^31
      const scalar_t* src = imgs + b * CHW + static_cast<int64_t>(lh) * g.p * g.W + static_cast<int64_t>(lw) * g.p;
      scalar_t* dst = out + r * g.P;
      if (use_table) {
        scalar_t v[kElems];
#pragma unroll
        for (int s = 0; s < kElems; ++s) {
          const int e = tid + s * T;
          if (e < g.P) v[s] = src[off[s]];
        }
#pragma unroll
        for (int s = 0; s < kElems; ++s) {
          const int e = tid + s * T;
          if (e < g.P) dst[e] = v[s];
        }
      } else {
        for (int e = tid; e < g.P; e += T) dst[e] = src[patch_elem_offset(e, g.C, g.p, HW, g.W)];
      }
    }
    if (++k == g.K) {
      k = 0;
      ++b;
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxThreads)
    patchify_scatter_add_kernel(const scalar_t* __restrict__ grad, const int64_t* __restrict__ ids,
                                acc_t* __restrict__ out, PatchGeometry g, int64_t rows, int64_t chunk,
                                bool use_table) {
  const int T = blockDim.x, tid = threadIdx.x;
  int64_t r = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t r_end = min(r + chunk, rows);
  if (r >= r_end) return;
  const int64_t HW = g.H * g.W, CHW = g.C * HW;
  int32_t off[kElems];  // offset table (when use_table: P <= kElems*T and C*H*W < 2^31)
  fill_offset_table(off, g, tid, T, HW, use_table);
  int64_t b = r / g.K, k = r - b * g.K;
  for (; r < r_end; ++r) {
    const int64_t l = ids[r];
    const scalar_t* src = grad + r * g.P;
    if (use_table) {
      scalar_t v[kElems];  // issued together with the index load
#pragma unroll
      for (int s = 0; s < kElems; ++s) {
        const int e = tid + s * T;
        if (e < g.P) v[s] = src[e];
      }
      CUDA_KERNEL_ASSERT(l >= 0 && l < g.L);
      if (l >= 0 && l < g.L) {
        const int li = static_cast<int>(l), lh = li / g.gw, lw = li - lh * g.gw;  // L < 2^31
        acc_t* dst = out + b * CHW + static_cast<int64_t>(lh) * g.p * g.W + static_cast<int64_t>(lw) * g.p;
#pragma unroll
        for (int s = 0; s < kElems; ++s) {
          const int e = tid + s * T;
          if (e < g.P) atomic_add(dst + off[s], static_cast<acc_t>(v[s]));
        }
      }
    } else {
      CUDA_KERNEL_ASSERT(l >= 0 && l < g.L);
      if (l >= 0 && l < g.L) {
        const int li = static_cast<int>(l), lh = li / g.gw, lw = li - lh * g.gw;  // L < 2^31
        acc_t* dst = out + b * CHW + static_cast<int64_t>(lh) * g.p * g.W + static_cast<int64_t>(lw) * g.p;
        for (int e = tid; e < g.P; e += T)
          atomic_add(dst + patch_elem_offset(e, g.C, g.p, HW, g.W), static_cast<acc_t>(src[e]));
      }
    }
    if (++k == g.K) {
      k = 0;
      ++b;
    }
  }
}

struct RowPlan {
  int threads;
  int64_t chunk, blocks;
  bool use_table;
};

// Block size and row chunking for the row-walking kernels: one wave of resident blocks.
template <typename Kernel>
RowPlan plan_rows(Kernel kernel, int64_t rows, const PatchGeometry& g, c10::DeviceIndex device) {
  const int threads = std::min(kMaxThreads, round_up_warp(ceil_div(g.P, kElems)));
  const int64_t resident = static_cast<int64_t>(sm_count(device)) * blocks_per_sm(kernel, threads);
  const int64_t chunk = ceil_div(rows, std::min(rows, resident));
  const int64_t blocks = ceil_div(rows, chunk);
  const bool use_table = g.P <= static_cast<int64_t>(kElems) * threads &&
                         g.C * g.H * g.W <= std::numeric_limits<int32_t>::max();
  return {threads, chunk, blocks, use_table};
}

PatchGeometry make_geometry(int64_t C, int64_t H, int64_t W, int64_t p, int64_t K) {
  const int64_t gw = W / p, L = (H / p) * gw, P = p * p * C;
  TORCH_CHECK(P <= std::numeric_limits<int32_t>::max() && L <= std::numeric_limits<int32_t>::max(),
              "patchify_gather: patch or grid too large");
  return {static_cast<int>(C), static_cast<int>(p), static_cast<int>(gw), static_cast<int>(P), H, W, L, K};
}

at::Tensor patchify_gather_cuda(const at::Tensor& imgs_in, const at::Tensor& ids_in, int64_t p) {
  check_patchify_gather(imgs_in, ids_in, p);
  c10::cuda::CUDAGuard guard(imgs_in.device());
  const at::Tensor imgs = imgs_in.contiguous();
  const at::Tensor ids = ids_in.contiguous();
  const int64_t B = imgs.size(0), C = imgs.size(1), H = imgs.size(2), W = imgs.size(3);
  const int64_t K = ids.size(1);
  const PatchGeometry g = make_geometry(C, H, W, p, K);
  at::Tensor out = at::empty({B, K, g.P}, imgs.options());
  const int64_t rows = B * K;
  if (rows == 0 || g.P == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FERFAST_DISPATCH_FLOATING(imgs.scalar_type(), "patchify_gather_cuda", [&] {
    auto kernel = patchify_gather_kernel<scalar_t>;
    const RowPlan plan = plan_rows(kernel, rows, g, imgs.get_device());
    kernel<<<static_cast<unsigned int>(plan.blocks), plan.threads, 0, stream>>>(
        imgs.const_data_ptr<scalar_t>(), ids.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(), g, rows,
        plan.chunk, plan.use_table);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor patchify_gather_backward_cuda(const at::Tensor& grad_in, const at::Tensor& ids_in, int64_t p, int64_t C,
                                         int64_t H, int64_t W) {
  check_patchify_gather_backward(grad_in, ids_in, p, C, H, W);
  c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor ids = ids_in.contiguous();
  const int64_t B = grad.size(0), K = grad.size(1);
  const PatchGeometry g = make_geometry(C, H, W, p, K);
  const bool wide = grad.scalar_type() == at::kDouble;
  const at::ScalarType acc_dtype = wide ? at::kDouble : at::kFloat;
  // fp32/fp64 grads accumulate straight into the output; fp16/bf16 go through an fp32 buffer.
  at::Tensor acc = at::zeros({B, C, H, W}, grad.options().dtype(acc_dtype));
  const int64_t rows = B * K;
  if (rows > 0 && g.P > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    FERFAST_DISPATCH_FLOATING(grad.scalar_type(), "patchify_gather_backward_cuda", [&] {
      using acc_t = acc_type_t<scalar_t>;
      auto kernel = patchify_scatter_add_kernel<scalar_t, acc_t>;
      const RowPlan plan = plan_rows(kernel, rows, g, grad.get_device());
      kernel<<<static_cast<unsigned int>(plan.blocks), plan.threads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), ids.const_data_ptr<int64_t>(), acc.mutable_data_ptr<acc_t>(), g, rows,
          plan.chunk, plan.use_table);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return grad.scalar_type() == acc_dtype ? acc : acc.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(ferfast, CUDA, m) {
  m.impl("patchify_gather", &patchify_gather_cuda);
  m.impl("_patchify_gather_backward", &patchify_gather_backward_cuda);
}

}  // namespace ferfast
