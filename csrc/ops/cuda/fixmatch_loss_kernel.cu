// fixmatch_loss on CUDA: pseudo-labels, confidence mask, masked cross-entropy and its gradient in
// one pass over the two logit tensors.
//
// Two launches on the current stream, no host synchronisation, no float atomics (run-to-run
// bitwise identical):
//  1. fixmatch_rows_kernel: one warp per row (kWarps rows per block, blocks stride over rows), K
//     looped lane-strided (any K). Weak logits: each lane keeps its first largest value, then a
//     symmetric (value, index) butterfly picks the largest value with the smallest index (a NaN
//     counts as the largest, like torch.argmax); maxprob = 1 / sum_k exp(weak_k - max) (the softmax
//     at the argmax), mask = maxprob >= threshold (threshold rounded to the accumulation dtype, as
//     torch compares a float32 tensor with a Python float). Strong logits: max, sum exp, then
//     ce = (max - strong[pseudo]) + log(sum); lane 0 stores pseudo, mask and mask * ce (fp64
//     buffer); a third pass writes grad_strong = mask (softmax(strong) - onehot(pseudo)), B times the
//     gradient, in the accumulation dtype (fp32; [B, K] is small); backward applies grad_loss / B in fp32
//     and rounds once to logits_strong's dtype (fp16 + GradScaler safe).
//  2. finalize_kernel: one block sums the B values of mask * ce and of mask in a fixed order, in
//     fp64, and divides by B.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <limits>

#include "ops/cuda/cuda_helpers.cuh"
#include "ops/fixmatch_loss.h"

namespace ferfast {
namespace {

using namespace ferfast::cuda;

constexpr int kWarps = 8;  // rows per block
constexpr int kThreads = kWarps * kWarpSize;
constexpr int64_t kBlocksPerSm = 16;
constexpr int kFinalThreads = 1024;

// (value, index) candidate of argmax; index -1: none. Returns the better of two candidates: NaN
// first, then the larger value, then the smaller index. Symmetric in its operands.
template <typename T>
__device__ __forceinline__ void argmax_combine(T& m, int64_t& idx, T m2, int64_t idx2) {
  if (idx2 < 0) return;
  bool take;
  if (idx < 0) {
    take = true;
  } else {
    const bool nan1 = m != m, nan2 = m2 != m2;
    if (nan1 || nan2) {
      take = nan1 && nan2 ? idx2 < idx : nan2;
    } else {
      take = m2 > m || (m2 == m && idx2 < idx);
    }
  }
  if (take) {
    m = m2;
    idx = idx2;
  }
}

template <typename weak_t, typename strong_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    fixmatch_rows_kernel(const weak_t* __restrict__ weak, const strong_t* __restrict__ strong, int64_t B, int64_t K,
                         acc_t threshold, int64_t* __restrict__ pseudo_out, acc_t* __restrict__ mask_out,
                         double* __restrict__ row_loss, acc_t* __restrict__ grad) {
  const int lane = threadIdx.x % kWarpSize;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarpSize; row < B;
       row += static_cast<int64_t>(gridDim.x) * kWarps) {  // warp-uniform
    // Pseudo-label: first index of the largest weak logit.
    const weak_t* zw = weak + row * K;
    acc_t mw = 0;
    int64_t pseudo = -1;
    for (int64_t k = lane; k < K; k += kWarpSize) argmax_combine(mw, pseudo, static_cast<acc_t>(zw[k]), k);
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
      const acc_t m2 = __shfl_xor_sync(0xffffffffu, mw, offset);
      const int64_t i2 = __shfl_xor_sync(0xffffffffu, pseudo, offset);
      argmax_combine(mw, pseudo, m2, i2);
    }
    // K > 0, so lane 0 saw k = 0 and pseudo is a valid index on every lane.
    acc_t sw = 0;
    for (int64_t k = lane; k < K; k += kWarpSize) sw += device_exp(static_cast<acc_t>(zw[k]) - mw);
    sw = warp_sum(sw);
    const acc_t maxprob = acc_t(1) / sw;
    const acc_t mask = maxprob >= threshold ? acc_t(1) : acc_t(0);

    // Cross-entropy of the strong logits with the pseudo-label.
    const strong_t* zs = strong + row * K;
    acc_t ms = -std::numeric_limits<acc_t>::infinity();
    for (int64_t k = lane; k < K; k += kWarpSize) ms = max_nan(ms, static_cast<acc_t>(zs[k]));
    ms = warp_max(ms);
    acc_t ss = 0;
    for (int64_t k = lane; k < K; k += kWarpSize) ss += device_exp(static_cast<acc_t>(zs[k]) - ms);
    ss = warp_sum(ss);
    const acc_t ce = (ms - static_cast<acc_t>(zs[pseudo])) + device_log(ss);

    if (lane == 0) {
      pseudo_out[row] = pseudo;
      mask_out[row] = mask;
      row_loss[row] = static_cast<double>(ce * mask);
    }
    if (grad != nullptr) {
      const acc_t coef = mask;
      const acc_t inv_ss = acc_t(1) / ss;
      acc_t* g = grad + row * K;
      for (int64_t k = lane; k < K; k += kWarpSize) {
        const acc_t p = device_exp(static_cast<acc_t>(zs[k]) - ms) * inv_ss;
        g[k] = (p - (k == pseudo ? acc_t(1) : acc_t(0))) * coef;
      }
    }
  }
}

// loss = sum(row_loss) / B and mask_rate = sum(mask) / B, one block, fixed summation order.
template <typename acc_t>
__global__ void __launch_bounds__(kFinalThreads)
    finalize_kernel(const double* __restrict__ row_loss, const acc_t* __restrict__ mask, int64_t n,
                    acc_t* __restrict__ loss, acc_t* __restrict__ rate) {
  __shared__ double red_loss[kWarpSize];
  __shared__ double red_mask[kWarpSize];
  double sl = 0.0, sm = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    sl += row_loss[i];
    sm += static_cast<double>(mask[i]);
  }
  sl = block_sum_all(sl, red_loss);
  sm = block_sum_all(sm, red_mask);
  if (threadIdx.x == 0) {
    *loss = static_cast<acc_t>(sl / static_cast<double>(n));
    *rate = static_cast<acc_t>(sm / static_cast<double>(n));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fixmatch_loss_cuda(
    const at::Tensor& weak_in, const at::Tensor& strong_in, double threshold, bool compute_grad) {
  check_fixmatch_loss(weak_in, strong_in, threshold);
  c10::cuda::CUDAGuard guard(weak_in.device());
  const at::Tensor weak = weak_in.contiguous();
  const at::Tensor strong = strong_in.contiguous();
  const bool wide = weak.scalar_type() == at::kDouble || strong.scalar_type() == at::kDouble;
  const at::ScalarType acc_dtype = wide ? at::kDouble : at::kFloat;
  const int64_t B = weak.size(0), K = weak.size(1);  // both > 0 (checked)

  const auto acc_opts = weak.options().dtype(acc_dtype);
  at::Tensor loss = at::empty({}, acc_opts);
  at::Tensor rate = at::empty({}, acc_opts);
  at::Tensor pseudo = at::empty({B}, weak.options().dtype(at::kLong));
  at::Tensor mask = at::empty({B}, acc_opts);
  // [B, K] gradient kept in the accumulation dtype (see the file comment).
  at::Tensor grad = compute_grad ? at::empty({B, K}, acc_opts) : at::empty({0}, acc_opts);
  at::Tensor row_loss = at::empty({B}, weak.options().dtype(at::kDouble));

  const int64_t blocks =
      std::min(ceil_div(B, kWarps), static_cast<int64_t>(sm_count(weak.get_device())) * kBlocksPerSm);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  FERFAST_DISPATCH_FLOATING(weak.scalar_type(), "fixmatch_loss_cuda", [&] {
    using weak_t = scalar_t;
    FERFAST_DISPATCH_FLOATING(strong.scalar_type(), "fixmatch_loss_cuda", [&] {
      using strong_t = scalar_t;
      using acc_t = acc_type_t<weak_t, strong_t>;
      fixmatch_rows_kernel<weak_t, strong_t, acc_t><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
          weak.const_data_ptr<weak_t>(), strong.const_data_ptr<strong_t>(), B, K, static_cast<acc_t>(threshold),
          pseudo.mutable_data_ptr<int64_t>(), mask.mutable_data_ptr<acc_t>(), row_loss.mutable_data_ptr<double>(),
          compute_grad ? grad.mutable_data_ptr<acc_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      finalize_kernel<acc_t><<<1, kFinalThreads, 0, stream>>>(row_loss.const_data_ptr<double>(),
                                                              mask.const_data_ptr<acc_t>(), B,
                                                              loss.mutable_data_ptr<acc_t>(),
                                                              rate.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {loss, rate, pseudo, mask, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(ferfast, CUDA, m) { m.impl("fixmatch_loss", &fixmatch_loss_cuda); }

}  // namespace ferfast
