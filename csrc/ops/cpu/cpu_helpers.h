// Helpers shared by the CPU kernels.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace ferfast::cpu {

// fp64 inputs compute in fp64 (so gradcheck is meaningful); everything else in fp32.
template <typename... Ts>
using acc_type_t = std::conditional_t<(std::is_same_v<Ts, double> || ...), double, float>;

#define FERFAST_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// Value checks the CPU kernels make as they read their inputs (free here; on a GPU they would
// synchronise). TORCH_CHECK_VALUE raises Python's ValueError, like ferfast's Python-side checks.

// Every entry of an int64 vector in [0, upper).
inline void check_index_values(const int64_t* v, int64_t n, int64_t upper, const char* name, const char* what) {
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_VALUE(v[i] >= 0 && v[i] < upper, name, " must hold ", what, " in [0, ", upper, "), got ", name, "[",
                      i, "] = ", v[i]);
}

// Mixup weights in [0, 1] (NaN fails).
template <typename acc_t>
inline void check_unit_values(const acc_t* v, int64_t n, const char* name) {
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_VALUE(v[i] >= acc_t(0) && v[i] <= acc_t(1), name, " must be in [0, 1], got ", static_cast<double>(v[i]));
}

// [n, 4] xyxy boxes: finite, with x2 >= x1 and y2 >= y1.
template <typename scalar_t>
inline void check_box_values(const scalar_t* b, int64_t n, const char* name) {
  for (int64_t i = 0; i < n; ++i) {
    const double x1 = static_cast<double>(b[4 * i]), y1 = static_cast<double>(b[4 * i + 1]);
    const double x2 = static_cast<double>(b[4 * i + 2]), y2 = static_cast<double>(b[4 * i + 3]);
    TORCH_CHECK_VALUE(std::isfinite(x1) && std::isfinite(y1) && std::isfinite(x2) && std::isfinite(y2), name,
                      " must be finite; replace unknown faces with a fallback box first (row ", i, " is [", x1, ", ",
                      y1, ", ", x2, ", ", y2, "])");
    TORCH_CHECK_VALUE(x2 >= x1 && y2 >= y1, name, " must be xyxy with x2 >= x1 and y2 >= y1; row ", i, " is [", x1,
                      ", ", y1, ", ", x2, ", ", y2, "]");
  }
}

}  // namespace ferfast::cpu
