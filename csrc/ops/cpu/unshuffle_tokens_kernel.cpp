// unshuffle_tokens on the CPU: one row copy per output token. The backward scatters rows back
// per image (deterministic) and reduces the mask-token gradient in fp32 per image, then over
// the batch in a fixed order.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "ops/cpu/cpu_helpers.h"
#include "ops/unshuffle_tokens.h"

namespace ferfast {
namespace {

at::Tensor unshuffle_tokens_cpu(const at::Tensor& x_in, const at::Tensor& mask_token_in,
                                const at::Tensor& ids_in, int64_t num_prefix) {
  check_unshuffle_tokens(x_in, mask_token_in, ids_in, num_prefix);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor token = mask_token_in.reshape({-1}).to(x.scalar_type()).contiguous();
  const at::Tensor ids = ids_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2), L = ids.size(1), K = N - num_prefix;
  at::Tensor out = at::empty({B, num_prefix + L, D}, x.options());
  FERFAST_DISPATCH_FLOATING(x.scalar_type(), "unshuffle_tokens_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* tp = token.const_data_ptr<scalar_t>();
    const int64_t* ip = ids.const_data_ptr<int64_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int64_t rows = num_prefix + L;
    at::parallel_for(0, B * rows, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / rows, t = r % rows;
        const scalar_t* src;
        if (t < num_prefix) {
          src = xp + (b * N + t) * D;
        } else {
          const int64_t j = ip[b * L + (t - num_prefix)];
          TORCH_CHECK_VALUE(j >= 0 && j < L, "ids_restore[", b, ", ", t - num_prefix, "] = ", j, " is outside [0, ", L,
                      ")");
          src = j < K ? xp + (b * N + num_prefix + j) * D : tp;
        }
        std::memcpy(op + r * D, src, D * sizeof(scalar_t));
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> unshuffle_tokens_backward_cpu(const at::Tensor& grad_in, const at::Tensor& ids_in,
                                                                 int64_t num_prefix, int64_t K) {
  check_unshuffle_tokens_backward(grad_in, ids_in, num_prefix, K);
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor ids = ids_in.contiguous();
  const int64_t B = grad.size(0), D = grad.size(2), L = ids.size(1), N = num_prefix + K, rows = num_prefix + L;
  at::Tensor grad_x = at::zeros({B, N, D}, grad.options());
  at::Tensor grad_token =
      at::zeros({D}, grad.options().dtype(grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  FERFAST_DISPATCH_FLOATING(grad.scalar_type(), "unshuffle_tokens_backward_cpu", [&] {
    using acc_t = cpu::acc_type_t<scalar_t>;
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const int64_t* ip = ids.const_data_ptr<int64_t>();
    scalar_t* gx = grad_x.mutable_data_ptr<scalar_t>();
    std::vector<acc_t> partial(B * D, acc_t(0));
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        std::memcpy(gx + b * N * D, gp + b * rows * D, num_prefix * D * sizeof(scalar_t));
        acc_t* acc = partial.data() + b * D;
        for (int64_t l = 0; l < L; ++l) {
          const int64_t j = ip[b * L + l];
          TORCH_CHECK_VALUE(j >= 0 && j < L, "ids_restore[", b, ", ", l, "] = ", j, " is outside [0, ", L, ")");
          const scalar_t* src = gp + (b * rows + num_prefix + l) * D;
          if (j < K) {
            scalar_t* dst = gx + (b * N + num_prefix + j) * D;
            for (int64_t d = 0; d < D; ++d)
              dst[d] = static_cast<scalar_t>(static_cast<acc_t>(dst[d]) + static_cast<acc_t>(src[d]));
          } else {
            for (int64_t d = 0; d < D; ++d) acc[d] += static_cast<acc_t>(src[d]);
          }
        }
      }
    });
    acc_t* tp = grad_token.mutable_data_ptr<acc_t>();
    for (int64_t d = 0; d < D; ++d) {
      acc_t s = 0;
      for (int64_t b = 0; b < B; ++b) s += partial[b * D + d];
      tp[d] = s;
    }
  });
  return {grad_x, grad_token};
}

}  // namespace

TORCH_LIBRARY_IMPL(ferfast, CPU, m) {
  m.impl("unshuffle_tokens", &unshuffle_tokens_cpu);
  m.impl("_unshuffle_tokens_backward", &unshuffle_tokens_backward_cpu);
}

}  // namespace ferfast
