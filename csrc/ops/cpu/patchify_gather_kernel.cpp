// patchify_gather on the CPU: copy each kept patch straight from NCHW into nhwpqc order;
// the backward scatters patch gradients back (accumulating, so repeated indices add up).
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "ops/cpu/cpu_helpers.h"
#include "ops/patchify_gather.h"

namespace ferfast {
namespace {

at::Tensor patchify_gather_cpu(const at::Tensor& imgs_in, const at::Tensor& ids_in, int64_t p) {
  check_patchify_gather(imgs_in, ids_in, p);
  const at::Tensor imgs = imgs_in.contiguous();
  const at::Tensor ids = ids_in.contiguous();
  const int64_t B = imgs.size(0), C = imgs.size(1), H = imgs.size(2), W = imgs.size(3);
  const int64_t gw = W / p, L = (H / p) * gw, K = ids.size(1), P = p * p * C;
  at::Tensor out = at::empty({B, K, P}, imgs.options());
  FERFAST_DISPATCH_FLOATING(imgs.scalar_type(), "patchify_gather_cpu", [&] {
    const scalar_t* src = imgs.const_data_ptr<scalar_t>();
    const int64_t* ids_p = ids.const_data_ptr<int64_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * K, 8, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / K, l = ids_p[r];
        TORCH_CHECK_VALUE(l >= 0 && l < L, "ids_keep[", b, ", ", r % K, "] = ", l, " is outside [0, ", L, ")");
        const int64_t y0 = (l / gw) * p, x0 = (l % gw) * p;
        scalar_t* o = dst + r * P;
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* plane = src + ((b * C + c) * H + y0) * W + x0;
          for (int64_t i = 0; i < p; ++i) {
            const scalar_t* row = plane + i * W;
            scalar_t* orow = o + i * p * C + c;
            for (int64_t j = 0; j < p; ++j) orow[j * C] = row[j];
          }
        }
      }
    });
  });
  return out;
}

at::Tensor patchify_gather_backward_cpu(const at::Tensor& grad_in, const at::Tensor& ids_in, int64_t p, int64_t C,
                                        int64_t H, int64_t W) {
  check_patchify_gather_backward(grad_in, ids_in, p, C, H, W);
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor ids = ids_in.contiguous();
  const int64_t B = grad.size(0), K = grad.size(1), P = grad.size(2);
  const int64_t gw = W / p, L = (H / p) * gw;
  at::Tensor out = at::zeros({B, C, H, W}, grad.options());
  FERFAST_DISPATCH_FLOATING(grad.scalar_type(), "patchify_gather_backward_cpu", [&] {
    using acc_t = cpu::acc_type_t<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const int64_t* ids_p = ids.const_data_ptr<int64_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    // One image per task: each image's scatter is sequential, so the result is deterministic.
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t k = 0; k < K; ++k) {
          const int64_t l = ids_p[b * K + k];
          TORCH_CHECK_VALUE(l >= 0 && l < L, "ids_keep[", b, ", ", k, "] = ", l, " is outside [0, ", L, ")");
          const int64_t y0 = (l / gw) * p, x0 = (l % gw) * p;
          const scalar_t* gp = g + (b * K + k) * P;
          for (int64_t c = 0; c < C; ++c) {
            scalar_t* plane = dst + ((b * C + c) * H + y0) * W + x0;
            for (int64_t i = 0; i < p; ++i) {
              scalar_t* row = plane + i * W;
              const scalar_t* grow = gp + i * p * C + c;
              for (int64_t j = 0; j < p; ++j)
                row[j] = static_cast<scalar_t>(static_cast<acc_t>(row[j]) + static_cast<acc_t>(grow[j * C]));
            }
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ferfast, CPU, m) {
  m.impl("patchify_gather", &patchify_gather_cpu);
  m.impl("_patchify_gather_backward", &patchify_gather_backward_cpu);
}

}  // namespace ferfast
