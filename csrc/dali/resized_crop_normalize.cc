// ferfast's DALI CPU operator: crop + resize (antialiased bicubic) + flip + normalise in one pass.
//
// DALI's CPU fn.resize is the bottleneck of an augmentation pipeline on the CPU (about 0.5-1 ms per
// 224x224 bicubic output here); this operator computes the same crop-resize as torchvision's
// F.resized_crop(antialias=True, bicubic) on a uint8 image -- PIL's separable resampling, Keys
// cubic a = -0.5, filter widened by the scale when shrinking, taps clamped to the crop window -- then
// flips and normalises while writing the planar float output, so a view takes one operator.
//
// Inputs (per sample): 0 image HWC uint8 (C = 3); 1 window float32 [4] = left, top, width, height in
// pixels; 2 mirror int32 [1] (non-zero: horizontal flip).
// Output: (v - mean) / std (mean and std in 0-255 units; the defaults 0 and 1 leave pixel values) as
//   dtype=FLOAT: float32, unrounded;
//   dtype=UINT8: uint8, rounded to nearest and clamped to [0, 255] (torchvision's uint8 resized_crop, +-1 where
//                a value sits at .5: torchvision rounds fixed-point sums, this operator float ones),
// in output_layout "CHW" ([3, size, size], what torch takes) or "HWC" ([size, size, 3], for ops that need
// pixels next).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "dali/pipeline/operator/operator.h"

namespace ferfast_dali {

// Keys' cubic convolution kernel with a = -0.5 (PIL's and torch's antialiased bicubic).
static inline double cubic(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// Filter taps of one axis: output o reads in[first[o] .. first[o] + taps) with weights w[o * taps + k]; rows
// are zero-padded to a common tap count (so the inner loops have a fixed trip count) and kept inside
// [lo, hi), the crop window, as a crop followed by a resize sees only the crop.
struct AxisTaps {
  std::vector<int> first;
  std::vector<float> w;
  int taps = 0;
};

static void compute_taps(AxisTaps &t, double start, double extent, int out_size, int in_size) {
  const double scale = extent / out_size;
  const double fscale = std::max(scale, 1.0);
  const double support = 2.0 * fscale;
  const int lo = std::max(0, static_cast<int>(std::floor(start)));
  const int hi = std::min(in_size, static_cast<int>(std::ceil(start + extent)));
  // The common tap count: the widest window any output needs (4 when upscaling with the cubic's support 2).
  t.taps = 1;
  for (int o = 0; o < out_size; o++) {
    const double center = start + (o + 0.5) * scale;
    const int xmin = std::max(lo, static_cast<int>(center - support + 0.5));
    const int xmax = std::max(xmin + 1, std::min(hi, static_cast<int>(center + support + 0.5)));
    t.taps = std::max(t.taps, xmax - xmin);
  }
  t.first.assign(out_size, lo);
  t.w.assign(static_cast<size_t>(out_size) * t.taps, 0.f);
  double ww[64];
  std::vector<double> big;
  double *wk = ww;
  if (t.taps > 64) {
    big.resize(t.taps);
    wk = big.data();
  }
  for (int o = 0; o < out_size; o++) {
    const double center = start + (o + 0.5) * scale;
    const int xmin = std::max(lo, static_cast<int>(center - support + 0.5));
    const int xmax = std::max(xmin + 1, std::min(hi, static_cast<int>(center + support + 0.5)));
    const int n = std::min(xmax - xmin, t.taps);
    const int first = std::min(xmin, hi - t.taps);  // shift left at the right edge, keeping `taps` in range
    double sum = 0;
    for (int k = 0; k < t.taps; k++) {
      const int x = first + k;
      wk[k] = (x >= xmin && x < xmin + n) ? cubic((x - center + 0.5) / fscale) : 0.0;
      sum += wk[k];
    }
    float *dst = t.w.data() + static_cast<size_t>(o) * t.taps;
    for (int k = 0; k < t.taps; k++) dst[k] = static_cast<float>(sum != 0 ? wk[k] / sum : 0);
    t.first[o] = first;
  }
}

// One image: crop window wv = (left, top, width, height) of src [H, W, 3] -> dst, v * scale[c] + bias[c] as float
// or as rounded, clamped uint8 (to_u8), planar CHW or interleaved HWC (chw). Compiled for AVX2 and for baseline
// x86-64; the loader picks at run time.
__attribute__((target_clones("avx2", "default"))) static void resized_crop_sample(
  const uint8_t *src, int H, int W, const float *wv, bool flip, int S, bool to_u8, bool chw, const float *scale_c,
  const float *bias_c, void *dst) {
  const double left = std::clamp<double>(wv[0], 0, W - 1), top = std::clamp<double>(wv[1], 0, H - 1);
  const double ww = std::clamp<double>(wv[2], 1, W - left), hh = std::clamp<double>(wv[3], 1, H - top);

  AxisTaps tx, ty;
  compute_taps(tx, left, ww, S, W);
  compute_taps(ty, top, hh, S, H);
  const int row0 = ty.first[0];
  const int rows = ty.first[S - 1] + ty.taps - row0;
  const int TX = tx.taps, TY = ty.taps;

  // Horizontal pass over the rows the vertical filter reads, into planar tmp[c][r][x]; the flip is applied
  // here, by writing column x of the output at S - 1 - x.
  std::vector<float> tmp(static_cast<size_t>(3) * rows * S);
  const size_t plane = static_cast<size_t>(rows) * S;
  for (int r = 0; r < rows; r++) {
    const uint8_t *srow = src + static_cast<size_t>(r + row0) * W * 3;
    float *t0 = tmp.data() + static_cast<size_t>(r) * S;
    for (int x = 0; x < S; x++) {
      const float *k = tx.w.data() + static_cast<size_t>(x) * TX;
      const uint8_t *p = srow + static_cast<size_t>(tx.first[x]) * 3;
      float a0 = 0, a1 = 0, a2 = 0;
      for (int j = 0; j < TX; j++) {
        a0 += k[j] * p[3 * j];
        a1 += k[j] * p[3 * j + 1];
        a2 += k[j] * p[3 * j + 2];
      }
      const int xo = flip ? S - 1 - x : x;
      t0[xo] = a0;
      t0[plane + xo] = a1;
      t0[2 * plane + xo] = a2;
    }
  }
  // Vertical pass per channel plane, contiguous over x (vectorised); normalisation folded into the weights.
  std::vector<float> acc_buf(S);
  float *__restrict acc = acc_buf.data();
  for (int c = 0; c < 3; c++) {
    const float scale = scale_c[c];
    const float bias = bias_c[c];
    const float *tc = tmp.data() + c * plane;
    for (int y = 0; y < S; y++) {
      const float *k = ty.w.data() + static_cast<size_t>(y) * TY;
      const float *t = tc + static_cast<size_t>(ty.first[y] - row0) * S;
      for (int x = 0; x < S; x++) acc[x] = bias;
      for (int j = 0; j < TY; j++) {
        const float kj = k[j] * scale;
        const float *__restrict tj = t + static_cast<size_t>(j) * S;
        for (int x = 0; x < S; x++) acc[x] += kj * tj[x];
      }
      // Element (c, y, x) sits at base + x * step: CHW planes, or HWC pixels.
      const size_t base = chw ? (static_cast<size_t>(c) * S + y) * S : static_cast<size_t>(y) * S * 3 + c;
      const int step = chw ? 1 : 3;
      if (to_u8) {
        uint8_t *__restrict u = static_cast<uint8_t *>(dst) + base;
        for (int x = 0; x < S; x++) u[step * x] = static_cast<uint8_t>(std::clamp(std::nearbyint(acc[x]), 0.f, 255.f));
      } else {
        float *__restrict o = static_cast<float *>(dst) + base;
        for (int x = 0; x < S; x++) o[step * x] = acc[x];
      }
    }
  }
}

class ResizedCropNormalize : public ::dali::Operator<::dali::CPUBackend> {
 public:
  explicit ResizedCropNormalize(const ::dali::OpSpec &spec)
      : ::dali::Operator<::dali::CPUBackend>(spec),
        size_(spec.GetArgument<int>("size")),
        dtype_(spec.GetArgument<::dali::DALIDataType>("dtype")),
        layout_(spec.GetArgument<std::string>("output_layout")),
        mean_(spec.GetRepeatedArgument<float>("mean")),
        std_(spec.GetRepeatedArgument<float>("std")) {
    DALI_ENFORCE(size_ > 0, "size must be positive");
    DALI_ENFORCE(dtype_ == DALI_FLOAT || dtype_ == DALI_UINT8, "dtype must be FLOAT or UINT8");
    DALI_ENFORCE(layout_ == "CHW" || layout_ == "HWC", "output_layout must be \"CHW\" or \"HWC\"");
    DALI_ENFORCE(mean_.size() == 3 && std_.size() == 3, "mean and std must have 3 values (RGB)");
    for (float s : std_) DALI_ENFORCE(s > 0, "std must be positive");
  }

 protected:
  bool SetupImpl(std::vector<::dali::OutputDesc> &output_desc, const ::dali::Workspace &ws) override {
    const auto &in = ws.Input<::dali::CPUBackend>(0);
    DALI_ENFORCE(in.type() == DALI_UINT8, "image must be uint8");
    const int n = in.num_samples();
    for (int i = 0; i < n; i++) {
      auto sh = in.tensor_shape(i);
      DALI_ENFORCE(sh.size() == 3 && sh[2] == 3, "image must be HWC with 3 channels");
    }
    output_desc.resize(1);
    const auto shape = layout_ == "CHW" ? ::dali::TensorShape<3>{3, size_, size_} : ::dali::TensorShape<3>{size_, size_, 3};
    output_desc[0] = {::dali::uniform_list_shape(n, shape), dtype_};
    return true;
  }

  void RunImpl(::dali::Workspace &ws) override {
    const auto &in = ws.Input<::dali::CPUBackend>(0);
    const auto &win = ws.Input<::dali::CPUBackend>(1);
    const auto &mir = ws.Input<::dali::CPUBackend>(2);
    auto &out = ws.Output<::dali::CPUBackend>(0);
    out.SetLayout(layout_);
    auto &tp = ws.GetThreadPool();
    const int n = in.num_samples();
    for (int i = 0; i < n; i++) {
      tp.AddWork([&, i](int) { RunSample(in, win, mir, out, i); }, static_cast<int64_t>(size_) * size_);
    }
    tp.RunAll();
  }

 private:
  void RunSample(const ::dali::TensorList<::dali::CPUBackend> &in, const ::dali::TensorList<::dali::CPUBackend> &win,
                 const ::dali::TensorList<::dali::CPUBackend> &mir, ::dali::TensorList<::dali::CPUBackend> &out,
                 int i) const {
    auto sh = in.tensor_shape(i);
    const float scale[3] = {1.f / std_[0], 1.f / std_[1], 1.f / std_[2]};
    const float bias[3] = {-mean_[0] / std_[0], -mean_[1] / std_[1], -mean_[2] / std_[2]};
    const bool to_u8 = dtype_ == DALI_UINT8;
    void *dst = to_u8 ? static_cast<void *>(out.mutable_tensor<uint8_t>(i)) : out.mutable_tensor<float>(i);
    resized_crop_sample(in.tensor<uint8_t>(i), static_cast<int>(sh[0]), static_cast<int>(sh[1]), win.tensor<float>(i),
                        mir.tensor<int32_t>(i)[0] != 0, size_, to_u8, layout_ == "CHW", scale, bias, dst);
  }

  int size_;
  ::dali::DALIDataType dtype_;
  std::string layout_;
  std::vector<float> mean_, std_;
};

}  // namespace ferfast_dali

DALI_REGISTER_OPERATOR(FerfastResizedCropNormalize, ::ferfast_dali::ResizedCropNormalize, ::dali::CPU);

DALI_SCHEMA(FerfastResizedCropNormalize)
    .DocStr("Crop + antialiased bicubic resize + horizontal flip + normalisation of HWC uint8 images in one pass "
            "(torchvision resized_crop semantics). Inputs: image, window [left, top, width, height], mirror.")
    .NumInput(3)
    .NumOutput(1)
    .AddArg("size", "Output height and width.", DALI_INT32)
    .AddOptionalTypeArg("dtype", "Output type: FLOAT ((v - mean) / std, unrounded) or UINT8 (rounded, clamped).",
                        DALI_FLOAT)
    .AddOptionalArg("output_layout", "\"CHW\" (planar, torch's layout) or \"HWC\".", std::string("CHW"))
    .AddOptionalArg("mean", "Per-channel mean (0-255 units).", std::vector<float>{0.f, 0.f, 0.f})
    .AddOptionalArg("std", "Per-channel standard deviation (0-255 units).", std::vector<float>{1.f, 1.f, 1.f});
