// facemix_loss on the CPU: SSFER's face-IoU Mixup loss and its gradients in one pass over the logits.
//
// sum_i (1 - iou_i) (CE(real_i) + CE(real_perm(i))) is regrouped per row as sum_j w_j CE(real_j) with
// w_j = (1 - iou_j) + sum_{i: perm(i) = j} (1 - iou_i), so every row is independent: one pass computes
// its log-sum-exps, its loss terms and both gradient rows. Row partials are summed in a fixed order.
// The gradient rows are B * d loss / d logits in the accumulation dtype (fp32; [B, K] is small): backward
// applies grad_loss / B in fp32 and rounds once to the logits' dtype (fp16 + GradScaler safe).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_helpers.h"
#include "ops/facemix_loss.h"

namespace ferfast {
namespace {

// Row softmax statistics: max and sum of exp(z - max).
template <typename acc_t, typename scalar_t>
inline void row_stats(const scalar_t* z, int64_t K, acc_t& mx, acc_t& sum) {
  mx = static_cast<acc_t>(z[0]);
  for (int64_t k = 1; k < K; ++k) mx = std::max(mx, static_cast<acc_t>(z[k]));
  sum = 0;
  for (int64_t k = 0; k < K; ++k) sum += std::exp(static_cast<acc_t>(z[k]) - mx);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> facemix_loss_cpu(const at::Tensor& logits_real_in,
                                                                const at::Tensor& logits_mixed_in,
                                                                const at::Tensor& y_in, const at::Tensor& y_soft_in,
                                                                const at::Tensor& iou_in, const at::Tensor& perm_in,
                                                                bool compute_grad) {
  check_facemix_loss(logits_real_in, logits_mixed_in, y_in, y_soft_in, iou_in, perm_in);
  const at::Tensor real = logits_real_in.contiguous(), mixed = logits_mixed_in.contiguous();
  const bool wide = real.scalar_type() == at::kDouble;
  const auto acc = wide ? at::kDouble : at::kFloat;
  const at::Tensor y = y_in.contiguous(), perm = perm_in.contiguous();
  const at::Tensor y_soft = y_soft_in.to(acc).contiguous(), iou = iou_in.to(acc).contiguous();
  const int64_t B = real.size(0), K = real.size(1);
  const int64_t* yp = y.const_data_ptr<int64_t>();
  const int64_t* pp = perm.const_data_ptr<int64_t>();
  cpu::check_index_values(yp, B, K, "y", "class labels");
  cpu::check_index_values(pp, B, B, "perm", "partner indices");
  // [B, K] gradients kept in the accumulation dtype: a softmax of 1e-9 survives, and backward rounds once.
  const auto grad_opts = real.options().dtype(acc);
  at::Tensor grad_real = compute_grad ? at::empty({B, K}, grad_opts) : at::empty({0}, grad_opts);
  at::Tensor grad_mixed = compute_grad ? at::empty({B, K}, grad_opts) : at::empty({0}, grad_opts);
  std::vector<double> partial(B);
  FERFAST_DISPATCH_FLOATING(real.scalar_type(), "facemix_loss_cpu", [&] {
    using acc_t = cpu::acc_type_t<scalar_t>;
    const acc_t* ip = iou.const_data_ptr<acc_t>();
    std::vector<acc_t> w(B);
    for (int64_t j = 0; j < B; ++j) w[j] = acc_t(1) - ip[j];
    for (int64_t i = 0; i < B; ++i) w[pp[i]] += acc_t(1) - ip[i];
    const scalar_t* zr = real.const_data_ptr<scalar_t>();
    const scalar_t* zm = mixed.const_data_ptr<scalar_t>();
    const acc_t* t = y_soft.const_data_ptr<acc_t>();
    acc_t* gr = compute_grad ? grad_real.mutable_data_ptr<acc_t>() : nullptr;
    acc_t* gm = compute_grad ? grad_mixed.mutable_data_ptr<acc_t>() : nullptr;
    at::parallel_for(0, B, std::max<int64_t>(1, 32768 / K), [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        const scalar_t* r = zr + j * K;
        const scalar_t* m = zm + j * K;
        const acc_t* tj = t + j * K;
        acc_t mr, sr, mm, sm;
        row_stats(r, K, mr, sr);
        row_stats(m, K, mm, sm);
        const acc_t lse_r = mr + std::log(sr), lse_m = mm + std::log(sm);
        const acc_t ce_real = lse_r - static_cast<acc_t>(r[yp[j]]);
        acc_t ce_soft = 0, tsum = 0;
        for (int64_t k = 0; k < K; ++k) {
          ce_soft += tj[k] * (lse_m - static_cast<acc_t>(m[k]));
          tsum += tj[k];
        }
        partial[j] = static_cast<double>(ce_soft + w[j] * ce_real);
        if (compute_grad) {
          const acc_t cr = w[j] / sr, cm = tsum / sm;
          for (int64_t k = 0; k < K; ++k) {
            const acc_t pr = std::exp(static_cast<acc_t>(r[k]) - mr) * cr;
            gr[j * K + k] = k == yp[j] ? pr - w[j] : pr;
            gm[j * K + k] = std::exp(static_cast<acc_t>(m[k]) - mm) * cm - tj[k];
          }
        }
      }
    });
  });
  double total = 0.0;
  for (double v : partial) total += v;
  at::Tensor loss = at::empty({}, real.options().dtype(acc));
  loss.fill_(total / static_cast<double>(B));
  return {loss, grad_real, grad_mixed};
}

}  // namespace

TORCH_LIBRARY_IMPL(ferfast, CPU, m) { m.impl("facemix_loss", &facemix_loss_cpu); }

}  // namespace ferfast
