// masked_patch_mse on the CPU: MAE's forward_loss and its gradient in one pass.
//
// Work is split into strips (one image, one row of patches). For a strip, the masked patches'
// targets are gathered from NCHW into nhwpqc order in a small cache-resident buffer (the
// patchified target is never materialised in memory), reading each image row front to back.
// Then, per masked patch: mean and unbiased variance (norm_pix_loss), squared error against
// pred, and the un-normalised gradient w * (pred - target) written once (backward applies
// 2 * grad_loss / (P * denom) in fp32: folded in here, it is fp16-subnormal at ViT-B scale).
// Unmasked patches read nothing and get zero gradient.
// Per-strip partial losses are summed in a fixed order, so the result does not depend on the
// number of threads. The all-fp32 path is compiled for AVX-512, AVX2 and baseline x86-64 and
// picked at load time (GCC target_clones).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "ops/cpu/cpu_helpers.h"
#include "ops/masked_patch_mse.h"

namespace ferfast {
namespace {

struct PatchLossArgs {
  int64_t B, C, H, W, p;
  bool norm_pix;
  double denom;  // sum of the mask, 1 when it is 0
};

// Writes a gradient row. fp32 rows go out with streaming (non-temporal) stores: the gradient is
// written once and read by the next layer's backward much later, so fetching its cache lines
// first (a plain store's read-for-ownership) would be a wasted extra read of the whole tensor.
template <typename pred_t, typename acc_t>
inline __attribute__((always_inline)) void write_row(pred_t* __restrict g, const acc_t* __restrict v, int64_t n) {
#if defined(__SSE2__)
  if constexpr (std::is_same_v<pred_t, float> && std::is_same_v<acc_t, float>) {
    if (reinterpret_cast<std::uintptr_t>(g) % 16 == 0 && n % 4 == 0) {
      for (int64_t e = 0; e < n; e += 4) _mm_stream_ps(g + e, _mm_loadu_ps(v + e));
      return;
    }
  }
#endif
  for (int64_t e = 0; e < n; ++e) g[e] = static_cast<pred_t>(v[e]);
}

template <typename pred_t>
inline __attribute__((always_inline)) void zero_row(pred_t* __restrict g, int64_t n) {
#if defined(__SSE2__)
  if constexpr (std::is_same_v<pred_t, float>) {
    if (reinterpret_cast<std::uintptr_t>(g) % 16 == 0 && n % 4 == 0) {
      for (int64_t e = 0; e < n; e += 4) _mm_stream_ps(g + e, _mm_setzero_ps());
      return;
    }
  }
#endif
  std::memset(static_cast<void*>(g), 0, n * sizeof(pred_t));
}

inline void store_fence() {
#if defined(__SSE2__)
  _mm_sfence();  // order the streaming stores before the kernel returns
#endif
}

// Loss contribution of strip s; writes the strip's gradient rows when grad != nullptr.
template <typename img_t, typename pred_t, typename acc_t, int kC>
inline __attribute__((always_inline)) double strip_loss(const img_t* __restrict imgs, const pred_t* __restrict pred,
                                                        const acc_t* __restrict mask, pred_t* __restrict grad,
                                                        const PatchLossArgs& a, int64_t s, acc_t* __restrict buf,
                                                        int64_t* __restrict masked) {
  const int64_t C = kC > 0 ? kC : a.C;
  const int64_t p = a.p, H = a.H, W = a.W, gh = H / p, gw = W / p, L = gh * gw, P = p * p * C;
  const int64_t b = s / gh, lh = s % gh;
  const int64_t row0 = b * L + lh * gw;
  int64_t n = 0;
  for (int64_t lw = 0; lw < gw; ++lw) {
    if (mask[row0 + lw] != acc_t(0)) {
      masked[n++] = lw;
    } else if (grad) {
      zero_row(grad + (row0 + lw) * P, P);
    }
  }
  if (n == 0) return 0.0;
  // Gather: buf[m][(i*p + j)*C + c] = imgs[b, c, lh*p + i, masked[m]*p + j].
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t i = 0; i < p; ++i) {
      const img_t* row = imgs + ((b * C + c) * H + lh * p + i) * W;
      for (int64_t m = 0; m < n; ++m) {
        const img_t* src = row + masked[m] * p;
        acc_t* dst = buf + m * P + i * p * C + c;
        for (int64_t j = 0; j < p; ++j) dst[j * C] = static_cast<acc_t>(src[j]);
      }
    }
  }
  double loss = 0.0;
  const acc_t inv_p = acc_t(1) / static_cast<acc_t>(P);
  for (int64_t m = 0; m < n; ++m) {
    const int64_t idx = row0 + masked[m];
    const acc_t w = mask[idx];
    acc_t* __restrict t = buf + m * P;
    acc_t mean = 0, inv_std = 1;
    if (a.norm_pix) {
      acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t e = 0; e < P; ++e) sum += t[e];
      mean = sum * inv_p;
      acc_t ss = 0;
#pragma omp simd reduction(+ : ss)
      for (int64_t e = 0; e < P; ++e) ss += (t[e] - mean) * (t[e] - mean);
      const acc_t var = ss / static_cast<acc_t>(P - 1);  // unbiased, as torch.var
      inv_std = acc_t(1) / std::sqrt(var + static_cast<acc_t>(kNormPixEps));
    }
    const pred_t* __restrict pr = pred + idx * P;
    acc_t sq = 0;
    if (grad) {
      const acc_t coef = w;  // the stored gradient is un-normalised (see the file comment)
#pragma omp simd reduction(+ : sq)
      for (int64_t e = 0; e < P; ++e) {
        const acc_t d = static_cast<acc_t>(pr[e]) - (t[e] - mean) * inv_std;
        sq += d * d;
        t[e] = d * coef;  // the buffer now holds the (un-normalised) gradient row
      }
      write_row(grad + idx * P, t, P);
    } else {
#pragma omp simd reduction(+ : sq)
      for (int64_t e = 0; e < P; ++e) {
        const acc_t d = static_cast<acc_t>(pr[e]) - (t[e] - mean) * inv_std;
        sq += d * d;
      }
    }
    loss += static_cast<double>(w) * static_cast<double>(sq) / static_cast<double>(P);
  }
  return loss;
}

// Software prefetch of strip s's masked inputs into L2 while the strip before it is computed: the
// hardware prefetcher alone leaves each core waiting on DRAM (measured: +12% throughput, cold caches).
template <typename img_t, typename pred_t, typename acc_t>
inline __attribute__((always_inline)) void prefetch_strip(const img_t* imgs, const pred_t* pred, const acc_t* mask,
                                                          const PatchLossArgs& a, int64_t s) {
  const int64_t p = a.p, C = a.C, H = a.H, W = a.W, gh = H / p, gw = W / p, L = gh * gw, P = p * p * C;
  const int64_t b = s / gh, lh = s % gh, row0 = b * L + lh * gw;
  constexpr int64_t kLine = 64;
  for (int64_t lw = 0; lw < gw; ++lw) {
    if (mask[row0 + lw] == acc_t(0)) continue;
    const char* pr = reinterpret_cast<const char*>(pred + (row0 + lw) * P);
    for (int64_t off = 0; off < P * int64_t(sizeof(pred_t)); off += kLine) __builtin_prefetch(pr + off, 0, 2);
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t i = 0; i < p; ++i) {
        const char* src = reinterpret_cast<const char*>(imgs + ((b * C + c) * H + lh * p + i) * W + lw * p);
        for (int64_t off = 0; off < p * int64_t(sizeof(img_t)); off += kLine) __builtin_prefetch(src + off, 0, 2);
      }
    }
  }
}

template <typename img_t, typename pred_t, typename acc_t, int kC>
inline __attribute__((always_inline)) void strips(const img_t* imgs, const pred_t* pred, const acc_t* mask,
                                                  pred_t* grad, const PatchLossArgs& a, int64_t s0, int64_t s1,
                                                  double* out) {
  const int64_t gw = a.W / a.p, P = a.p * a.p * a.C;
  std::vector<acc_t> buf(gw * P);
  std::vector<int64_t> masked(gw);
  if (s0 < s1) prefetch_strip(imgs, pred, mask, a, s0);
  for (int64_t s = s0; s < s1; ++s) {
    if (s + 1 < s1) prefetch_strip(imgs, pred, mask, a, s + 1);
    out[s] = strip_loss<img_t, pred_t, acc_t, kC>(imgs, pred, mask, grad, a, s, buf.data(), masked.data());
  }
  store_fence();
}

// The common case (fp32 images and predictions, RGB), compiled per instruction set.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FERFAST_TARGET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FERFAST_TARGET_CLONES
#endif

FERFAST_TARGET_CLONES
void strips_f32_rgb(const float* imgs, const float* pred, const float* mask, float* grad, const PatchLossArgs& a,
                    int64_t s0, int64_t s1, double* out) {
  strips<float, float, float, 3>(imgs, pred, mask, grad, a, s0, s1, out);
}

FERFAST_TARGET_CLONES
void strips_f32(const float* imgs, const float* pred, const float* mask, float* grad, const PatchLossArgs& a,
                int64_t s0, int64_t s1, double* out) {
  strips<float, float, float, 0>(imgs, pred, mask, grad, a, s0, s1, out);
}

template <typename img_t, typename pred_t, typename acc_t>
void run_strips(const img_t* imgs, const pred_t* pred, const acc_t* mask, pred_t* grad, const PatchLossArgs& a,
                double* out) {
  at::parallel_for(0, a.B * (a.H / a.p), 1, [&](int64_t s0, int64_t s1) {
    if constexpr (std::is_same_v<img_t, float> && std::is_same_v<pred_t, float>) {
      if (a.C == 3) {
        strips_f32_rgb(imgs, pred, mask, grad, a, s0, s1, out);
      } else {
        strips_f32(imgs, pred, mask, grad, a, s0, s1, out);
      }
    } else {
      strips<img_t, pred_t, acc_t, 0>(imgs, pred, mask, grad, a, s0, s1, out);
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
  PatchLossArgs a{imgs.size(0), imgs.size(1), imgs.size(2), imgs.size(3), p, norm_pix, 0.0};
  at::Tensor grad = compute_grad ? at::empty_like(pred) : at::empty({0}, pred.options());
  std::vector<double> strip_losses(a.B * (a.H / p), 0.0);
  double denom = 0.0;
  FERFAST_DISPATCH_FLOATING(pred.scalar_type(), "masked_patch_mse_cpu", [&] {
    using pred_t = scalar_t;
    FERFAST_DISPATCH_FLOATING(imgs.scalar_type(), "masked_patch_mse_cpu", [&] {
      using img_t = scalar_t;
      using acc_t = cpu::acc_type_t<img_t, pred_t>;
      const acc_t* m = mask.const_data_ptr<acc_t>();
      for (int64_t i = 0; i < mask.numel(); ++i) denom += static_cast<double>(m[i]);
      a.denom = denom == 0.0 ? 1.0 : denom;  // MAE gives 0/0 = NaN here; ferfast gives 0
      run_strips<img_t, pred_t, acc_t>(imgs.const_data_ptr<img_t>(), pred.const_data_ptr<pred_t>(), m,
                                       compute_grad ? grad.mutable_data_ptr<pred_t>() : nullptr, a,
                                       strip_losses.data());
    });
  });
  double total = 0.0;
  for (double v : strip_losses) total += v;
  at::Tensor loss = at::empty({}, pred.options().dtype(wide ? at::kDouble : at::kFloat));
  loss.fill_(total / a.denom);
  return {loss, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(ferfast, CPU, m) { m.impl("masked_patch_mse", &masked_patch_mse_cpu); }

}  // namespace ferfast
