// unshuffle_tokens(x[B,P+K,D], mask_token[D], ids_restore[B,L], P) -> [B,P+L,D]
// _unshuffle_tokens_backward(grad[B,P+L,D], ids_restore, P, K) -> (grad_x[B,P+K,D], grad_mask_token[D] fp32, fp64 for fp64 grad)
#pragma once
#include "ops/common.h"

namespace ferfast {

inline void check_unshuffle_tokens(const at::Tensor& x, const at::Tensor& mask_token, const at::Tensor& ids_restore,
                                   int64_t num_prefix_tokens) {
  check_dim(x, 3, "x");
  check_floating(x, "x");
  check_floating(mask_token, "mask_token");
  check_dim(ids_restore, 2, "ids_restore");
  check_long(ids_restore, "ids_restore");
  check_same_device(x, "x", ids_restore, "ids_restore");
  check_same_device(x, "x", mask_token, "mask_token");
  TORCH_CHECK_VALUE(mask_token.numel() == x.size(2), "mask_token must have D=", x.size(2), " elements, got shape ",
              mask_token.sizes());
  TORCH_CHECK_VALUE(ids_restore.size(0) == x.size(0), "ids_restore batch size ", ids_restore.size(0),
              " does not match x batch size ", x.size(0));
  TORCH_CHECK_VALUE(num_prefix_tokens >= 0 && num_prefix_tokens <= x.size(1),
              "num_prefix_tokens must be in [0, x.size(1)], got ", num_prefix_tokens);
  TORCH_CHECK_VALUE(x.size(1) - num_prefix_tokens <= ids_restore.size(1), "x has ", x.size(1) - num_prefix_tokens,
              " visible tokens, more than ids_restore's ", ids_restore.size(1), " patches");
}

inline void check_unshuffle_tokens_backward(const at::Tensor& grad, const at::Tensor& ids_restore,
                                            int64_t num_prefix_tokens, int64_t num_visible) {
  check_dim(grad, 3, "grad");
  check_floating(grad, "grad");
  check_dim(ids_restore, 2, "ids_restore");
  check_long(ids_restore, "ids_restore");
  check_same_device(grad, "grad", ids_restore, "ids_restore");
  TORCH_CHECK_VALUE(grad.size(0) == ids_restore.size(0) && grad.size(1) == num_prefix_tokens + ids_restore.size(1),
              "grad shape ", grad.sizes(), " does not match ids_restore ", ids_restore.sizes(),
              " with num_prefix_tokens=", num_prefix_tokens);
  TORCH_CHECK_VALUE(num_visible >= 0 && num_visible <= ids_restore.size(1), "num_visible must be in [0, L], got ",
              num_visible);
  TORCH_CHECK_VALUE(num_prefix_tokens >= 0, "num_prefix_tokens must be >= 0");
}

}  // namespace ferfast
