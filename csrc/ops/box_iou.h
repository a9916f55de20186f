// box_iou(boxes1[N,4], boxes2[M,4]) -> iou[N,M];  paired_box_iou(boxes[B,4], perm[B]) -> iou[B]
// xyxy boxes; IoU in float32 (float64 for float64 boxes); an empty union gives 0, never NaN.
#pragma once
#include "ops/common.h"

namespace ferfast {

inline void check_boxes(const at::Tensor& boxes, const char* name) {
  check_floating(boxes, name);
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, name, " must have shape [N, 4] (xyxy), got ", boxes.sizes());
}

inline void check_box_iou(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_boxes(boxes1, "boxes1");
  check_boxes(boxes2, "boxes2");
  check_same_device(boxes1, "boxes1", boxes2, "boxes2");
}

// perm[B] int64 on x's device: the Mixup partner of each sample.
inline void check_perm(const at::Tensor& perm, int64_t batch, const at::Tensor& ref, const char* ref_name) {
  check_long(perm, "perm");
  TORCH_CHECK_VALUE(perm.dim() == 1 && perm.size(0) == batch, "perm must have shape [", batch, "], got ", perm.sizes());
  check_same_device(perm, "perm", ref, ref_name);
}

inline void check_paired_box_iou(const at::Tensor& boxes, const at::Tensor& perm) {
  check_boxes(boxes, "boxes");
  check_perm(perm, boxes.size(0), boxes, "boxes");
}

// The accumulation dtype of the box ops: float64 for float64 boxes, else float32.
inline at::ScalarType box_acc_type(const at::Tensor& boxes) {
  return boxes.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace ferfast
