// mixup_soft_targets on CUDA: one thread per target element (grid-stride loop, int64 indices).
//
// out[i, k] = t(y[i], k) * lam[i] + t(y[perm[i]], k) * (1 - lam[i]), t(c, k) = on if k == c else off,
// with on = 1 - s + s/K and off = s/K computed in double on the host and rounded to the output
// dtype (as torch.full / scatter_ round the reference's Python floats). The products are
// explicitly rounded (__fmul_rn, never contracted into an FMA), exactly like the reference.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "ops/cuda/cuda_helpers.cuh"
#include "ops/mixup_soft_targets.h"

namespace ferfast {
namespace {

using namespace ferfast::cuda;

constexpr int kThreads = 256;
constexpr int64_t kBlocksPerSm = 32;

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    mixup_soft_targets_kernel(const int64_t* __restrict__ y, const acc_t* __restrict__ lam, int64_t lam_stride,
                              const int64_t* __restrict__ perm, acc_t* __restrict__ out, int64_t B, int64_t K,
                              acc_t on, acc_t off) {
  const int64_t total = B * K;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / K, k = idx - i * K;
    int64_t p = perm[i];
    CUDA_KERNEL_ASSERT(p >= 0 && p < B);
    if (p < 0 || p >= B) p = i;  // unreachable after the assert; keeps the read in bounds
    const int64_t y1 = y[i], y2 = y[p];
    CUDA_KERNEL_ASSERT(y1 >= 0 && y1 < K);  // the reference's scatter_ fails on such labels
    const acc_t l = lam[i * lam_stride];
    const acc_t t1 = k == y1 ? on : off;
    const acc_t t2 = k == y2 ? on : off;
    out[idx] = mul_rn(t1, l) + mul_rn(t2, acc_t(1) - l);
  }
}

at::Tensor mixup_soft_targets_cuda(const at::Tensor& y_in, int64_t num_classes, const at::Tensor& lam_in,
                                   const at::Tensor& perm_in, double label_smoothing) {
  check_mixup_soft_targets(y_in, num_classes, lam_in, perm_in, label_smoothing);
  c10::cuda::CUDAGuard guard(y_in.device());
  const at::ScalarType acc_dtype = lam_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t B = y_in.size(0), K = num_classes;
  at::Tensor out = at::empty({B, K}, y_in.options().dtype(acc_dtype));
  if (B == 0) return out;
  const at::Tensor y = y_in.contiguous();
  const at::Tensor perm = perm_in.contiguous();
  const at::Tensor lam = lam_in.to(acc_dtype).contiguous();
  const int64_t lam_stride = lam.dim() == 0 ? 0 : 1;
  const double off = label_smoothing / static_cast<double>(K);
  const double on = 1.0 - label_smoothing + off;
  const int64_t total = B * K;
  const int64_t blocks = std::min(ceil_div(total, kThreads), static_cast<int64_t>(sm_count(y.get_device())) * kBlocksPerSm);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc_dtype, "mixup_soft_targets_cuda", [&] {
    mixup_soft_targets_kernel<scalar_t><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
        y.const_data_ptr<int64_t>(), lam.const_data_ptr<scalar_t>(), lam_stride, perm.const_data_ptr<int64_t>(),
        out.mutable_data_ptr<scalar_t>(), B, K, static_cast<scalar_t>(on), static_cast<scalar_t>(off));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ferfast, CUDA, m) { m.impl("mixup_soft_targets", &mixup_soft_targets_cuda); }

}  // namespace ferfast
