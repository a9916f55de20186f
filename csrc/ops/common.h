// Shared argument checks and helpers for the ferfast kernels (CPU and CUDA).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace ferfast {

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, " must be a floating-point tensor, got ", t.scalar_type());
}

inline void check_long(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, name, " must be an int64 tensor, got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == dim, name, " must have ", dim, " dimensions, got shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  TORCH_CHECK_VALUE(a.device() == b.device(), a_name, " (", a.device(), ") and ", b_name, " (", b.device(),
              ") must be on the same device");
}

// MAE's int(L * (1 - mask_ratio)), in double precision like Python.
inline int64_t num_kept(int64_t num_patches, double mask_ratio) {
  return static_cast<int64_t>(static_cast<double>(num_patches) * (1.0 - mask_ratio));
}

// Checks imgs [B,C,H,W] against a patch size; returns the patch grid (gh, gw).
inline std::pair<int64_t, int64_t> check_patch_grid(const at::Tensor& imgs, int64_t patch_size) {
  check_dim(imgs, 4, "imgs");
  check_floating(imgs, "imgs");
  TORCH_CHECK_VALUE(patch_size > 0, "patch_size must be positive, got ", patch_size);
  TORCH_CHECK_VALUE(imgs.size(2) % patch_size == 0 && imgs.size(3) % patch_size == 0, "imgs height and width (",
              imgs.size(2), ", ", imgs.size(3), ") must be divisible by patch_size ", patch_size);
  return {imgs.size(2) / patch_size, imgs.size(3) / patch_size};
}

// Order-preserving uint32 key of a float (with -0.0 == +0.0): sorting keys sorts values.
inline uint32_t float_order_key(float v) {
  v = v + 0.0f;  // -0.0 -> +0.0
  uint32_t u;
  static_assert(sizeof(u) == sizeof(v));
  __builtin_memcpy(&u, &v, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

}  // namespace ferfast

namespace ferfast {

// Order-preserving uint64 key of a double (with -0.0 == +0.0).
inline uint64_t double_order_key(double v) {
  v = v + 0.0;
  uint64_t u;
  __builtin_memcpy(&u, &v, sizeof(u));
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

}  // namespace ferfast
