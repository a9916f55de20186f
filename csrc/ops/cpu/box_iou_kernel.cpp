// box_iou / paired_box_iou on the CPU: torchvision's box IoU with an empty-union guard (0, never NaN).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "ops/box_iou.h"
#include "ops/cpu/cpu_helpers.h"

namespace ferfast {
namespace {

template <typename acc_t, typename box_t>
inline acc_t iou_of(const box_t* a, const box_t* b) {
  const acc_t ax1 = a[0], ay1 = a[1], ax2 = a[2], ay2 = a[3];
  const acc_t bx1 = b[0], by1 = b[1], bx2 = b[2], by2 = b[3];
  const acc_t area_a = (ax2 - ax1) * (ay2 - ay1);
  const acc_t area_b = (bx2 - bx1) * (by2 - by1);
  const acc_t w = std::max(std::min(ax2, bx2) - std::max(ax1, bx1), acc_t(0));
  const acc_t h = std::max(std::min(ay2, by2) - std::max(ay1, by1), acc_t(0));
  const acc_t inter = w * h;
  const acc_t uni = area_a + area_b - inter;
  return uni > acc_t(0) ? inter / uni : acc_t(0);
}

at::Tensor box_iou_cpu(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in) {
  check_box_iou(boxes1_in, boxes2_in);
  const at::Tensor boxes1 = boxes1_in.contiguous(), boxes2 = boxes2_in.to(boxes1.scalar_type()).contiguous();
  const int64_t N = boxes1.size(0), M = boxes2.size(0);
  at::Tensor out = at::empty({N, M}, boxes1.options().dtype(box_acc_type(boxes1)));
  if (out.numel() == 0) return out;
  FERFAST_DISPATCH_FLOATING(boxes1.scalar_type(), "box_iou_cpu", [&] {
    using acc_t = cpu::acc_type_t<scalar_t>;
    const scalar_t* a = boxes1.const_data_ptr<scalar_t>();
    const scalar_t* b = boxes2.const_data_ptr<scalar_t>();
    acc_t* o = out.mutable_data_ptr<acc_t>();
    cpu::check_box_values(a, N, "boxes1");
    cpu::check_box_values(b, M, "boxes2");
    at::parallel_for(0, N, std::max<int64_t>(1, 4096 / std::max<int64_t>(M, 1)), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        for (int64_t j = 0; j < M; ++j) o[i * M + j] = iou_of<acc_t>(a + 4 * i, b + 4 * j);
    });
  });
  return out;
}

at::Tensor paired_box_iou_cpu(const at::Tensor& boxes_in, const at::Tensor& perm_in) {
  check_paired_box_iou(boxes_in, perm_in);
  const at::Tensor boxes = boxes_in.contiguous(), perm = perm_in.contiguous();
  const int64_t B = boxes.size(0);
  at::Tensor out = at::empty({B}, boxes.options().dtype(box_acc_type(boxes)));
  const int64_t* p = perm.const_data_ptr<int64_t>();
  cpu::check_index_values(p, B, B, "perm", "partner indices");
  FERFAST_DISPATCH_FLOATING(boxes.scalar_type(), "paired_box_iou_cpu", [&] {
    using acc_t = cpu::acc_type_t<scalar_t>;
    const scalar_t* b = boxes.const_data_ptr<scalar_t>();
    acc_t* o = out.mutable_data_ptr<acc_t>();
    cpu::check_box_values(b, B, "boxes");
    for (int64_t i = 0; i < B; ++i) o[i] = iou_of<acc_t>(b + 4 * i, b + 4 * p[i]);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ferfast, CPU, m) {
  m.impl("box_iou", &box_iou_cpu);
  m.impl("paired_box_iou", &paired_box_iou_cpu);
}

}  // namespace ferfast
