// Helpers shared by the CPU kernels.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

namespace ferfast::cpu {

// fp64 inputs compute in fp64 (so gradcheck is meaningful); everything else in fp32.
template <typename... Ts>
using acc_type_t = std::conditional_t<(std::is_same_v<Ts, double> || ...), double, float>;

#define FERFAST_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

}  // namespace ferfast::cpu
