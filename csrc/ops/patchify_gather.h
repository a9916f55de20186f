// patchify_gather(imgs[B,C,H,W], ids_keep[B,K], p) -> [B,K,p*p*C] (nhwpqc order)
// _patchify_gather_backward(grad[B,K,p*p*C], ids_keep, p, C, H, W) -> [B,C,H,W]
#pragma once
#include "ops/common.h"

namespace ferfast {

inline void check_patchify_gather(const at::Tensor& imgs, const at::Tensor& ids_keep, int64_t patch_size) {
  check_patch_grid(imgs, patch_size);
  check_dim(ids_keep, 2, "ids_keep");
  check_long(ids_keep, "ids_keep");
  check_same_device(imgs, "imgs", ids_keep, "ids_keep");
  TORCH_CHECK_VALUE(ids_keep.size(0) == imgs.size(0), "ids_keep batch size ", ids_keep.size(0),
              " does not match imgs batch size ", imgs.size(0));
}

inline void check_patchify_gather_backward(const at::Tensor& grad, const at::Tensor& ids_keep, int64_t patch_size,
                                           int64_t channels, int64_t height, int64_t width) {
  check_dim(grad, 3, "grad");
  check_floating(grad, "grad");
  check_dim(ids_keep, 2, "ids_keep");
  check_long(ids_keep, "ids_keep");
  check_same_device(grad, "grad", ids_keep, "ids_keep");
  TORCH_CHECK_VALUE(patch_size > 0 && height % patch_size == 0 && width % patch_size == 0,
              "height and width must be divisible by patch_size");
  TORCH_CHECK_VALUE(grad.size(0) == ids_keep.size(0) && grad.size(1) == ids_keep.size(1) &&
                  grad.size(2) == patch_size * patch_size * channels,
              "grad shape ", grad.sizes(), " does not match ids_keep ", ids_keep.sizes(), " and patch dim ",
              patch_size * patch_size * channels);
}

}  // namespace ferfast
