// random_masking on the CPU: per row, sort (order key, index) pairs; unique keys make the
// result identical to a stable argsort on every backend.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "ops/cpu/cpu_helpers.h"
#include "ops/random_masking.h"

namespace ferfast {
namespace {

template <typename scalar_t>
uint64_t order_key(scalar_t v) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return double_order_key(v);
  } else {
    return float_order_key(static_cast<float>(v));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> random_masking_cpu(const at::Tensor& noise_in, double mask_ratio) {
  const int64_t K = check_random_masking(noise_in, mask_ratio);
  const at::Tensor noise = noise_in.contiguous();
  const int64_t B = noise.size(0), L = noise.size(1);
  at::Tensor ids_keep = at::empty({B, K}, noise.options().dtype(at::kLong));
  at::Tensor mask = at::empty({B, L}, noise.options());
  at::Tensor ids_restore = at::empty({B, L}, noise.options().dtype(at::kLong));
  FERFAST_DISPATCH_FLOATING(noise.scalar_type(), "random_masking_cpu", [&] {
    const scalar_t* noise_p = noise.const_data_ptr<scalar_t>();
    int64_t* keep_p = ids_keep.mutable_data_ptr<int64_t>();
    scalar_t* mask_p = mask.mutable_data_ptr<scalar_t>();
    int64_t* restore_p = ids_restore.mutable_data_ptr<int64_t>();
    at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
      std::vector<std::pair<uint64_t, int64_t>> order(L);
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* row = noise_p + b * L;
        for (int64_t i = 0; i < L; ++i) order[i] = {order_key(row[i]), i};
        std::sort(order.begin(), order.end());
        for (int64_t r = 0; r < L; ++r) {
          const int64_t i = order[r].second;
          restore_p[b * L + i] = r;
          mask_p[b * L + i] = static_cast<scalar_t>(r < K ? 0 : 1);
          if (r < K) keep_p[b * K + r] = i;
        }
      }
    });
  });
  return {ids_keep, mask, ids_restore};
}

}  // namespace

TORCH_LIBRARY_IMPL(ferfast, CPU, m) { m.impl("random_masking", &random_masking_cpu); }

}  // namespace ferfast
