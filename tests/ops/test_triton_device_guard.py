"""Every Triton kernel launch runs under a device guard of its inputs' device.

Triton launches on the *current* CUDA device and stream, so without a guard a ``cuda:1`` tensor in a
single process would be read by a kernel running on ``cuda:0``. ``ferfast.triton.utils.launch`` wraps
``wrap_triton(kernel)[grid]`` in ``device_guard`` (``torch.cuda.device``; a no-op for CPU tensors under the
interpreter). The source scan below fails when a new launch bypasses ``launch``; the runtime check runs
every op and fails when a kernel starts outside the guard.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
from pathlib import Path

import pytest
import torch

import ferfast
from tests.utils import backend_device

TRITON_DIR = Path(ferfast.__file__).parent / "triton"


def _module_sources() -> dict[str, ast.Module]:
    return {p.name: ast.parse(p.read_text()) for p in sorted(TRITON_DIR.glob("*.py"))}


def _jit_functions(tree: ast.Module) -> set[str]:
    """Names of the module's ``@triton.jit`` functions."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if ast.unparse(target) in ("triton.jit", "jit"):
                    names.add(node.name)
    return names


def test_no_launch_bypasses_the_guarded_helper():
    """Outside ``utils.launch``: no ``wrap_triton`` call and no ``kernel[grid](...)`` launch."""
    trees = _module_sources()
    assert {"boxes.py", "masking.py", "mixup.py", "patch_loss.py", "ssl.py", "utils.py"} <= set(trees)
    jit = set().union(*(_jit_functions(t) for t in trees.values()))
    launched: set[str] = set()
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript):
                base = node.func.value
                direct = isinstance(base, ast.Name) and base.id in jit
                wrapped = isinstance(base, ast.Call) and ast.unparse(base.func).endswith("wrap_triton")
                assert not (direct or wrapped) or (name == "utils.py"), (
                    f"{name}:{node.lineno}: launch `{ast.unparse(node.func)}` bypasses ferfast.triton.utils.launch"
                )
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "wrap_triton":
                assert name == "utils.py", f"{name}:{node.lineno}: wrap_triton outside utils.launch"
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "launch" and node.args:
                launched.add(ast.unparse(node.args[0]))
    kernels = {k for k in jit if k.endswith("_kernel")}
    assert kernels and kernels <= launched, f"kernels not launched through launch(): {sorted(kernels - launched)}"


def test_launch_runs_wrap_triton_inside_device_guard():
    """In ``utils.launch``, the one ``wrap_triton`` call sits in ``with device_guard(...)``."""
    from ferfast.triton import utils

    tree = ast.parse(inspect.getsource(utils.launch))
    guarded = [
        w
        for w in ast.walk(tree)
        if isinstance(w, ast.With) and any(ast.unparse(i.context_expr).startswith("device_guard(") for i in w.items)
    ]
    assert guarded, "launch has no `with device_guard(...)`"
    inside = {id(n) for w in guarded for n in ast.walk(w)}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "wrap_triton"]
    assert calls and all(id(c) in inside for c in calls)


class _FakeCudaTensor:
    """Just enough of a tensor for ``device_guard``: a device (``cuda:1``) without a GPU."""

    device = torch.device("cuda", 1)


def test_device_guard_enters_the_tensor_device_and_skips_cpu(monkeypatch):
    backend_device("triton")
    from ferfast.triton import utils

    entered = []

    @contextlib.contextmanager
    def fake_cuda_device(device):
        entered.append(torch.device(device))
        yield

    monkeypatch.setattr(torch.cuda, "device", fake_cuda_device)
    with utils.device_guard(torch.zeros(1)):  # CPU (interpreter): nothing entered
        pass
    assert entered == []
    with utils.device_guard(_FakeCudaTensor()):  # type: ignore[arg-type]
        pass
    assert entered == [torch.device("cuda", 1)]


def _run_every_op(device: torch.device) -> None:
    """Call each ferfast_triton op once (forward and backward) on small inputs."""
    ops = torch.ops.ferfast_triton
    b, c, p, k = 2, 3, 4, 5
    imgs = torch.randn(b, c, 8, 8, device=device)
    length, pdim = 4, p * p * c
    noise = torch.rand(b, length, device=device)
    ids_keep, mask, ids_restore = ops.random_masking(noise, 0.5)
    x = torch.randn(b, ids_keep.shape[1], pdim, device=device, requires_grad=True)
    patches = ops.patchify_gather(imgs.requires_grad_(), ids_keep, p)
    patches.sum().backward()
    token = torch.zeros(pdim, device=device, requires_grad=True)
    ops.unshuffle_tokens(x, token, ids_restore, 0).sum().backward()
    pred = torch.randn(b, length, pdim, device=device, requires_grad=True)
    ops.masked_patch_mse(imgs.detach(), pred, mask, p, True, True)[0].backward()
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.7]], device=device)
    perm = torch.tensor([1, 0], device=device)
    ops.box_iou(boxes, boxes)
    iou = ops.paired_box_iou(boxes, perm)
    lam = torch.tensor(0.3, device=device)
    ops.face_mixup(imgs.detach().requires_grad_(), lam, perm, True).sum().backward()
    ops.face_mixup_out(imgs.detach(), lam, perm, torch.empty_like(imgs))
    y = torch.tensor([0, 3], device=device)
    soft = ops.mixup_soft_targets(y, k, lam, perm, 0.1)
    real = torch.randn(b, k, device=device, requires_grad=True)
    mixed = torch.randn(b, k, device=device, requires_grad=True)
    ops.facemix_loss(real, mixed, y, soft, iou, perm, True)[0].backward()
    ops.fixmatch_loss(torch.randn(b, k, device=device), mixed, 0.1, True)[0].backward()


def test_every_op_launches_its_kernels_inside_the_guard(monkeypatch):
    """Run every Triton op: each kernel launch happens while ``device_guard`` holds the input's device."""
    device = backend_device("triton")
    from ferfast.triton import utils

    active: list[torch.device] = []
    launches: list[tuple[str, torch.device | None]] = []
    real_guard, real_wrap = utils.device_guard, utils.wrap_triton

    @contextlib.contextmanager
    def recording_guard(ref):
        active.append(ref.device)
        with real_guard(ref):
            yield
        active.pop()

    def recording_wrap(kernel):
        launches.append((getattr(kernel, "__name__", None) or kernel.fn.__name__, active[-1] if active else None))
        return real_wrap(kernel)

    monkeypatch.setattr(utils, "device_guard", recording_guard)
    monkeypatch.setattr(utils, "wrap_triton", recording_wrap)
    _run_every_op(device)
    every_kernel = {k for t in _module_sources().values() for k in _jit_functions(t) if k.endswith("_kernel")}
    assert {name for name, _ in launches} == every_kernel  # the ops above launch every kernel
    outside = [name for name, dev in launches if dev is None]
    assert not outside, f"launched outside device_guard: {outside}"
    assert all(dev.type == device.type for _, dev in launches)


@pytest.mark.cuda
def test_second_gpu_runs_on_its_own_device():
    """With two GPUs, an op on ``cuda:1`` gives the ``cuda:0`` result while ``cuda:0`` is current."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    backend_device("triton")
    imgs = torch.randn(2, 3, 32, 32)
    pred = torch.randn(2, 16, 192)
    mask = (torch.rand(2, 16) < 0.75).float()
    torch.cuda.set_device(0)
    out = [
        ferfast.masked_patch_mse(imgs.to(d), pred.to(d), mask.to(d), 8, True, backend="triton").cpu()
        for d in ("cuda:0", "cuda:1")
    ]
    torch.testing.assert_close(out[1], out[0])
