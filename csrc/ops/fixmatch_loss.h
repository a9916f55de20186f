// fixmatch_loss(logits_weak[B,K], logits_strong[B,K], threshold, compute_grad)
//   -> (loss, mask_rate, pseudo_labels[B] int64, mask[B], grad_strong)
// pseudo_label = first argmax of logits_weak; mask = (max softmax(weak) >= threshold);
// loss = sum_i mask_i CE(strong_i, pseudo_label_i) / B. loss, mask_rate and mask are float32
// (float64 for float64 logits); grad_strong (empty unless compute_grad) is B * d loss / d logits_strong,
// float32 (float64 for float64 logits): backward applies grad_loss / B and rounds to logits_strong's dtype.
#pragma once
#include "ops/common.h"

namespace ferfast {

inline void check_fixmatch_loss(const at::Tensor& logits_weak, const at::Tensor& logits_strong, double threshold) {
  check_floating(logits_weak, "logits_weak");
  check_floating(logits_strong, "logits_strong");
  check_dim(logits_weak, 2, "logits_weak");
  TORCH_CHECK_VALUE(logits_weak.size(0) > 0 && logits_weak.size(1) > 0, "logits_weak must be a non-empty [B, K], got ",
              logits_weak.sizes());
  TORCH_CHECK_VALUE(logits_strong.sizes() == logits_weak.sizes(), "logits_strong must have logits_weak's shape ",
              logits_weak.sizes(), ", got ", logits_strong.sizes());
  check_same_device(logits_strong, "logits_strong", logits_weak, "logits_weak");
  TORCH_CHECK_VALUE(threshold >= 0.0 && threshold <= 1.0, "threshold must be in [0, 1], got ", threshold);
}

}  // namespace ferfast
