// mixup_soft_targets on the CPU: timm's mixup_target with an explicit partner per sample.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "ops/cpu/cpu_helpers.h"
#include "ops/mixup_soft_targets.h"

namespace ferfast {
namespace {

template <typename acc_t>
void soft_targets(const int64_t* y, const int64_t* perm, const acc_t* lam, int64_t lam_stride, int64_t B, int64_t K,
                  double smoothing, acc_t* out) {
  const acc_t off = static_cast<acc_t>(smoothing / static_cast<double>(K));
  const acc_t on = static_cast<acc_t>(1.0 - smoothing + smoothing / static_cast<double>(K));
  for (int64_t i = 0; i < B; ++i) {
    const int64_t a = y[i], b = y[perm[i]];
    const acc_t l = lam[i * lam_stride], m = acc_t(1) - l;
    acc_t* row = out + i * K;
    for (int64_t k = 0; k < K; ++k) row[k] = (k == a ? on : off) * l + (k == b ? on : off) * m;
  }
}

at::Tensor mixup_soft_targets_cpu(const at::Tensor& y_in, int64_t num_classes, const at::Tensor& lam_in,
                                  const at::Tensor& perm_in, double label_smoothing) {
  check_mixup_soft_targets(y_in, num_classes, lam_in, perm_in, label_smoothing);
  const at::Tensor y = y_in.contiguous(), perm = perm_in.contiguous();
  const auto acc = lam_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor lam = lam_in.to(acc).contiguous();
  const int64_t B = y.size(0), K = num_classes;
  const int64_t* yp = y.const_data_ptr<int64_t>();
  const int64_t* pp = perm.const_data_ptr<int64_t>();
  cpu::check_index_values(yp, B, K, "y", "class labels");
  cpu::check_index_values(pp, B, B, "perm", "partner indices");
  if (acc == at::kDouble)
    cpu::check_unit_values(lam.const_data_ptr<double>(), lam.numel(), "lam");
  else
    cpu::check_unit_values(lam.const_data_ptr<float>(), lam.numel(), "lam");
  at::Tensor out = at::empty({B, K}, y.options().dtype(acc));
  const int64_t stride = lam.dim() == 0 ? 0 : 1;
  if (acc == at::kDouble)
    soft_targets<double>(yp, pp, lam.const_data_ptr<double>(), stride, B, K, label_smoothing,
                         out.mutable_data_ptr<double>());
  else
    soft_targets<float>(yp, pp, lam.const_data_ptr<float>(), stride, B, K, label_smoothing,
                        out.mutable_data_ptr<float>());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ferfast, CPU, m) { m.impl("mixup_soft_targets", &mixup_soft_targets_cpu); }

}  // namespace ferfast
