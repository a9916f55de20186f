// mixup_soft_targets(y[B], num_classes, lam[] or [B], perm[B], label_smoothing) -> [B, K]
// timm's mixup_target with partner perm: lam * onehot_s(y) + (1 - lam) * onehot_s(y[perm]),
// onehot_s = (1 - s + s/K) on the label and s/K elsewhere. float32 (float64 for float64 lam).
#pragma once
#include "ops/face_mixup.h"

namespace ferfast {

inline void check_mixup_soft_targets(const at::Tensor& y, int64_t num_classes, const at::Tensor& lam,
                                     const at::Tensor& perm, double label_smoothing) {
  check_long(y, "y");
  TORCH_CHECK_VALUE(y.dim() == 1, "y must have shape [B] (int64 class labels), got ", y.sizes());
  TORCH_CHECK_VALUE(num_classes > 0, "num_classes must be positive, got ", num_classes);
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0, "label_smoothing must be in [0, 1], got ",
              label_smoothing);
  const int64_t B = y.size(0);
  check_lam(lam, B, y, "y");
  check_long(perm, "perm");
  TORCH_CHECK_VALUE(perm.dim() == 1 && perm.size(0) == B, "perm must have shape [", B, "], got ", perm.sizes());
  check_same_device(perm, "perm", y, "y");
}

}  // namespace ferfast
