// ferfast op library: every op schema lives here, in one TORCH_LIBRARY block.
// Kernels register per device in csrc/ops/{cpu,cuda}/<op>_kernel.{cpp,cu}; autograd and
// fake (meta) kernels are registered from Python (ferfast/_library.py).
#define Py_LIMITED_API 0x030A0000
#include <Python.h>

#include <torch/library.h>

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace ferfast {

// CUDA runtime version the library was compiled against (e.g. 13000), -1 for a CPU-only build.
int64_t cuda_version() {
#ifdef WITH_CUDA
  return CUDART_VERSION;
#else
  return -1;
#endif
}

TORCH_LIBRARY(ferfast, m) {
  m.def("_cuda_version() -> int", &cuda_version);

  // MAE masking: order patches by (noise, index), keep the first int(L*(1-mask_ratio)).
  m.def("random_masking(Tensor noise, float mask_ratio) -> (Tensor ids_keep, Tensor mask, Tensor ids_restore)");

  // Visible patches [B,K,p*p*C] (nhwpqc order) of imgs [B,C,H,W]; backward scatters them back.
  m.def("patchify_gather(Tensor imgs, Tensor ids_keep, int patch_size) -> Tensor");
  m.def("_patchify_gather_backward(Tensor grad, Tensor ids_keep, int patch_size, int channels, int height, "
        "int width) -> Tensor");

  // MAE decoder input: [prefix; visible tokens; mask tokens] unshuffled by ids_restore.
  m.def("unshuffle_tokens(Tensor x, Tensor mask_token, Tensor ids_restore, int num_prefix_tokens) -> Tensor");
  // Returns (grad_x in grad's dtype, grad_mask_token [D] in float32, float64 for float64 grads).
  m.def("_unshuffle_tokens_backward(Tensor grad, Tensor ids_restore, int num_prefix_tokens, int num_visible) "
        "-> (Tensor, Tensor)");

  // MAE forward_loss fused with its gradient: returns (loss: float32 scalar (float64 if an input is), grad_pred:
  // mask * (pred - target), d loss / d pred without its factor 2 / (P * sum(mask)), which backward applies;
  // an empty tensor when compute_grad is false).
  m.def("masked_patch_mse(Tensor imgs, Tensor pred, Tensor mask, int patch_size, bool norm_pix_loss, "
        "bool compute_grad) -> (Tensor, Tensor)");

  // Face-IoU Mixup (SSFER stage 1). Boxes are xyxy; IoU is float32 (float64 for float64 boxes), 0 for an empty union.
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  m.def("paired_box_iou(Tensor boxes, Tensor perm) -> Tensor");
  // lam * x + (1 - lam) * x[perm], out of place; with_originals: [x; mixed] ([2B, ...]) for one forward pass.
  m.def("face_mixup(Tensor x, Tensor lam, Tensor perm, bool with_originals) -> Tensor");
  // The same written into a [B, ...] or [2B, ...] buffer (no autograd).
  m.def("face_mixup_out(Tensor x, Tensor lam, Tensor perm, Tensor(a!) out) -> ()");
  // timm's mixup_target with partner perm: [B, K] float32 (float64 for float64 lam).
  m.def("mixup_soft_targets(Tensor y, int num_classes, Tensor lam, Tensor perm, float label_smoothing) -> Tensor");
  // SSFER's loss fused with its gradients: (loss, grad_real, grad_mixed); the gradients are empty unless compute_grad,
  // and are B * d loss / d logits in float32 (float64 for float64 logits); backward applies grad_loss / B.
  m.def("facemix_loss(Tensor logits_real, Tensor logits_mixed, Tensor y, Tensor y_soft, Tensor iou, Tensor perm, "
        "bool compute_grad) -> (Tensor loss, Tensor grad_real, Tensor grad_mixed)");

  // FixMatch's unlabeled loss (SSFER stage 2) fused with its gradient (grad_strong = B * d loss / d logits_strong,
  // float32, float64 for float64 logits).
  m.def("fixmatch_loss(Tensor logits_weak, Tensor logits_strong, float threshold, bool compute_grad) -> "
        "(Tensor loss, Tensor mask_rate, Tensor pseudo_labels, Tensor mask, Tensor grad_strong)");
}

}  // namespace ferfast

// An importable (empty) Python module, so the library is found and loaded like torchvision's _C.
static struct PyModuleDef ferfast_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&ferfast_module); }
