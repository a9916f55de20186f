// face_mixup(x[B,...], lam[] or [B], perm[B], with_originals) -> mixed [B,...] or [x; mixed] [2B,...]
// face_mixup_out(x, lam, perm, out[B,...] or [2B,...]): the same, written into out.
// mixed[i] = lam[i] * x[i] + (1 - lam[i]) * x[perm[i]], in float32 (float64 for float64 x), stored in x's dtype.
#pragma once
#include "ops/common.h"

namespace ferfast {

inline void check_lam(const at::Tensor& lam, int64_t batch, const at::Tensor& ref, const char* ref_name) {
  check_floating(lam, "lam");
  TORCH_CHECK_VALUE(lam.dim() == 0 || (lam.dim() == 1 && lam.size(0) == batch), "lam must be a scalar or have shape [",
              batch, "], got ", lam.sizes());
  check_same_device(lam, "lam", ref, ref_name);
}

inline void check_face_mixup(const at::Tensor& x, const at::Tensor& lam, const at::Tensor& perm) {
  check_floating(x, "x");
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have a batch dimension, got a scalar");
  const int64_t B = x.size(0);
  check_lam(lam, B, x, "x");
  check_long(perm, "perm");
  TORCH_CHECK_VALUE(perm.dim() == 1 && perm.size(0) == B, "perm must have shape [", B, "], got ", perm.sizes());
  check_same_device(perm, "perm", x, "x");
}

// out must be [B,...] (mixed images only) or [2B,...] (originals, then mixed), contiguous, x's dtype and device.
// Returns whether out holds the originals.
inline bool check_face_mixup_out(const at::Tensor& x, const at::Tensor& out) {
  check_same_device(out, "out", x, "x");
  TORCH_CHECK_TYPE(out.scalar_type() == x.scalar_type(), "out must have x's dtype ", x.scalar_type(), ", got ",
              out.scalar_type());
  TORCH_CHECK_VALUE(out.is_contiguous(), "out must be contiguous");
  TORCH_CHECK_VALUE(out.dim() == x.dim() && out.sizes().slice(1) == x.sizes().slice(1) &&
                  (out.size(0) == x.size(0) || out.size(0) == 2 * x.size(0)),
              "out must have shape [B, ...] or [2B, ...] for x of shape ", x.sizes(), ", got ", out.sizes());
  const bool originals = out.size(0) == 2 * x.size(0) && x.size(0) > 0;
  // out must not overlap x: the op reads x[perm[i]] after writing row i.
  const auto* o = static_cast<const char*>(out.data_ptr());
  const auto* xb = static_cast<const char*>(x.data_ptr());
  const int64_t ob = out.numel() * out.element_size(), xbytes = x.numel() * x.element_size();
  TORCH_CHECK_VALUE(ob == 0 || xbytes == 0 || o + ob <= xb || xb + xbytes <= o, "out must not overlap x");
  return originals;
}

}  // namespace ferfast
