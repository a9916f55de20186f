// facemix_loss on CUDA: SSFER's face-IoU Mixup loss and its gradients in one pass over the logits.
//
//   loss = sum_j [CE_soft(mixed_j, y_soft_j) + w_j CE(real_j, y_j)] / B,
//   w_j  = (1 - iou_j) + sum_{i: perm_i == j} (1 - iou_i).
//
// Two launches on the current stream, no host synchronisation, no float atomics (run-to-run
// bitwise identical):
//  1. facemix_rows_kernel: one warp per row j, kWarps rows per block (blocks stride over row
//     groups). w_j: the block stages perm and (1 - iou) in shared memory, kTile entries at a time,
//     and each warp scans every tile for perm_i == j (lane-strided, then a fixed-order warp sum);
//     a deterministic O(B^2) scan, reading perm from global memory once per row group. Then per
//     row, K looped lane-strided (any K): max, then sum exp (warp reductions), giving
//     ce_real = (max - real[y]) + log(sum) and ce_soft = sum_k t_k (max - mixed_k) + log(sum) * sum_k t_k
//     (no cancellation between a large lse and sum t z). A third pass writes the gradients:
//     grad_real = w_j (softmax(real_j) - onehot(y_j)), grad_mixed = softmax(mixed_j) sum_k t_k - t_j: B times
//     d loss / d logits, in the accumulation dtype (fp32; [B, K] is small), so that a softmax of 1e-9 survives;
//     backward applies grad_loss / B in fp32 and rounds once to the logits' dtype (fp16 + GradScaler safe).
//     Lane 0 stores the row's ce_soft + w_j ce_real to an fp64 buffer.
//  2. finalize_kernel: one block sums the B row losses in a fixed order, in fp64, and divides by B.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <limits>

#include "ops/cuda/cuda_helpers.cuh"
#include "ops/facemix_loss.h"

namespace ferfast {
namespace {

using namespace ferfast::cuda;

constexpr int kWarps = 16;  // rows per block
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kTile = 2048;  // perm entries staged in shared memory at a time
constexpr int kFinalThreads = 1024;

template <typename logit_t, typename acc_t>
__device__ __forceinline__ acc_t row_max(const logit_t* __restrict__ z, int64_t K, int lane) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  for (int64_t k = lane; k < K; k += kWarpSize) m = max_nan(m, static_cast<acc_t>(z[k]));
  return warp_max(m);
}

template <typename real_t, typename mixed_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    facemix_rows_kernel(const real_t* __restrict__ real, const mixed_t* __restrict__ mixed,
                        const int64_t* __restrict__ y, const acc_t* __restrict__ y_soft,
                        const acc_t* __restrict__ iou, const int64_t* __restrict__ perm, int64_t B, int64_t K,
                        acc_t* __restrict__ grad_real, acc_t* __restrict__ grad_mixed,
                        double* __restrict__ row_loss) {
  __shared__ int64_t s_perm[kTile];
  __shared__ acc_t s_weight[kTile];  // 1 - iou_i
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;

  // The loop bounds are uniform over the block (every thread reaches the __syncthreads).
  for (int64_t group = static_cast<int64_t>(blockIdx.x) * kWarps; group < B;
       group += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t j = group + warp;
    const bool active = j < B;

    // w_j's partner terms: sum of (1 - iou_i) over i with perm_i == j, in a fixed order.
    acc_t partner = 0;
    for (int64_t i0 = 0; i0 < B; i0 += kTile) {
      const int n = static_cast<int>(min(static_cast<int64_t>(kTile), B - i0));
      __syncthreads();  // the previous tile is consumed
      for (int t = threadIdx.x; t < n; t += kThreads) {
        const int64_t p = perm[i0 + t];
        CUDA_KERNEL_ASSERT(p >= 0 && p < B);  // (an out-of-range partner would match no row)
        s_perm[t] = p;
        s_weight[t] = acc_t(1) - iou[i0 + t];
      }
      __syncthreads();
      if (active) {
        for (int t = lane; t < n; t += kWarpSize)
          if (s_perm[t] == j) partner += s_weight[t];
      }
    }
    if (!active) continue;  // warp-uniform; no block barrier until the next group's tile loop
    partner = warp_sum(partner);
    const acc_t w = (acc_t(1) - iou[j]) + partner;

    // Real images: plain cross-entropy with label y_j.
    const real_t* zr = real + j * K;
    const acc_t mr = row_max<real_t, acc_t>(zr, K, lane);
    acc_t sr = 0;
    for (int64_t k = lane; k < K; k += kWarpSize) sr += device_exp(static_cast<acc_t>(zr[k]) - mr);
    sr = warp_sum(sr);
    const int64_t yj = y[j];
    CUDA_KERNEL_ASSERT(yj >= 0 && yj < K);
    const bool y_ok = yj >= 0 && yj < K;
    const acc_t zy = y_ok ? static_cast<acc_t>(zr[yj]) : std::numeric_limits<acc_t>::quiet_NaN();
    const acc_t log_sr = device_log(sr);
    const acc_t ce_real = (mr - zy) + log_sr;

    // Mixed images: soft-target cross-entropy sum_k t_k (lse - z_k).
    const mixed_t* zm = mixed + j * K;
    const acc_t* t = y_soft + j * K;
    const acc_t mm = row_max<mixed_t, acc_t>(zm, K, lane);
    acc_t sm = 0, tz = 0, ts = 0;
    for (int64_t k = lane; k < K; k += kWarpSize) {
      const acc_t z = static_cast<acc_t>(zm[k]);
      const acc_t tk = t[k];
      sm += device_exp(z - mm);
      tz += tk * (mm - z);
      ts += tk;
    }
    sm = warp_sum(sm);
    tz = warp_sum(tz);
    ts = warp_sum(ts);
    const acc_t log_sm = device_log(sm);
    const acc_t ce_soft = tz + log_sm * ts;

    if (lane == 0) row_loss[j] = static_cast<double>(ce_soft + w * ce_real);

    if (grad_real != nullptr) {
      const acc_t coef_r = w;
      const acc_t inv_sr = acc_t(1) / sr;
      acc_t* gr = grad_real + j * K;
      for (int64_t k = lane; k < K; k += kWarpSize) {
        const acc_t p = device_exp(static_cast<acc_t>(zr[k]) - mr) * inv_sr;
        gr[k] = (p - (k == yj ? acc_t(1) : acc_t(0))) * coef_r;
      }
      const acc_t inv_sm = acc_t(1) / sm;
      acc_t* gm = grad_mixed + j * K;
      for (int64_t k = lane; k < K; k += kWarpSize) {
        const acc_t p = device_exp(static_cast<acc_t>(zm[k]) - mm) * inv_sm;
        gm[k] = p * ts - t[k];
      }
    }
  }
}

// loss = sum(row_loss) / B, one block, fixed summation order.
template <typename out_t>
__global__ void __launch_bounds__(kFinalThreads)
    finalize_kernel(const double* __restrict__ row_loss, int64_t n, out_t* __restrict__ loss) {
  __shared__ double red[kWarpSize];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += row_loss[i];
  s = block_sum_all(s, red);
  if (threadIdx.x == 0) *loss = static_cast<out_t>(s / static_cast<double>(n));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> facemix_loss_cuda(const at::Tensor& real_in, const at::Tensor& mixed_in,
                                                                 const at::Tensor& y_in, const at::Tensor& y_soft_in,
                                                                 const at::Tensor& iou_in, const at::Tensor& perm_in,
                                                                 bool compute_grad) {
  check_facemix_loss(real_in, mixed_in, y_in, y_soft_in, iou_in, perm_in);
  c10::cuda::CUDAGuard guard(real_in.device());
  const at::Tensor real = real_in.contiguous();
  const at::Tensor mixed = mixed_in.contiguous();
  const at::Tensor y = y_in.contiguous();
  const at::Tensor perm = perm_in.contiguous();
  const bool wide = real.scalar_type() == at::kDouble || mixed.scalar_type() == at::kDouble;
  const at::ScalarType acc_dtype = wide ? at::kDouble : at::kFloat;
  const at::Tensor y_soft = y_soft_in.to(acc_dtype).contiguous();
  const at::Tensor iou = iou_in.to(acc_dtype).contiguous();
  const int64_t B = real.size(0), K = real.size(1);  // both > 0 (checked)

  // The gradients are small ([B, K]) and kept in the accumulation dtype (see the file comment).
  const auto grad_opts = real.options().dtype(acc_dtype);
  at::Tensor grad_real = compute_grad ? at::empty({B, K}, grad_opts) : at::empty({0}, grad_opts);
  at::Tensor grad_mixed = compute_grad ? at::empty({B, K}, grad_opts) : at::empty({0}, grad_opts);
  at::Tensor loss = at::empty({}, real.options().dtype(acc_dtype));
  at::Tensor row_loss = at::empty({B}, real.options().dtype(at::kDouble));

  const int64_t groups = ceil_div(B, kWarps);
  const int64_t blocks = std::min(groups, static_cast<int64_t>(sm_count(real.get_device())) * 4);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  FERFAST_DISPATCH_FLOATING(real.scalar_type(), "facemix_loss_cuda", [&] {
    using real_t = scalar_t;
    FERFAST_DISPATCH_FLOATING(mixed.scalar_type(), "facemix_loss_cuda", [&] {
      using mixed_t = scalar_t;
      using acc_t = acc_type_t<real_t, mixed_t>;
      facemix_rows_kernel<real_t, mixed_t, acc_t><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
          real.const_data_ptr<real_t>(), mixed.const_data_ptr<mixed_t>(), y.const_data_ptr<int64_t>(),
          y_soft.const_data_ptr<acc_t>(), iou.const_data_ptr<acc_t>(), perm.const_data_ptr<int64_t>(), B, K,
          compute_grad ? grad_real.mutable_data_ptr<acc_t>() : nullptr,
          compute_grad ? grad_mixed.mutable_data_ptr<acc_t>() : nullptr, row_loss.mutable_data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      finalize_kernel<acc_t><<<1, kFinalThreads, 0, stream>>>(row_loss.const_data_ptr<double>(), B,
                                                              loss.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {loss, grad_real, grad_mixed};
}

}  // namespace

TORCH_LIBRARY_IMPL(ferfast, CUDA, m) { m.impl("facemix_loss", &facemix_loss_cuda); }

}  // namespace ferfast
