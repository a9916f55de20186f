// face_mixup on the CPU: out-of-place Mixup with an explicit partner, optionally with the originals.
//
// The per-sample dimension is cut into chunks and each thread takes a range of chunks; within a
// chunk, the rows are visited in order. A chunk of all B rows stays in L2, so the partner row read
// for row i (x[perm[i]]) is usually a cache hit: x is read from memory about once, and the output
// (the [B] mixed images, or the [2B] originals + mixed batch) is written once. fp32 rows are written
// with streaming (non-temporal) stores: the batch is consumed later by the network, and skipping the
// read-for-ownership of every output line saves a full extra pass over it.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "ops/cpu/cpu_helpers.h"
#include "ops/face_mixup.h"

namespace ferfast {
namespace {

constexpr int64_t kChunk = 2048;  // elements of one row per step: B rows of it fit in L2

struct MixArgs {
  int64_t B, N;           // rows, elements per row
  const int64_t* perm;    // [B]
  int64_t lam_stride;     // 0: one lam for the batch
  bool originals;         // out holds [x; mixed]
};

// Generic path (any dtype): math in acc_t, one rounding to scalar_t.
template <typename scalar_t, typename acc_t>
void mix_range_generic(const scalar_t* x, const acc_t* lam, scalar_t* out, const MixArgs& a, int64_t c0,
                       int64_t c1) {
  scalar_t* mixed = out + (a.originals ? a.B * a.N : 0);
  for (int64_t cs = c0; cs < c1; cs += kChunk) {
    const int64_t n = std::min(kChunk, c1 - cs);
    for (int64_t i = 0; i < a.B; ++i) {
      const scalar_t* xa = x + i * a.N + cs;
      const scalar_t* xb = x + a.perm[i] * a.N + cs;
      if (a.originals) std::memcpy(out + i * a.N + cs, xa, n * sizeof(scalar_t));
      const acc_t l = lam[i * a.lam_stride], m = acc_t(1) - l;
      scalar_t* o = mixed + i * a.N + cs;
      for (int64_t e = 0; e < n; ++e)
        o[e] = static_cast<scalar_t>(static_cast<acc_t>(xa[e]) * l + static_cast<acc_t>(xb[e]) * m);
    }
  }
}

#if defined(__x86_64__)
// fp32 with AVX-512: 16 lanes, streaming stores when the destination is 64-byte aligned.
__attribute__((target("avx512f"))) void mix_range_f32_avx512(const float* x, const float* lam, float* out,
                                                               const MixArgs& a, int64_t c0, int64_t c1) {
  float* mixed = out + (a.originals ? a.B * a.N : 0);
  for (int64_t cs = c0; cs < c1; cs += kChunk) {
    const int64_t n = std::min(kChunk, c1 - cs);
    const int64_t nv = n & ~int64_t(15);
    for (int64_t i = 0; i < a.B; ++i) {
      const float* xa = x + i * a.N + cs;
      const float* xb = x + a.perm[i] * a.N + cs;
      float* o = mixed + i * a.N + cs;
      float* oo = a.originals ? out + i * a.N + cs : nullptr;
      const float l = lam[i * a.lam_stride], m = 1.0f - l;
      const __m512 vl = _mm512_set1_ps(l), vm = _mm512_set1_ps(m);
      const bool stream = reinterpret_cast<std::uintptr_t>(o) % 64 == 0 &&
                          (oo == nullptr || reinterpret_cast<std::uintptr_t>(oo) % 64 == 0);
      if (stream) {
        for (int64_t e = 0; e < nv; e += 16) {
          const __m512 va = _mm512_loadu_ps(xa + e), vb = _mm512_loadu_ps(xb + e);
          if (oo != nullptr) _mm512_stream_ps(oo + e, va);
          _mm512_stream_ps(o + e, _mm512_add_ps(_mm512_mul_ps(va, vl), _mm512_mul_ps(vb, vm)));
        }
      } else {
        for (int64_t e = 0; e < nv; e += 16) {
          const __m512 va = _mm512_loadu_ps(xa + e), vb = _mm512_loadu_ps(xb + e);
          if (oo != nullptr) _mm512_storeu_ps(oo + e, va);
          _mm512_storeu_ps(o + e, _mm512_add_ps(_mm512_mul_ps(va, vl), _mm512_mul_ps(vb, vm)));
        }
      }
      for (int64_t e = nv; e < n; ++e) {
        if (oo != nullptr) oo[e] = xa[e];
        o[e] = xa[e] * l + xb[e] * m;
      }
    }
  }
  _mm_sfence();  // order the streaming stores before the op returns
}

// fp32 with SSE (every x86-64): 4 lanes, streaming stores when 16-byte aligned.
void mix_range_f32_sse(const float* x, const float* lam, float* out, const MixArgs& a, int64_t c0, int64_t c1) {
  float* mixed = out + (a.originals ? a.B * a.N : 0);
  for (int64_t cs = c0; cs < c1; cs += kChunk) {
    const int64_t n = std::min(kChunk, c1 - cs);
    const int64_t nv = n & ~int64_t(3);
    for (int64_t i = 0; i < a.B; ++i) {
      const float* xa = x + i * a.N + cs;
      const float* xb = x + a.perm[i] * a.N + cs;
      float* o = mixed + i * a.N + cs;
      float* oo = a.originals ? out + i * a.N + cs : nullptr;
      const float l = lam[i * a.lam_stride], m = 1.0f - l;
      const __m128 vl = _mm_set1_ps(l), vm = _mm_set1_ps(m);
      const bool stream = reinterpret_cast<std::uintptr_t>(o) % 16 == 0 &&
                          (oo == nullptr || reinterpret_cast<std::uintptr_t>(oo) % 16 == 0);
      for (int64_t e = 0; e < nv; e += 4) {
        const __m128 va = _mm_loadu_ps(xa + e), vb = _mm_loadu_ps(xb + e);
        const __m128 r = _mm_add_ps(_mm_mul_ps(va, vl), _mm_mul_ps(vb, vm));
        if (stream) {
          if (oo != nullptr) _mm_stream_ps(oo + e, va);
          _mm_stream_ps(o + e, r);
        } else {
          if (oo != nullptr) _mm_storeu_ps(oo + e, va);
          _mm_storeu_ps(o + e, r);
        }
      }
      for (int64_t e = nv; e < n; ++e) {
        if (oo != nullptr) oo[e] = xa[e];
        o[e] = xa[e] * l + xb[e] * m;
      }
    }
  }
  _mm_sfence();
}
#endif

template <typename scalar_t, typename acc_t>
void mix_range(const scalar_t* x, const acc_t* lam, scalar_t* out, const MixArgs& a, int64_t c0, int64_t c1) {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<scalar_t, float>) {
    static const bool avx512 = __builtin_cpu_supports("avx512f");
    if (avx512)
      mix_range_f32_avx512(x, lam, out, a, c0, c1);
    else
      mix_range_f32_sse(x, lam, out, a, c0, c1);
    return;
  }
#endif
  mix_range_generic<scalar_t, acc_t>(x, lam, out, a, c0, c1);
}

void mix(const at::Tensor& x, const at::Tensor& lam, const at::Tensor& perm, at::Tensor& out, bool originals) {
  MixArgs a;
  a.B = x.size(0);
  a.N = a.B == 0 ? 0 : x.numel() / a.B;
  a.perm = perm.const_data_ptr<int64_t>();
  a.lam_stride = lam.dim() == 0 ? 0 : 1;
  a.originals = originals;
  for (int64_t i = 0; i < a.B; ++i)
    TORCH_CHECK(a.perm[i] >= 0 && a.perm[i] < a.B, "perm must hold indices in [0, ", a.B, "), got perm[", i,
                "] = ", a.perm[i]);
  if (a.B == 0 || a.N == 0) return;
  const int64_t nchunks = (a.N + kChunk - 1) / kChunk;
  FERFAST_DISPATCH_FLOATING(x.scalar_type(), "face_mixup_cpu", [&] {
    using acc_t = cpu::acc_type_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const acc_t* lp = lam.const_data_ptr<acc_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, nchunks, 1, [&](int64_t begin, int64_t end) {
      mix_range(xp, lp, op, a, begin * kChunk, std::min(end * kChunk, a.N));
    });
  });
}

at::Tensor lam_as_acc(const at::Tensor& x, const at::Tensor& lam) {
  return lam.to(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
}

at::Tensor face_mixup_cpu(const at::Tensor& x_in, const at::Tensor& lam_in, const at::Tensor& perm_in,
                          bool with_originals) {
  check_face_mixup(x_in, lam_in, perm_in);
  const at::Tensor x = x_in.contiguous(), perm = perm_in.contiguous(), lam = lam_as_acc(x, lam_in);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  if (with_originals) shape[0] *= 2;
  at::Tensor out = at::empty(shape, x.options());
  mix(x, lam, perm, out, with_originals && x.size(0) > 0);
  return out;
}

void face_mixup_out_cpu(const at::Tensor& x_in, const at::Tensor& lam_in, const at::Tensor& perm_in,
                        at::Tensor out) {
  check_face_mixup(x_in, lam_in, perm_in);
  const at::Tensor x = x_in.contiguous(), perm = perm_in.contiguous(), lam = lam_as_acc(x, lam_in);
  const bool originals = check_face_mixup_out(x, out);
  mix(x, lam, perm, out, originals);
}

}  // namespace

TORCH_LIBRARY_IMPL(ferfast, CPU, m) {
  m.impl("face_mixup", &face_mixup_cpu);
  m.impl("face_mixup_out", &face_mixup_out_cpu);
}

}  // namespace ferfast
