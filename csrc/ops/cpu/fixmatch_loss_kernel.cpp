// fixmatch_loss on the CPU: pseudo-labels, confidence mask and masked cross-entropy (and its gradient)
// in one pass over each row of the weak (teacher) and strong (student) logits. The gradient is stored
// as B * d loss / d logits_strong in the accumulation dtype (fp32; [B, K] is small): backward applies
// grad_loss / B in fp32 and rounds once to logits_strong's dtype (fp16 + GradScaler safe).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_helpers.h"
#include "ops/fixmatch_loss.h"

namespace ferfast {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fixmatch_loss_cpu(
    const at::Tensor& logits_weak_in, const at::Tensor& logits_strong_in, double threshold, bool compute_grad) {
  check_fixmatch_loss(logits_weak_in, logits_strong_in, threshold);
  const bool wide = logits_weak_in.scalar_type() == at::kDouble || logits_strong_in.scalar_type() == at::kDouble;
  const auto acc = wide ? at::kDouble : at::kFloat;
  // The teacher's logits are read once and are small: bring them to the accumulation dtype.
  const at::Tensor weak = logits_weak_in.to(acc).contiguous();
  const at::Tensor strong = logits_strong_in.contiguous();
  const int64_t B = weak.size(0), K = weak.size(1);
  at::Tensor pseudo = at::empty({B}, weak.options().dtype(at::kLong));
  at::Tensor mask = at::empty({B}, weak.options());
  // [B, K] gradient kept in the accumulation dtype (see the file comment).
  at::Tensor grad = compute_grad ? at::empty({B, K}, weak.options()) : at::empty({0}, weak.options());
  std::vector<double> partial(B);
  auto run = [&](auto acc_tag, auto strong_tag) {
    using a_t = decltype(acc_tag);
    using s_t = decltype(strong_tag);
    const a_t* wk = weak.const_data_ptr<a_t>();
    const s_t* st = strong.const_data_ptr<s_t>();
    int64_t* pl = pseudo.mutable_data_ptr<int64_t>();
    a_t* mk = mask.mutable_data_ptr<a_t>();
    a_t* g = compute_grad ? grad.mutable_data_ptr<a_t>() : nullptr;
    const a_t thr = static_cast<a_t>(threshold);
    at::parallel_for(0, B, std::max<int64_t>(1, 32768 / K), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const a_t* w = wk + i * K;
        const s_t* s = st + i * K;
        int64_t arg = 0;
        a_t mw = w[0];
        for (int64_t k = 1; k < K; ++k)
          // strict >: the first index of the maximum wins; a NaN counts as the maximum (torch.argmax)
          if (w[k] > mw || (std::isnan(w[k]) && !std::isnan(mw))) mw = w[k], arg = k;
        a_t sw = 0;
        for (int64_t k = 0; k < K; ++k) sw += std::exp(w[k] - mw);
        const a_t keep = (a_t(1) / sw >= thr) ? a_t(1) : a_t(0);
        pl[i] = arg;
        mk[i] = keep;
        a_t ms = static_cast<a_t>(s[0]);
        for (int64_t k = 1; k < K; ++k) ms = std::max(ms, static_cast<a_t>(s[k]));
        a_t ss = 0;
        for (int64_t k = 0; k < K; ++k) ss += std::exp(static_cast<a_t>(s[k]) - ms);
        const a_t ce = ms + std::log(ss) - static_cast<a_t>(s[arg]);
        partial[i] = static_cast<double>(keep * ce);
        if (g != nullptr) {
          const a_t c = keep / ss;
          for (int64_t k = 0; k < K; ++k) {
            const a_t p = std::exp(static_cast<a_t>(s[k]) - ms) * c;
            g[i * K + k] = k == arg ? p - keep : p;
          }
        }
      }
    });
  };
  FERFAST_DISPATCH_FLOATING(strong.scalar_type(), "fixmatch_loss_cpu", [&] {
    if (wide)
      run(double{}, scalar_t{});
    else
      run(float{}, scalar_t{});
  });
  double total = 0.0, kept = 0.0;
  for (double v : partial) total += v;
  if (wide) {
    const double* mk = mask.const_data_ptr<double>();
    for (int64_t i = 0; i < B; ++i) kept += mk[i];
  } else {
    const float* mk = mask.const_data_ptr<float>();
    for (int64_t i = 0; i < B; ++i) kept += mk[i];
  }
  at::Tensor loss = at::empty({}, weak.options());
  loss.fill_(total / static_cast<double>(B));
  at::Tensor rate = at::empty({}, weak.options());
  rate.fill_(kept / static_cast<double>(B));
  return {loss, rate, pseudo, mask, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(ferfast, CPU, m) { m.impl("fixmatch_loss", &fixmatch_loss_cpu); }

}  // namespace ferfast
