// box_iou and paired_box_iou on CUDA: one thread per output IoU (grid-stride loop, int64 indices).
//
// Each box is read as float32 (float64 for float64 boxes) and its area is computed in that dtype,
// as box_area_ref does before the two operands meet; the IoU itself is computed in the promoted
// type (float64 if either box tensor is float64). All arithmetic goes through the explicitly
// rounded intrinsics (__fmul_rn, __fadd_rn, ...), so nvcc never contracts a multiply-add into an
// FMA and every step rounds like the reference's separate torch ops. An empty (or NaN) union gives
// 0; torch.maximum/minimum/clamp's NaN propagation is kept.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "ops/box_iou.h"
#include "ops/cuda/cuda_helpers.cuh"

namespace ferfast {
namespace {

using namespace ferfast::cuda;

constexpr int kThreads = 256;
constexpr int64_t kBlocksPerSm = 32;  // grid cap: 4 waves of 8 resident 256-thread blocks

// torch.minimum: NaN if either operand is NaN (max_nan, in cuda_helpers.cuh, is torch.maximum).
template <typename T>
__device__ __forceinline__ T min_nan(T a, T b) {
  return (a < b || a != a) ? a : b;
}
// clamp(min=0), NaN stays NaN.
template <typename T>
__device__ __forceinline__ T clamp_zero(T a) {
  return a < T(0) ? T(0) : a;
}

// A box in its measuring dtype (float32, float64 for float64 boxes) and its area in that dtype.
template <typename box_t>
struct Box {
  using m_t = acc_type_t<box_t>;
  m_t x1, y1, x2, y2, area;

  __device__ __forceinline__ explicit Box(const box_t* __restrict__ p) {
    x1 = static_cast<m_t>(p[0]);
    y1 = static_cast<m_t>(p[1]);
    x2 = static_cast<m_t>(p[2]);
    y2 = static_cast<m_t>(p[3]);
    area = mul_rn(sub_rn(x2, x1), sub_rn(y2, y1));
  }
};

template <typename out_t, typename a_t, typename b_t>
__device__ __forceinline__ out_t box_pair_iou(const Box<a_t>& a, const Box<b_t>& b) {
  auto c = [](auto v) { return static_cast<out_t>(v); };
  const out_t w = clamp_zero(sub_rn(min_nan(c(a.x2), c(b.x2)), max_nan(c(a.x1), c(b.x1))));
  const out_t h = clamp_zero(sub_rn(min_nan(c(a.y2), c(b.y2)), max_nan(c(a.y1), c(b.y1))));
  const out_t inter = mul_rn(w, h);
  const out_t uni = sub_rn(add_rn(c(a.area), c(b.area)), inter);
  return uni > out_t(0) ? inter / uni : out_t(0);
}

template <typename a_t, typename b_t, typename out_t>
__global__ void __launch_bounds__(kThreads)
    box_iou_kernel(const a_t* __restrict__ boxes1, const b_t* __restrict__ boxes2, out_t* __restrict__ out,
                   int64_t M, int64_t total) {
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / M, j = idx - i * M;
    const Box<a_t> a(boxes1 + 4 * i);
    const Box<b_t> b(boxes2 + 4 * j);
    out[idx] = box_pair_iou<out_t>(a, b);
  }
}

template <typename box_t, typename out_t>
__global__ void __launch_bounds__(kThreads)
    paired_box_iou_kernel(const box_t* __restrict__ boxes, const int64_t* __restrict__ perm, out_t* __restrict__ out,
                          int64_t B) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < B;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t p = perm[i];
    CUDA_KERNEL_ASSERT(p >= 0 && p < B);
    if (p < 0 || p >= B) p = i;  // unreachable after the assert; keeps the read in bounds
    const Box<box_t> a(boxes + 4 * i);
    const Box<box_t> b(boxes + 4 * p);
    out[i] = box_pair_iou<out_t>(a, b);
  }
}

unsigned int grid_for(int64_t n, c10::DeviceIndex device) {
  return static_cast<unsigned int>(std::min(ceil_div(n, kThreads), sm_count(device) * kBlocksPerSm));
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in) {
  check_box_iou(boxes1_in, boxes2_in);
  c10::cuda::CUDAGuard guard(boxes1_in.device());
  const at::Tensor boxes1 = boxes1_in.contiguous();
  const at::Tensor boxes2 = boxes2_in.contiguous();
  // As box_iou_ref: float32 boxes meet float64 boxes in float64.
  const bool wide = boxes1.scalar_type() == at::kDouble || boxes2.scalar_type() == at::kDouble;
  const int64_t N = boxes1.size(0), M = boxes2.size(0);
  at::Tensor out = at::empty({N, M}, boxes1.options().dtype(wide ? at::kDouble : at::kFloat));
  const int64_t total = N * M;
  if (total == 0) return out;
  const unsigned int blocks = grid_for(total, boxes1.get_device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FERFAST_DISPATCH_FLOATING(boxes1.scalar_type(), "box_iou_cuda", [&] {
    using a_t = scalar_t;
    FERFAST_DISPATCH_FLOATING(boxes2.scalar_type(), "box_iou_cuda", [&] {
      using b_t = scalar_t;
      using out_t = acc_type_t<a_t, b_t>;
      box_iou_kernel<a_t, b_t, out_t><<<blocks, kThreads, 0, stream>>>(
          boxes1.const_data_ptr<a_t>(), boxes2.const_data_ptr<b_t>(), out.mutable_data_ptr<out_t>(), M, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor paired_box_iou_cuda(const at::Tensor& boxes_in, const at::Tensor& perm_in) {
  check_paired_box_iou(boxes_in, perm_in);
  c10::cuda::CUDAGuard guard(boxes_in.device());
  const at::Tensor boxes = boxes_in.contiguous();
  const at::Tensor perm = perm_in.contiguous();
  const int64_t B = boxes.size(0);
  at::Tensor out = at::empty({B}, boxes.options().dtype(box_acc_type(boxes)));
  if (B == 0) return out;
  const unsigned int blocks = grid_for(B, boxes.get_device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FERFAST_DISPATCH_FLOATING(boxes.scalar_type(), "paired_box_iou_cuda", [&] {
    using out_t = acc_type_t<scalar_t>;
    paired_box_iou_kernel<scalar_t, out_t><<<blocks, kThreads, 0, stream>>>(
        boxes.const_data_ptr<scalar_t>(), perm.const_data_ptr<int64_t>(), out.mutable_data_ptr<out_t>(), B);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ferfast, CUDA, m) {
  m.impl("box_iou", &box_iou_cuda);
  m.impl("paired_box_iou", &paired_box_iou_cuda);
}

}  // namespace ferfast
