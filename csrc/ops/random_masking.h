// random_masking(noise[B,L], mask_ratio) -> ids_keep[B,K], mask[B,L], ids_restore[B,L]
#pragma once
#include "ops/common.h"

namespace ferfast {

// Validates the arguments and returns K, the number of kept patches per row.
inline int64_t check_random_masking(const at::Tensor& noise, double mask_ratio) {
  check_dim(noise, 2, "noise");
  check_floating(noise, "noise");
  TORCH_CHECK_VALUE(mask_ratio >= 0.0 && mask_ratio < 1.0, "mask_ratio must be in [0, 1), got ", mask_ratio);
  TORCH_CHECK(noise.size(1) < (int64_t(1) << 31), "noise has too many patches per row: ", noise.size(1));
  return num_kept(noise.size(1), mask_ratio);
}

}  // namespace ferfast
