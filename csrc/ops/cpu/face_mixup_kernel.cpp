// face_mixup on the CPU: out-of-place Mixup with an explicit partner, optionally with the originals.
//
// When perm is an involution (perm[perm[i]] == i: SSFER's and timm's flip pairing, any pairing), the
// work items are (pair, row segment): one read of both rows' segments gives both mixed segments (and
// the originals' copies), and a thread streams through its rows front to back. Any other perm is cut
// into column chunks small enough that a chunk of all B rows stays in L2, so the partner row read for
// row i is usually a cache hit. Either way x is read from memory about once and the output (the [B]
// mixed images, or the [2B] originals + mixed batch) is written once. fp32 rows are written with
// streaming (non-temporal) stores: the batch is consumed later by the network, and skipping the
// read-for-ownership of every output line saves a full extra pass over it. Values (perm range, lam in
// [0, 1]) are checked as they are read.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "ops/cpu/cpu_helpers.h"
#include "ops/face_mixup.h"

namespace ferfast {
namespace {

constexpr int64_t kChunk = 2048;       // any perm: elements of one row per step (B rows of it fit in L2)
constexpr int64_t kPairChunk = 16384;  // involutions (flip pairing): elements of a pair's rows per work item

// One row segment: o[e] = a[e] * l + b[e] * (1 - l) in acc_t, rounded once; oo (optional) gets a copy of a.
template <typename scalar_t, typename acc_t>
inline void blend_generic(const scalar_t* a, const scalar_t* b, acc_t l, scalar_t* o, scalar_t* oo, int64_t n) {
  const acc_t m = acc_t(1) - l;
  if (oo != nullptr) std::memcpy(oo, a, n * sizeof(scalar_t));
  for (int64_t e = 0; e < n; ++e)
    o[e] = static_cast<scalar_t>(static_cast<acc_t>(a[e]) * l + static_cast<acc_t>(b[e]) * m);
}

#if defined(__x86_64__)
// fp32 with AVX-512: 16 lanes, streaming stores when the destinations are 64-byte aligned.
__attribute__((target("avx512f"))) void blend_f32_avx512(const float* a, const float* b, float l, float* o,
                                                           float* oo, int64_t n) {
  const float m = 1.0f - l;
  const __m512 vl = _mm512_set1_ps(l), vm = _mm512_set1_ps(m);
  const int64_t nv = n & ~int64_t(15);
  const bool stream = reinterpret_cast<std::uintptr_t>(o) % 64 == 0 &&
                      (oo == nullptr || reinterpret_cast<std::uintptr_t>(oo) % 64 == 0);
  if (stream) {
    for (int64_t e = 0; e < nv; e += 16) {
      const __m512 va = _mm512_loadu_ps(a + e), vb = _mm512_loadu_ps(b + e);
      if (oo != nullptr) _mm512_stream_ps(oo + e, va);
      _mm512_stream_ps(o + e, _mm512_add_ps(_mm512_mul_ps(va, vl), _mm512_mul_ps(vb, vm)));
    }
  } else {
    for (int64_t e = 0; e < nv; e += 16) {
      const __m512 va = _mm512_loadu_ps(a + e), vb = _mm512_loadu_ps(b + e);
      if (oo != nullptr) _mm512_storeu_ps(oo + e, va);
      _mm512_storeu_ps(o + e, _mm512_add_ps(_mm512_mul_ps(va, vl), _mm512_mul_ps(vb, vm)));
    }
  }
  for (int64_t e = nv; e < n; ++e) {
    if (oo != nullptr) oo[e] = a[e];
    o[e] = a[e] * l + b[e] * m;
  }
}

// fp32 with SSE (every x86-64): 4 lanes, streaming stores when 16-byte aligned.
void blend_f32_sse(const float* a, const float* b, float l, float* o, float* oo, int64_t n) {
  const float m = 1.0f - l;
  const __m128 vl = _mm_set1_ps(l), vm = _mm_set1_ps(m);
  const int64_t nv = n & ~int64_t(3);
  const bool stream = reinterpret_cast<std::uintptr_t>(o) % 16 == 0 &&
                      (oo == nullptr || reinterpret_cast<std::uintptr_t>(oo) % 16 == 0);
  for (int64_t e = 0; e < nv; e += 4) {
    const __m128 va = _mm_loadu_ps(a + e), vb = _mm_loadu_ps(b + e);
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
    if (oo != nullptr) oo[e] = a[e];
    o[e] = a[e] * l + b[e] * m;
  }
}
#endif

template <typename scalar_t, typename acc_t>
inline void blend(const scalar_t* a, const scalar_t* b, acc_t l, scalar_t* o, scalar_t* oo, int64_t n) {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<scalar_t, float>) {
    static const bool avx512 = __builtin_cpu_supports("avx512f");
    if (avx512)
      blend_f32_avx512(a, b, l, o, oo, n);
    else
      blend_f32_sse(a, b, l, o, oo, n);
    return;
  }
#endif
  blend_generic<scalar_t, acc_t>(a, b, l, o, oo, n);
}

inline void store_fence() {
#if defined(__x86_64__)
  _mm_sfence();  // order the streaming stores before the op returns
#endif
}

struct MixArgs {
  int64_t B, N;         // rows, elements per row
  const int64_t* perm;  // [B]
  int64_t lam_stride;   // 0: one lam for the batch
  bool originals;       // out holds [x; mixed]
};

// Any perm: chunks [c0, c1) of every row, rows in order; the partner's chunk is usually still in L2.
template <typename scalar_t, typename acc_t>
void mix_chunks(const scalar_t* x, const acc_t* lam, scalar_t* out, const MixArgs& a, int64_t c0, int64_t c1) {
  scalar_t* mixed = out + (a.originals ? a.B * a.N : 0);
  for (int64_t cs = c0; cs < c1; cs += kChunk) {
    const int64_t n = std::min(kChunk, c1 - cs);
    for (int64_t i = 0; i < a.B; ++i)
      blend(x + i * a.N + cs, x + a.perm[i] * a.N + cs, lam[i * a.lam_stride], mixed + i * a.N + cs,
            a.originals ? out + i * a.N + cs : nullptr, n);
  }
  store_fence();
}

// perm an involution (perm[perm[i]] == i, e.g. flip): both rows of a pair are mixed from one read of
// each, segment by segment, so every row is streamed once, front to back.
template <typename scalar_t, typename acc_t>
void mix_pairs(const scalar_t* x, const acc_t* lam, scalar_t* out, const MixArgs& a, const int64_t* firsts,
               int64_t chunks_per_row, int64_t begin, int64_t end) {
  scalar_t* mixed = out + (a.originals ? a.B * a.N : 0);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t i = firsts[item / chunks_per_row], j = a.perm[i];
    const int64_t cs = (item % chunks_per_row) * kPairChunk, n = std::min(kPairChunk, a.N - cs);
    const scalar_t* xi = x + i * a.N + cs;
    const scalar_t* xj = x + j * a.N + cs;
    blend(xi, xj, lam[i * a.lam_stride], mixed + i * a.N + cs, a.originals ? out + i * a.N + cs : nullptr, n);
    if (j != i)
      blend(xj, xi, lam[j * a.lam_stride], mixed + j * a.N + cs, a.originals ? out + j * a.N + cs : nullptr, n);
  }
  store_fence();
}

void mix(const at::Tensor& x, const at::Tensor& lam, const at::Tensor& perm, at::Tensor& out, bool originals) {
  MixArgs a;
  a.B = x.size(0);
  a.N = a.B == 0 ? 0 : x.numel() / a.B;
  a.perm = perm.const_data_ptr<int64_t>();
  a.lam_stride = lam.dim() == 0 ? 0 : 1;
  a.originals = originals;
  cpu::check_index_values(a.perm, a.B, a.B, "perm", "partner indices");
  if (lam.scalar_type() == at::kDouble)
    cpu::check_unit_values(lam.const_data_ptr<double>(), lam.numel(), "lam");
  else
    cpu::check_unit_values(lam.const_data_ptr<float>(), lam.numel(), "lam");
  if (a.B == 0 || a.N == 0) return;
  std::vector<int64_t> firsts;  // the smaller index of each pair, when perm is an involution
  bool involution = true;
  for (int64_t i = 0; i < a.B && involution; ++i) {
    involution = a.perm[a.perm[i]] == i;
    if (a.perm[i] >= i) firsts.push_back(i);
  }
  FERFAST_DISPATCH_FLOATING(x.scalar_type(), "face_mixup_cpu", [&] {
    using acc_t = cpu::acc_type_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const acc_t* lp = lam.const_data_ptr<acc_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    if (involution) {
      const int64_t chunks_per_row = (a.N + kPairChunk - 1) / kPairChunk;
      const int64_t items = static_cast<int64_t>(firsts.size()) * chunks_per_row;
      at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
        mix_pairs(xp, lp, op, a, firsts.data(), chunks_per_row, begin, end);
      });
    } else {
      const int64_t nchunks = (a.N + kChunk - 1) / kChunk;
      at::parallel_for(0, nchunks, 1, [&](int64_t begin, int64_t end) {
        mix_chunks(xp, lp, op, a, begin * kChunk, std::min(end * kChunk, a.N));
      });
    }
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
