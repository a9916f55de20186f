// facemix_loss(logits_real[B,K], logits_mixed[B,K], y[B], y_soft[B,K], iou[B], perm[B], compute_grad)
//   -> (loss, grad_real, grad_mixed)
// loss = [sum_i CE_soft(mixed_i, y_soft_i) + sum_i (1 - iou_i) (CE(real_i, y_i) + CE(real_perm(i), y_perm(i)))] / B
//      = sum_j [CE_soft(mixed_j) + w_j CE(real_j)] / B,  w_j = (1 - iou_j) + sum_{i: perm(i) = j} (1 - iou_i).
// loss is float32 (float64 for float64 logits); the gradients (empty unless compute_grad) are B * d loss / d logits,
// float32 (float64 for float64 logits): backward applies grad_loss / B and rounds to the logits' dtype.
#pragma once
#include "ops/common.h"

namespace ferfast {

inline void check_facemix_loss(const at::Tensor& logits_real, const at::Tensor& logits_mixed, const at::Tensor& y,
                               const at::Tensor& y_soft, const at::Tensor& iou, const at::Tensor& perm) {
  check_floating(logits_real, "logits_real");
  check_floating(logits_mixed, "logits_mixed");
  check_dim(logits_real, 2, "logits_real");
  const int64_t B = logits_real.size(0), K = logits_real.size(1);
  TORCH_CHECK_VALUE(B > 0 && K > 0, "logits_real must be a non-empty [B, K], got ", logits_real.sizes());
  TORCH_CHECK_TYPE(logits_mixed.scalar_type() == logits_real.scalar_type(), "logits_mixed must have logits_real's dtype ",
              logits_real.scalar_type(), ", got ", logits_mixed.scalar_type());
  TORCH_CHECK_VALUE(logits_mixed.sizes() == logits_real.sizes(), "logits_mixed must have logits_real's shape ",
              logits_real.sizes(), ", got ", logits_mixed.sizes());
  check_long(y, "y");
  TORCH_CHECK_VALUE(y.dim() == 1 && y.size(0) == B, "y must have shape [", B, "], got ", y.sizes());
  check_floating(y_soft, "y_soft");
  TORCH_CHECK_VALUE(y_soft.sizes() == logits_real.sizes(), "y_soft must have shape ", logits_real.sizes(), ", got ",
              y_soft.sizes());
  check_floating(iou, "iou");
  TORCH_CHECK_VALUE(iou.dim() == 1 && iou.size(0) == B, "iou must have shape [", B, "], got ", iou.sizes());
  check_long(perm, "perm");
  TORCH_CHECK_VALUE(perm.dim() == 1 && perm.size(0) == B, "perm must have shape [", B, "], got ", perm.sizes());
  check_same_device(logits_mixed, "logits_mixed", logits_real, "logits_real");
  check_same_device(y, "y", logits_real, "logits_real");
  check_same_device(y_soft, "y_soft", logits_real, "logits_real");
  check_same_device(iou, "iou", logits_real, "logits_real");
  check_same_device(perm, "perm", logits_real, "logits_real");
}

}  // namespace ferfast
