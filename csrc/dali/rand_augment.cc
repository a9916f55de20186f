// ferfast's DALI CPU operator: RandAugment with the ops and magnitudes drawn in Python.
//
// DALI's nvidia.dali.auto_aug.rand_augment builds a conditional per op and costs ~0.5 ms per small image on the
// CPU; this operator applies a given list of torchvision RandAugment ops (ferfast.data.rand_augment draws them, the
// torch loader applies the same draws with torchvision) to a uint8 HWC image in one pass per op, matching
// torchvision's tensor kernels:
//  - ShearX/ShearY/TranslateX/TranslateY/Rotate: F.affine / F.rotate with nearest sampling and fill 0. The inverse
//    affine matrix is computed in double exactly as _get_inverse_affine_matrix does, and the sampling grid with the
//    float32 operations of torchvision's _affine_grid (a matmul) and grid_sample's unnormalisation, so that ties of
//    the nearest rounding break the same way.
//  - Brightness/Color/Contrast/Sharpness: adjust_* with torch's float32 arithmetic (x * r, then fma(y, 1 - r, .)
//    as torch's add(alpha) does, clamp, truncate to uint8).
//  - Posterize (bit mask), Solarize (invert >= threshold), AutoContrast (per channel), Equalize (PIL's LUT).
//
// Inputs (per sample): 0 image HWC uint8 (C = 3); 1 ops int32 [num_ops] (torchvision's op order, see kOpNames);
// 2 magnitudes float32 [num_ops], the op's parameter with its sign: shear factor, translation in pixels (integer),
// rotation degrees, enhance factor offset (factor = 1 + m), posterize bits, solarize threshold (0-255), 0 otherwise.
// Output: uint8 HWC, the input's shape.

// The double-precision matrix must round like Python's, and the grid like torch's: no implicit FMA contraction.
#pragma GCC optimize("fp-contract=off")

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "dali/pipeline/operator/operator.h"

namespace ferfast_dali {
namespace {

enum RandAugmentOp : int {
  kIdentity = 0,
  kShearX,
  kShearY,
  kTranslateX,
  kTranslateY,
  kRotate,
  kBrightness,
  kColor,
  kContrast,
  kSharpness,
  kPosterize,
  kSolarize,
  kAutoContrast,
  kEqualize,
  kNumOps
};

constexpr const char *kOpNames[kNumOps] = {"Identity",   "ShearX",     "ShearY",   "TranslateX", "TranslateY",
                                           "Rotate",     "Brightness", "Color",    "Contrast",   "Sharpness",
                                           "Posterize",  "Solarize",   "AutoContrast", "Equalize"};

// Python's math.radians / math.degrees (CPython multiplies by these constants).
constexpr double kDegToRad = M_PI / 180.0;
constexpr double kRadToDeg = 180.0 / M_PI;

// torchvision's _get_inverse_affine_matrix(center, angle, translate, scale=1, shear), same operations, same order.
void inverse_affine_matrix(double cx, double cy, double angle, double tx, double ty, double shear_x, double shear_y,
                           double m[6]) {
  const double rot = angle * kDegToRad;
  const double sx = shear_x * kDegToRad;
  const double sy = shear_y * kDegToRad;
  const double cos_sy = std::cos(sy);
  const double tan_sx = std::tan(sx);
  const double rot_minus_sy = rot - sy;
  const double cx_plus_tx = cx + tx;
  const double cy_plus_ty = cy + ty;
  const double a = std::cos(rot_minus_sy) / cos_sy;
  const double b = -(a * tan_sx + std::sin(rot));
  const double c = std::sin(rot_minus_sy) / cos_sy;
  const double d = std::cos(rot) - c * tan_sx;
  m[0] = d / 1.0;
  m[1] = -b / 1.0;
  m[2] = 0.0;
  m[3] = -c / 1.0;
  m[4] = a / 1.0;
  m[5] = 0.0;
  m[2] += cx - m[0] * cx_plus_tx - m[1] * cy_plus_ty;
  m[5] += cy - m[3] * cx_plus_tx - m[4] * cy_plus_ty;
}

// The inverse matrix of one geometric op of torchvision's RandAugment on a W x H image.
void geometric_matrix(int op, float mag, int W, int H, double m[6]) {
  const double v = mag;
  switch (op) {
    case kShearX:  // F.affine(shear=[degrees(atan(v)), 0], center=[0, 0]): about the top-left corner
      inverse_affine_matrix(-W * 0.5, -H * 0.5, 0.0, 0.0, 0.0, std::atan(v) * kRadToDeg, 0.0, m);
      break;
    case kShearY:
      inverse_affine_matrix(-W * 0.5, -H * 0.5, 0.0, 0.0, 0.0, 0.0, std::atan(v) * kRadToDeg, m);
      break;
    case kTranslateX:  // translate=[int(v), 0] about the centre
      inverse_affine_matrix(0.0, 0.0, 0.0, std::trunc(v), 0.0, 0.0, 0.0, m);
      break;
    case kTranslateY:
      inverse_affine_matrix(0.0, 0.0, 0.0, 0.0, std::trunc(v), 0.0, 0.0, m);
      break;
    default: {  // kRotate: F.rotate(angle=v) -> angle % 360 (Python's modulo), matrix of -angle
      double angle = std::fmod(v, 360.0);
      if (angle < 0) angle += 360.0;
      inverse_affine_matrix(0.0, 0.0, -angle, 0.0, 0.0, 0.0, 0.0, m);
    }
  }
}

// Nearest-neighbour inverse warp of src into dst (fill 0), with torchvision's float32 grid: the base grid is
// x - (W - 1) / 2, y - (H - 1) / 2 (exact), times theta^T / (W / 2, H / 2) as torch's matmul rounds it
// (x * r0, then fma(y, r1, .), then + r2), then grid_sample's (g + 1) * size / 2 - 0.5 rounded half to even.
// colx: scratch of 4 W floats.
__attribute__((target_clones("arch=x86-64-v3", "default"))) void affine_nearest(const uint8_t *__restrict src,
                                                                                 uint8_t *__restrict dst, int H, int W,
                                                                                 const double m[6], float *colx) {
  const float hw = static_cast<float>(0.5 * W), hh = static_cast<float>(0.5 * H);
  const float t[6] = {static_cast<float>(m[0]), static_cast<float>(m[1]), static_cast<float>(m[2]),
                      static_cast<float>(m[3]), static_cast<float>(m[4]), static_cast<float>(m[5])};
  const float r00 = t[0] / hw, r10 = t[1] / hw, r20 = t[2] / hw;  // x output
  const float r01 = t[3] / hh, r11 = t[4] / hh, r21 = t[5] / hh;  // y output
  const float sw = static_cast<float>(W) / 2.f, sh = static_cast<float>(H) / 2.f;
  const float fw = static_cast<float>(W), fh = static_cast<float>(H);
  float *colx0 = colx, *colx1 = colx + W, *fx = colx + 2 * W, *fy = colx + 3 * W;
  for (int i = 0; i < W; i++) {
    const float X = static_cast<float>(i - (W - 1) * 0.5);
    colx0[i] = X * r00;
    colx1[i] = X * r01;
  }
  for (int j = 0; j < H; j++) {
    const float Y = static_cast<float>(j - (H - 1) * 0.5);
    for (int i = 0; i < W; i++) {  // vectorised: the source coordinates of the row
      const float gx = __builtin_fmaf(Y, r10, colx0[i]) + r20;
      const float gy = __builtin_fmaf(Y, r11, colx1[i]) + r21;
      fx[i] = std::nearbyint((gx + 1.f) * sw - 0.5f);
      fy[i] = std::nearbyint((gy + 1.f) * sh - 0.5f);
    }
    uint8_t *o = dst + static_cast<size_t>(j) * W * 3;
    for (int i = 0; i < W; i++) {
      if (fx[i] >= 0.f && fx[i] < fw && fy[i] >= 0.f && fy[i] < fh) {
        const uint8_t *p = src + (static_cast<size_t>(fy[i]) * W + static_cast<size_t>(fx[i])) * 3;
        o[3 * i] = p[0];
        o[3 * i + 1] = p[1];
        o[3 * i + 2] = p[2];
      } else {
        o[3 * i] = o[3 * i + 1] = o[3 * i + 2] = 0;
      }
    }
  }
}

// torch's clamp_(0, 255) then truncation to uint8, as truncate-then-clamp on ints (the same result; values stay far
// inside int's range): branch-free (cmov), as random pixels make a branchy clamp mispredict.
inline uint8_t clamp_trunc(float v) {
  const int i = static_cast<int>(v);
  return static_cast<uint8_t>(std::min(std::max(i, 0), 255));
}

// _rgb_to_grayscale_image(preserve_dtype=False).floor_(): r * 0.2989, then torch's add(alpha) as fma.
inline float gray_floor(const uint8_t *p) {
  float l = static_cast<float>(p[0]) * 0.2989f;
  l = __builtin_fmaf(static_cast<float>(p[1]), 0.587f, l);
  l = __builtin_fmaf(static_cast<float>(p[2]), 0.114f, l);
  return std::floor(l);
}

// adjust_saturation: blend each channel with the floored grayscale.
__attribute__((target_clones("arch=x86-64-v3", "default"))) void saturation(uint8_t *img, size_t npix, float ratio,
                                                                             float alpha) {
  for (size_t k = 0; k < npix; k++) {
    uint8_t *p = img + 3 * k;
    const float g = gray_floor(p);
    for (int c = 0; c < 3; c++) p[c] = clamp_trunc(__builtin_fmaf(g, alpha, static_cast<float>(p[c]) * ratio));
  }
}

// The float32 mean of the floored grayscale (an exact integer sum below 2^24, then sum / N as torch.mean).
__attribute__((target_clones("arch=x86-64-v3", "default"))) float gray_mean(const uint8_t *img, size_t npix) {
  int64_t sum = 0;
  for (size_t k = 0; k < npix; k++) sum += static_cast<int64_t>(gray_floor(img + 3 * k));
  return static_cast<float>(sum) / static_cast<float>(npix);
}

// adjust_sharpness: the interior blends with round(3x3 [[1,1,1],[1,5,1],[1,1,1]] / 13) of src; border unchanged.
// The smoothed value is computed exactly in integers (S / 13 is never a tie, so torch's float conv rounds the same).
__attribute__((target_clones("arch=x86-64-v3", "default"))) void sharpness(const uint8_t *__restrict src,
                                                                            uint8_t *__restrict dst, int H, int W,
                                                                            float alpha) {
  const size_t row = static_cast<size_t>(W) * 3;
  for (int j = 1; j < H - 1; j++) {
    const uint8_t *a = src + (j - 1) * row, *b = src + j * row, *c = src + (j + 1) * row;
    uint8_t *o = dst + j * row;
    for (size_t x = 3; x < row - 3; x++) {
      const int s = a[x - 3] + a[x] + a[x + 3] + b[x - 3] + 5 * b[x] + b[x + 3] + c[x - 3] + c[x] + c[x + 3];
      const int blurred = (2 * s + 13) / 26;
      const float v = static_cast<float>(b[x]);
      o[x] = clamp_trunc(__builtin_fmaf(static_cast<float>(blurred - b[x]), alpha, v));
    }
  }
}

void apply_lut(uint8_t *img, size_t npix, const uint8_t lut[3][256]) {
  for (size_t k = 0; k < npix; k++) {
    uint8_t *p = img + 3 * k;
    p[0] = lut[0][p[0]];
    p[1] = lut[1][p[1]];
    p[2] = lut[2][p[2]];
  }
}

// PIL's / torchvision's equalize LUT of one channel's histogram; false when the channel stays unchanged (step 0).
bool equalize_lut(const int32_t hist[256], int64_t npix, uint8_t lut[256]) {
  int last = 255;
  while (last > 0 && hist[last] == 0) last--;
  const int64_t step = (npix - hist[last]) / 255;
  if (step == 0) return false;
  int64_t cum = 0;
  lut[0] = 0;
  for (int k = 1; k < 256; k++) {
    cum += hist[k - 1];
    lut[k] = static_cast<uint8_t>(std::min<int64_t>((cum + step / 2) / step, 255));
  }
  return true;
}

// Per-thread scratch (grows, never shrinks): a copy of the image and the affine grid's column terms.
struct Scratch {
  std::vector<uint8_t> img;
  std::vector<float> cols;
};

// One image: copy src to dst, then apply the ops in order, in place.
void rand_augment_sample(const uint8_t *src, uint8_t *dst, int H, int W, const int32_t *ops, const float *mags,
                         int num_ops) {
  thread_local Scratch scratch;
  const size_t npix = static_cast<size_t>(H) * W, nbytes = npix * 3;
  std::memcpy(dst, src, nbytes);
  if (npix == 0) return;
  uint8_t lut[3][256];
  for (int k = 0; k < num_ops; k++) {
    const int op = ops[k];
    const float mag = mags[k];
    switch (op) {
      case kIdentity:
        break;
      case kShearX:
      case kShearY:
      case kTranslateX:
      case kTranslateY:
      case kRotate: {
        if (op == kRotate && std::fmod(static_cast<double>(mag), 360.0) == 0.0) break;  // F.rotate's clone fast path
        double m[6];
        geometric_matrix(op, mag, W, H, m);
        if (scratch.img.size() < nbytes) scratch.img.resize(nbytes);
        if (scratch.cols.size() < 4 * static_cast<size_t>(W)) scratch.cols.resize(4 * static_cast<size_t>(W));
        std::memcpy(scratch.img.data(), dst, nbytes);
        affine_nearest(scratch.img.data(), dst, H, W, m, scratch.cols.data());
        break;
      }
      case kBrightness: {  // image * factor, clamp, truncate
        const float f = static_cast<float>(1.0 + mag);
        for (int v = 0; v < 256; v++) lut[0][v] = lut[1][v] = lut[2][v] = clamp_trunc(static_cast<float>(v) * f);
        apply_lut(dst, npix, lut);
        break;
      }
      case kColor: {
        const double f = 1.0 + mag;
        saturation(dst, npix, static_cast<float>(f), static_cast<float>(1.0 - f));
        break;
      }
      case kContrast: {
        const double f = 1.0 + mag;
        const float mean = gray_mean(dst, npix), ratio = static_cast<float>(f), alpha = static_cast<float>(1.0 - f);
        for (int v = 0; v < 256; v++) {
          lut[0][v] = lut[1][v] = lut[2][v] = clamp_trunc(__builtin_fmaf(mean, alpha, static_cast<float>(v) * ratio));
        }
        apply_lut(dst, npix, lut);
        break;
      }
      case kSharpness: {
        if (H <= 2 || W <= 2) break;
        if (scratch.img.size() < nbytes) scratch.img.resize(nbytes);
        std::memcpy(scratch.img.data(), dst, nbytes);
        sharpness(scratch.img.data(), dst, H, W, static_cast<float>(1.0 - (1.0 + mag)));
        break;
      }
      case kPosterize: {
        const int bits = static_cast<int>(mag);
        if (bits >= 8) break;
        const uint8_t mask = static_cast<uint8_t>((0xFF << (8 - bits)) & 0xFF);
        for (int v = 0; v < 256; v++) lut[0][v] = lut[1][v] = lut[2][v] = static_cast<uint8_t>(v & mask);
        apply_lut(dst, npix, lut);
        break;
      }
      case kSolarize: {  // torch compares the uint8 image with the threshold in float32
        for (int v = 0; v < 256; v++) {
          lut[0][v] = lut[1][v] = lut[2][v] = static_cast<float>(v) >= mag ? static_cast<uint8_t>(255 - v) : v;
        }
        apply_lut(dst, npix, lut);
        break;
      }
      case kAutoContrast: {
        uint8_t lo[3] = {255, 255, 255}, hi[3] = {0, 0, 0};
        for (size_t p = 0; p < npix; p++) {
          for (int c = 0; c < 3; c++) {
            lo[c] = std::min(lo[c], dst[3 * p + c]);
            hi[c] = std::max(hi[c], dst[3 * p + c]);
          }
        }
        for (int c = 0; c < 3; c++) {
          const bool eq = lo[c] == hi[c];
          const float mn = eq ? 0.f : static_cast<float>(lo[c]);
          const float inv_scale = eq ? 1.f : static_cast<float>(hi[c] - lo[c]) * static_cast<float>(1.0 / 255.0);
          for (int v = 0; v < 256; v++) lut[c][v] = clamp_trunc((static_cast<float>(v) - mn) / inv_scale);
        }
        apply_lut(dst, npix, lut);
        break;
      }
      case kEqualize: {
        int32_t hist[3][256] = {};
        for (size_t p = 0; p < npix; p++) {
          hist[0][dst[3 * p]]++;
          hist[1][dst[3 * p + 1]]++;
          hist[2][dst[3 * p + 2]]++;
        }
        for (int c = 0; c < 3; c++) {
          if (!equalize_lut(hist[c], static_cast<int64_t>(npix), lut[c])) {
            for (int v = 0; v < 256; v++) lut[c][v] = static_cast<uint8_t>(v);
          }
        }
        apply_lut(dst, npix, lut);
        break;
      }
      default:
        break;  // validated in SetupImpl
    }
  }
}

}  // namespace

class RandAugment : public ::dali::Operator<::dali::CPUBackend> {
 public:
  explicit RandAugment(const ::dali::OpSpec &spec) : ::dali::Operator<::dali::CPUBackend>(spec) {}

 protected:
  bool SetupImpl(std::vector<::dali::OutputDesc> &output_desc, const ::dali::Workspace &ws) override {
    const auto &in = ws.Input<::dali::CPUBackend>(0);
    const auto &ops = ws.Input<::dali::CPUBackend>(1);
    const auto &mags = ws.Input<::dali::CPUBackend>(2);
    DALI_ENFORCE(in.type() == DALI_UINT8, "FerfastRandAugment: input 0 (image) must be uint8");
    DALI_ENFORCE(ops.type() == DALI_INT32, "FerfastRandAugment: input 1 (ops) must be int32");
    DALI_ENFORCE(mags.type() == DALI_FLOAT, "FerfastRandAugment: input 2 (magnitudes) must be float32");
    const int n = in.num_samples();
    DALI_ENFORCE(ops.num_samples() == n && mags.num_samples() == n,
                 "FerfastRandAugment: ops and magnitudes must have one sample per image");
    for (int i = 0; i < n; i++) {
      const auto sh = in.tensor_shape(i);
      DALI_ENFORCE(sh.size() == 3 && sh[2] == 3, "FerfastRandAugment: input 0 (image) must be HWC with 3 channels, "
                                                 "got shape " + ::dali::to_string(sh) + " at sample " +
                                                     std::to_string(i));
      const int64_t k = ops.tensor_shape(i).num_elements();
      DALI_ENFORCE(mags.tensor_shape(i).num_elements() == k,
                   "FerfastRandAugment: ops and magnitudes must have the same length (sample " + std::to_string(i) +
                       ")");
      const int32_t *o = ops.tensor<int32_t>(i);
      const float *m = mags.tensor<float>(i);
      for (int64_t j = 0; j < k; j++) {
        DALI_ENFORCE(o[j] >= 0 && o[j] < kNumOps, "FerfastRandAugment: ops must be in [0, " +
                                                      std::to_string(kNumOps) + "), got " + std::to_string(o[j]) +
                                                      " at sample " + std::to_string(i));
        if (o[j] == kPosterize) {
          DALI_ENFORCE(m[j] >= 0.f && m[j] <= 8.f,
                       "FerfastRandAugment: magnitudes of Posterize (bits) must be in [0, 8], got " +
                           std::to_string(m[j]));
        } else if (o[j] >= kBrightness && o[j] <= kSharpness) {
          DALI_ENFORCE(m[j] >= -1.f, std::string("FerfastRandAugment: magnitudes of ") + kOpNames[o[j]] +
                                         " (factor - 1) must be >= -1, got " + std::to_string(m[j]));
        }
      }
    }
    output_desc.resize(1);
    output_desc[0] = {in.shape(), DALI_UINT8};
    return true;
  }

  void RunImpl(::dali::Workspace &ws) override {
    const auto &in = ws.Input<::dali::CPUBackend>(0);
    const auto &ops = ws.Input<::dali::CPUBackend>(1);
    const auto &mags = ws.Input<::dali::CPUBackend>(2);
    auto &out = ws.Output<::dali::CPUBackend>(0);
    out.SetLayout(in.GetLayout());
    auto &tp = ws.GetThreadPool();
    const int n = in.num_samples();
    for (int i = 0; i < n; i++) {
      const auto sh = in.tensor_shape(i);
      const int H = static_cast<int>(sh[0]), W = static_cast<int>(sh[1]);
      tp.AddWork(
        [&, i, H, W](int) {
          rand_augment_sample(in.tensor<uint8_t>(i), out.mutable_tensor<uint8_t>(i), H, W, ops.tensor<int32_t>(i),
                              mags.tensor<float>(i), static_cast<int>(ops.tensor_shape(i).num_elements()));
        },
        sh.num_elements());
    }
    tp.RunAll();
  }
};

}  // namespace ferfast_dali

DALI_REGISTER_OPERATOR(FerfastRandAugment, ::ferfast_dali::RandAugment, ::dali::CPU);

DALI_SCHEMA(FerfastRandAugment)
    .DocStr("torchvision RandAugment ops (given per sample) on HWC uint8 images: inputs image, ops int32 [num_ops] "
            "(Identity, ShearX, ShearY, TranslateX, TranslateY, Rotate, Brightness, Color, Contrast, Sharpness, "
            "Posterize, Solarize, AutoContrast, Equalize), magnitudes float32 [num_ops] (the ops' signed parameters, "
            "see ferfast.data.rand_augment.draw_rand_augment).")
    .NumInput(3)
    .NumOutput(1);
