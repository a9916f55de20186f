// masked_patch_mse on the CPU: MAE's forward_loss and its gradient in one pass.
//
// Work is split into strips of patches (one image, one patch row). For each masked patch the
// target is gathered from NCHW into nhwpqc order in a small L1-resident buffer (it is never
// materialised in memory), normalised when norm_pix_loss is set (mean and unbiased variance),
// and compared with pred; the squared error is summed and d loss / d pred is written once.
// Unmasked patches read nothing and get zero gradient. Per-strip partial losses are summed in a
// fixed order, so the result does not depend on the number of threads.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "ops/cpu/cpu_helpers.h"
#include "ops/masked_patch_mse.h"

namespace ferfast {
namespace {

template <typename img_t, typename pred_t, typename acc_t>
void masked_patch_mse_strips(const img_t* __restrict imgs, const pred_t* __restrict pred, const acc_t* __restrict mask,
                             pred_t* __restrict grad, int64_t B, int64_t C, int64_t H, int64_t W, int64_t p,
                             bool norm_pix, acc_t denom, double* strip_loss) {
  const int64_t gh = H / p, gw = W / p, L = gh * gw, P = p * p * C;
  at::parallel_for(0, B * gh, 1, [&](int64_t s0, int64_t s1) {
    std::vector<acc_t> buffer(P);
    acc_t* __restrict t = buffer.data();
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t b = s / gh, lh = s % gh;
      double loss = 0.0;
      for (int64_t lw = 0; lw < gw; ++lw) {
        const int64_t idx = b * L + lh * gw + lw;
        const acc_t w = mask[idx];
        pred_t* __restrict g = grad ? grad + idx * P : nullptr;
        if (w == acc_t(0)) {
          if (g) std::memset(static_cast<void*>(g), 0, P * sizeof(pred_t));
          continue;
        }
        // Gather the target patch: t[(i*p + j)*C + c] = imgs[b, c, lh*p + i, lw*p + j].
        for (int64_t c = 0; c < C; ++c) {
          const img_t* plane = imgs + ((b * C + c) * H + lh * p) * W + lw * p;
          for (int64_t i = 0; i < p; ++i) {
            const img_t* row = plane + i * W;
            acc_t* trow = t + i * p * C + c;
            for (int64_t j = 0; j < p; ++j) trow[j * C] = static_cast<acc_t>(row[j]);
          }
        }
        acc_t mean = 0, inv_std = 1;
        if (norm_pix) {
          acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
          for (int64_t e = 0; e < P; ++e) sum += t[e];
          mean = sum / static_cast<acc_t>(P);
          acc_t ss = 0;
#pragma omp simd reduction(+ : ss)
          for (int64_t e = 0; e < P; ++e) ss += (t[e] - mean) * (t[e] - mean);
          const acc_t var = ss / static_cast<acc_t>(P - 1);  // unbiased, as torch.var
          inv_std = acc_t(1) / std::sqrt(var + static_cast<acc_t>(kNormPixEps));
        }
        const pred_t* __restrict pr = pred + idx * P;
        acc_t sq = 0;
        if (g) {
          const acc_t coef = acc_t(2) * w / (static_cast<acc_t>(P) * denom);
#pragma omp simd reduction(+ : sq)
          for (int64_t e = 0; e < P; ++e) {
            const acc_t d = static_cast<acc_t>(pr[e]) - (t[e] - mean) * inv_std;
            sq += d * d;
            g[e] = static_cast<pred_t>(d * coef);
          }
        } else {
#pragma omp simd reduction(+ : sq)
          for (int64_t e = 0; e < P; ++e) {
            const acc_t d = static_cast<acc_t>(pr[e]) - (t[e] - mean) * inv_std;
            sq += d * d;
          }
        }
        loss += static_cast<double>(w) * static_cast<double>(sq) / static_cast<double>(P);
      }
      strip_loss[s] = loss;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> masked_patch_mse_cpu(const at::Tensor& imgs_in, const at::Tensor& pred_in,
                                                        const at::Tensor& mask_in, int64_t p, bool norm_pix,
                                                        bool compute_grad) {
  check_masked_patch_mse(imgs_in, pred_in, mask_in, p, norm_pix);
  const at::Tensor imgs = imgs_in.contiguous();
  const at::Tensor pred = pred_in.contiguous();
  const bool wide = imgs.scalar_type() == at::kDouble || pred.scalar_type() == at::kDouble;
  const at::Tensor mask = mask_in.to(wide ? at::kDouble : at::kFloat).contiguous();
  const int64_t B = imgs.size(0), C = imgs.size(1), H = imgs.size(2), W = imgs.size(3);
  at::Tensor grad = compute_grad ? at::empty_like(pred) : at::empty({0}, pred.options());
  std::vector<double> strip_loss(B * (H / p), 0.0);
  double denom = 0.0;
  FERFAST_DISPATCH_FLOATING(pred.scalar_type(), "masked_patch_mse_cpu", [&] {
    using pred_t = scalar_t;
    FERFAST_DISPATCH_FLOATING(imgs.scalar_type(), "masked_patch_mse_cpu", [&] {
      using img_t = scalar_t;
      using acc_t = cpu::acc_type_t<img_t, pred_t>;
      const acc_t* m = mask.const_data_ptr<acc_t>();
      for (int64_t i = 0; i < mask.numel(); ++i) denom += static_cast<double>(m[i]);
      const double safe_denom = denom == 0.0 ? 1.0 : denom;  // MAE gives 0/0 = NaN here; ferfast gives 0
      masked_patch_mse_strips<img_t, pred_t, acc_t>(
          imgs.const_data_ptr<img_t>(), pred.const_data_ptr<pred_t>(), m,
          compute_grad ? grad.mutable_data_ptr<pred_t>() : nullptr, B, C, H, W, p, norm_pix,
          static_cast<acc_t>(safe_denom), strip_loss.data());
    });
  });
  double total = 0.0;
  for (double v : strip_loss) total += v;
  at::Tensor loss = at::empty({}, pred.options().dtype(wide ? at::kDouble : at::kFloat));
  loss.fill_(total / (denom == 0.0 ? 1.0 : denom));
  return {loss, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(ferfast, CPU, m) { m.impl("masked_patch_mse", &masked_patch_mse_cpu); }

}  // namespace ferfast
