// masked_patch_mse(imgs[B,C,H,W], pred[B,L,p*p*C], mask[B,L], p, norm_pix_loss, compute_grad)
//   -> (loss: float32 scalar, grad_pred in pred's dtype (or empty): the UN-normalised gradient
//       mask * (pred - target); d loss / d pred = grad_pred * 2 / (P * max(sum(mask), 1)), a factor
//       that backward applies with grad_loss in fp32, so fp16 gradients neither flush nor overflow)
#pragma once
#include "ops/common.h"

namespace ferfast {

// MAE's (var + 1e-6) ** .5 constant.
constexpr double kNormPixEps = 1e-6;

inline void check_masked_patch_mse(const at::Tensor& imgs, const at::Tensor& pred, const at::Tensor& mask,
                                   int64_t patch_size, bool norm_pix_loss) {
  auto [gh, gw] = check_patch_grid(imgs, patch_size);
  check_dim(pred, 3, "pred");
  check_floating(pred, "pred");
  check_dim(mask, 2, "mask");
  check_floating(mask, "mask");
  check_same_device(imgs, "imgs", pred, "pred");
  check_same_device(imgs, "imgs", mask, "mask");
  const int64_t B = imgs.size(0), C = imgs.size(1), L = gh * gw, P = patch_size * patch_size * C;
  TORCH_CHECK_VALUE(pred.size(0) == B && pred.size(1) == L && pred.size(2) == P, "pred must have shape [", B, ", ", L,
              ", ", P, "] for imgs ", imgs.sizes(), " and patch_size ", patch_size, ", got ", pred.sizes());
  TORCH_CHECK_VALUE(mask.size(0) == B && mask.size(1) == L, "mask must have shape [", B, ", ", L, "], got ",
              mask.sizes());
  TORCH_CHECK_VALUE(!norm_pix_loss || P > 1, "norm_pix_loss needs at least 2 values per patch (unbiased variance)");
}

}  // namespace ferfast
