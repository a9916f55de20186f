// masked_patch_mse on CUDA: MAE's forward_loss and its gradient in one pass over imgs and pred.
//
// Three launches on the current stream, no host synchronisation:
//  1. mask_sum_kernel: denominator partials, G blocks each summing a fixed slice of the mask in
//     fp64 (G depends only on B*L), summed by finalize_loss_kernel with a fixed-order warp
//     reduction. (Backward recomputes the denominator for the gradient's factor.)
//  2. masked_patch_mse_kernel: a block (T threads, T*kElems >= P) per patch. Blocks walk
//     contiguous chunks of patches (one wave of resident blocks); thread t owns elements
//     e = t + s*T (s < kElems) of every patch, so pred reads and grad writes are coalesced, and the
//     element -> NCHW offset (integer divisions) is computed once per thread. The target is
//     gathered straight from imgs into registers (never materialised); the next patch's imgs and
//     pred values are loaded (and the mask two patches ahead) before the current patch's block
//     reductions, so loads stay in flight across __syncthreads. norm_pix_loss uses two block
//     reductions (mean, then the unbiased variance of the deviations, as the CPU kernel does);
//     the squared error is a third. Each patch's w * mean_e (pred - target)^2 goes to a per-patch
//     fp64 buffer (0 for unmasked patches, which read nothing and get a zero gradient). The stored
//     gradient is un-normalised, w * (pred - target): backward applies 2 * grad_loss / (P * denom)
//     in fp32 (folded in here, that factor is ~7e-8 at ViT-B/16 batch 256, fp16-subnormal).
//     Patches bigger than kElems*1024 elements (512 for fp64) take masked_patch_mse_loop_kernel,
//     which re-reads the target from imgs for each reduction pass instead of keeping it in
//     registers.
//  3. finalize_loss_kernel: one block sums the per-patch losses in a fixed order (deterministic,
//     no float atomics) and divides by the denominator (0 -> 1).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <limits>

#include "ops/cuda/cuda_helpers.cuh"
#include "ops/masked_patch_mse.h"

namespace ferfast {
namespace {

using namespace ferfast::cuda;

constexpr int kElems = 4;  // target/pred elements per thread per patch (registers)

// Largest block of masked_patch_mse_kernel: 1024 threads (64 registers each) in fp32; fp64 needs
// more registers, so 512 (larger fp64 patches take the loop kernel).
template <typename acc_t>
constexpr int max_threads() {
  return std::is_same_v<acc_t, double> ? 512 : 1024;
}
constexpr int kLoopThreads = 512;
constexpr int kDenomThreads = 256;
constexpr int64_t kDenomPerBlock = 2048;
constexpr int64_t kMaxDenomBlocks = 256;
constexpr int kFinalThreads = 1024;

struct MseGeometry {
  int C, p, gh, gw, P;
  int64_t H, W, L, num_patches;
};

template <typename T>
__device__ __forceinline__ T zero_value() {
  return static_cast<T>(0.0f);
}

// Denominator partials: partial[blk] = sum of mask[blk*per_block, (blk+1)*per_block) in fp64.
template <typename acc_t>
__global__ void __launch_bounds__(kDenomThreads)
    mask_sum_kernel(const acc_t* __restrict__ mask, int64_t n, int64_t per_block, double* __restrict__ partial) {
  __shared__ double red[kWarpSize];
  const int64_t start = static_cast<int64_t>(blockIdx.x) * per_block;
  const int64_t end = min(start + per_block, n);
  double s = 0.0;
  for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) s += static_cast<double>(mask[i]);
  s = block_sum_all(s, red);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// The denominator sum(mask) from its partials; called by whole warps, every lane gets the same value.
__device__ __forceinline__ double sum_denom_partials(const double* __restrict__ partial, int num_partials) {
  double s = 0.0;
  for (int i = threadIdx.x % kWarpSize; i < num_partials; i += kWarpSize) s += partial[i];
  return warp_sum(s);
}

template <typename img_t, typename pred_t, typename acc_t>
__global__ void __launch_bounds__(max_threads<acc_t>())
    masked_patch_mse_kernel(const img_t* __restrict__ imgs, const pred_t* __restrict__ pred,
                            const acc_t* __restrict__ mask, pred_t* __restrict__ grad, double* __restrict__ patch_loss,
                            MseGeometry g, int64_t chunk, bool norm_pix) {
  // 0: sum, 1: squared deviations, 2/3: squared error (alternating; see the hazard note below).
  __shared__ acc_t red[4][kWarpSize];
  const int T = blockDim.x, tid = threadIdx.x;
  int64_t q = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t q_end = min(q + chunk, g.num_patches);
  if (q >= q_end) return;  // uniform over the block

  const int P = g.P;
  const int64_t HW = g.H * g.W, CHW = g.C * HW;

  int32_t off[kElems];  // C*H*W < 2^31 (checked by the host)
#pragma unroll
  for (int s = 0; s < kElems; ++s) {
    const int e = tid + s * T;
    off[s] = e < P ? patch_elem_offset<int32_t>(e, g.C, g.p, HW, g.W) : 0;
  }

  // Patch coordinates, advanced incrementally (no divisions per patch).
  int64_t b = q / g.L;
  int l = static_cast<int>(q - b * g.L);
  int lh = l / g.gw, lw = l - lh * g.gw;
  auto advance = [&]() {
    if (++lw == g.gw) {
      lw = 0;
      if (++lh == g.gh) {
        lh = 0;
        ++b;
      }
    }
  };
  auto image_base = [&]() { return b * CHW + static_cast<int64_t>(lh) * g.p * g.W + static_cast<int64_t>(lw) * g.p; };
  // Loads patch qq (if its weight is non-zero) into raw registers; converted only when used, so
  // the loads stay in flight.
  auto load = [&](int64_t qq, acc_t w, img_t (&t)[kElems], pred_t (&x)[kElems]) {
    const img_t* src = imgs + image_base();
    const pred_t* pr = pred + qq * P;
#pragma unroll
    for (int s = 0; s < kElems; ++s) {
      const int e = tid + s * T;
      const bool active = w != acc_t(0) && e < P;
      t[s] = active ? src[off[s]] : zero_value<img_t>();
      x[s] = active ? pr[e] : zero_value<pred_t>();
    }
  };

  img_t t_cur[kElems];
  pred_t x_cur[kElems];
  acc_t w_cur = mask[q];
  acc_t w_next = q + 1 < q_end ? mask[q + 1] : acc_t(0);
  load(q, w_cur, t_cur, x_cur);
  int phase = 0;

  for (; q < q_end; ++q) {
    // Prefetch: mask two patches ahead, data of the next patch.
    advance();
    const acc_t w_after = q + 2 < q_end ? mask[q + 2] : acc_t(0);
    img_t t_next[kElems];
    pred_t x_next[kElems];
    load(q + 1, w_next, t_next, x_next);  // w_next is 0 past the chunk: loads nothing

    pred_t* gr = grad ? grad + q * P : nullptr;
    if (w_cur == acc_t(0)) {
      if (gr) {
#pragma unroll
        for (int s = 0; s < kElems; ++s) {
          const int e = tid + s * T;
          if (e < P) gr[e] = zero_value<pred_t>();
        }
      }
      if (tid == 0) patch_loss[q] = 0.0;
    } else {
      acc_t t[kElems], x[kElems];
#pragma unroll
      for (int s = 0; s < kElems; ++s) {
        t[s] = static_cast<acc_t>(t_cur[s]);  // inactive elements hold zeros
        x[s] = static_cast<acc_t>(x_cur[s]);
      }
      acc_t mean = 0, inv_std = 1;
      if (norm_pix) {
        acc_t sum = 0;
#pragma unroll
        for (int s = 0; s < kElems; ++s) sum += t[s];
        mean = block_sum_all(sum, red[0]) / static_cast<acc_t>(P);
        acc_t ss = 0;
#pragma unroll
        for (int s = 0; s < kElems; ++s) {
          const acc_t dv = t[s] - mean;
          if (tid + s * T < P) ss += dv * dv;
        }
        const acc_t var = block_sum_all(ss, red[1]) / static_cast<acc_t>(P - 1);  // unbiased, as torch.var
        inv_std = acc_t(1) / device_sqrt(var + static_cast<acc_t>(kNormPixEps));
      }
      const acc_t coef = w_cur;  // un-normalised gradient (see the file comment)
      acc_t sq = 0;
#pragma unroll
      for (int s = 0; s < kElems; ++s) {
        const int e = tid + s * T;
        if (e < P) {
          const acc_t d = x[s] - (t[s] - mean) * inv_std;
          sq += d * d;
          if (gr) gr[e] = static_cast<pred_t>(d * coef);
        }
      }
      // red[2 + phase] alternates between masked patches: a thread rewrites a slot only after
      // passing the __syncthreads of the reduction in between, which every thread reaches only
      // after reading that slot. red[0] and red[1] are followed by later reductions in the same
      // patch, which give the same guarantee.
      sq = block_sum_all(sq, red[2 + phase]);
      phase ^= 1;
      if (tid == 0)
        patch_loss[q] = static_cast<double>(w_cur) * static_cast<double>(sq) / static_cast<double>(P);
    }

#pragma unroll
    for (int s = 0; s < kElems; ++s) {
      t_cur[s] = t_next[s];
      x_cur[s] = x_next[s];
    }
    w_cur = w_next;
    w_next = w_after;
  }
}

// Fallback for patches of more than kElems*max_threads elements (or images of 2^31+ elements): a
// block per patch (grid-stride), the target re-gathered from imgs for each pass.
template <typename img_t, typename pred_t, typename acc_t>
__global__ void __launch_bounds__(kLoopThreads)
    masked_patch_mse_loop_kernel(const img_t* __restrict__ imgs, const pred_t* __restrict__ pred,
                                 const acc_t* __restrict__ mask, pred_t* __restrict__ grad,
                                 double* __restrict__ patch_loss, MseGeometry g, bool norm_pix) {
  __shared__ acc_t red[4][kWarpSize];
  const int T = blockDim.x, tid = threadIdx.x, P = g.P;
  const int64_t HW = g.H * g.W, CHW = g.C * HW;
  int phase = 0;
  for (int64_t q = blockIdx.x; q < g.num_patches; q += gridDim.x) {
    const acc_t w = mask[q];
    pred_t* gr = grad ? grad + q * P : nullptr;
    if (w == acc_t(0)) {
      if (gr)
        for (int e = tid; e < P; e += T) gr[e] = zero_value<pred_t>();
      if (tid == 0) patch_loss[q] = 0.0;
      continue;
    }
    const int64_t b = q / g.L;
    const int l = static_cast<int>(q - b * g.L);
    const int lh = l / g.gw, lw = l - lh * g.gw;
    const img_t* src = imgs + b * CHW + static_cast<int64_t>(lh) * g.p * g.W + static_cast<int64_t>(lw) * g.p;
    auto target = [&](int e) { return static_cast<acc_t>(src[patch_elem_offset(e, g.C, g.p, HW, g.W)]); };
    acc_t mean = 0, inv_std = 1;
    if (norm_pix) {
      acc_t sum = 0;
      for (int e = tid; e < P; e += T) sum += target(e);
      mean = block_sum_all(sum, red[0]) / static_cast<acc_t>(P);
      acc_t ss = 0;
      for (int e = tid; e < P; e += T) {
        const acc_t dv = target(e) - mean;
        ss += dv * dv;
      }
      const acc_t var = block_sum_all(ss, red[1]) / static_cast<acc_t>(P - 1);
      inv_std = acc_t(1) / device_sqrt(var + static_cast<acc_t>(kNormPixEps));
    }
    const acc_t coef = w;  // un-normalised gradient
    const pred_t* pr = pred + q * P;
    acc_t sq = 0;
    for (int e = tid; e < P; e += T) {
      const acc_t d = static_cast<acc_t>(pr[e]) - (target(e) - mean) * inv_std;
      sq += d * d;
      if (gr) gr[e] = static_cast<pred_t>(d * coef);
    }
    sq = block_sum_all(sq, red[2 + phase]);
    phase ^= 1;
    if (tid == 0) patch_loss[q] = static_cast<double>(w) * static_cast<double>(sq) / static_cast<double>(P);
  }
}

// loss = sum(patch_loss) / (denom == 0 ? 1 : denom), one block, fixed summation order.
template <typename out_t>
__global__ void __launch_bounds__(kFinalThreads)
    finalize_loss_kernel(const double* __restrict__ patch_loss, int64_t n, const double* __restrict__ denom_partial,
                         int denom_blocks, out_t* __restrict__ loss) {
  __shared__ double red[kWarpSize];
  const int64_t T = blockDim.x;
  double s = 0.0;
  int64_t i = threadIdx.x;
  for (; i + 3 * T < n; i += 4 * T) {  // four independent loads in flight, added in order
    const double v0 = patch_loss[i], v1 = patch_loss[i + T], v2 = patch_loss[i + 2 * T], v3 = patch_loss[i + 3 * T];
    s += v0;
    s += v1;
    s += v2;
    s += v3;
  }
  for (; i < n; i += T) s += patch_loss[i];
  s = block_sum_all(s, red);
  const double denom = sum_denom_partials(denom_partial, denom_blocks);
  if (threadIdx.x == 0) *loss = static_cast<out_t>(s / (denom == 0.0 ? 1.0 : denom));
}

std::tuple<at::Tensor, at::Tensor> masked_patch_mse_cuda(const at::Tensor& imgs_in, const at::Tensor& pred_in,
                                                         const at::Tensor& mask_in, int64_t p, bool norm_pix,
                                                         bool compute_grad) {
  check_masked_patch_mse(imgs_in, pred_in, mask_in, p, norm_pix);
  c10::cuda::CUDAGuard guard(imgs_in.device());
  const at::Tensor imgs = imgs_in.contiguous();
  const at::Tensor pred = pred_in.contiguous();
  const bool wide = imgs.scalar_type() == at::kDouble || pred.scalar_type() == at::kDouble;
  const at::ScalarType acc_dtype = wide ? at::kDouble : at::kFloat;
  const at::Tensor mask = mask_in.to(acc_dtype).contiguous();
  const int64_t B = imgs.size(0), C = imgs.size(1), H = imgs.size(2), W = imgs.size(3);
  const int64_t gw = W / p, L = (H / p) * gw, P = p * p * C, N = B * L;
  TORCH_CHECK(P <= std::numeric_limits<int32_t>::max() && L <= std::numeric_limits<int32_t>::max(),
              "masked_patch_mse: patch or grid too large");
  const MseGeometry g{static_cast<int>(C), static_cast<int>(p), static_cast<int>(H / p), static_cast<int>(gw),
                      static_cast<int>(P), H, W, L, N};

  at::Tensor grad = compute_grad ? at::empty_like(pred) : at::empty({0}, pred.options());
  at::Tensor loss = at::empty({}, pred.options().dtype(acc_dtype));
  const int denom_blocks = static_cast<int>(std::clamp<int64_t>(ceil_div(N, kDenomPerBlock), 1, kMaxDenomBlocks));
  const int64_t per_block = ceil_div(N, denom_blocks);
  at::Tensor buffer = at::empty({N + denom_blocks}, pred.options().dtype(at::kDouble));
  double* patch_loss = buffer.mutable_data_ptr<double>();
  double* denom_partial = patch_loss + N;
  const c10::DeviceIndex device = pred.get_device();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  FERFAST_DISPATCH_FLOATING(pred.scalar_type(), "masked_patch_mse_cuda", [&] {
    using pred_t = scalar_t;
    FERFAST_DISPATCH_FLOATING(imgs.scalar_type(), "masked_patch_mse_cuda", [&] {
      using img_t = scalar_t;
      using acc_t = acc_type_t<img_t, pred_t>;
      const acc_t* mask_p = mask.const_data_ptr<acc_t>();
      pred_t* grad_p = compute_grad ? grad.mutable_data_ptr<pred_t>() : nullptr;

      mask_sum_kernel<acc_t><<<denom_blocks, kDenomThreads, 0, stream>>>(mask_p, N, per_block, denom_partial);
      C10_CUDA_KERNEL_LAUNCH_CHECK();

      if (N > 0) {
        const int64_t resident_sms = sm_count(device);
        if (P <= static_cast<int64_t>(kElems) * max_threads<acc_t>() &&
            C * H * W <= std::numeric_limits<int32_t>::max()) {
          auto kernel = masked_patch_mse_kernel<img_t, pred_t, acc_t>;
          const int threads = round_up_warp(ceil_div(P, kElems));
          const int64_t resident = resident_sms * blocks_per_sm(kernel, threads);
          const int64_t chunk = ceil_div(N, std::min(N, resident));
          const int64_t blocks = ceil_div(N, chunk);
          kernel<<<static_cast<unsigned int>(blocks), threads, 0, stream>>>(
              imgs.const_data_ptr<img_t>(), pred.const_data_ptr<pred_t>(), mask_p, grad_p, patch_loss, g, chunk,
              norm_pix);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        } else {
          auto kernel = masked_patch_mse_loop_kernel<img_t, pred_t, acc_t>;
          const int64_t blocks = std::min(N, resident_sms * blocks_per_sm(kernel, kLoopThreads));
          kernel<<<static_cast<unsigned int>(blocks), kLoopThreads, 0, stream>>>(
              imgs.const_data_ptr<img_t>(), pred.const_data_ptr<pred_t>(), mask_p, grad_p, patch_loss, g, norm_pix);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      }

      finalize_loss_kernel<acc_t><<<1, kFinalThreads, 0, stream>>>(patch_loss, N, denom_partial, denom_blocks,
                                                                   loss.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {loss, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(ferfast, CUDA, m) { m.impl("masked_patch_mse", &masked_patch_mse_cuda); }

}  // namespace ferfast
