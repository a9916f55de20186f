"""box_iou and paired_box_iou: face-box IoU of face-IoU Mixup (torchvision's box_iou, with a 0/0 guard)."""

import pytest
import torch
import torchvision

import ferfast
from ferfast.reference import SSFER_FALLBACK_BOX, box_iou_ref, flip_perm, paired_box_iou_ref, ssfer_paired_iou_loop_ref
from tests.utils import (
    BACKENDS,
    DTYPES,
    assert_close_to_ref,
    backend_cases,
    device_with_ops,
    direct_call_error,
    is_interpreted,
    non_contiguous,
    op_namespace,
)

OPS = ("box_iou", "paired_box_iou")
IMAGE = 224.0


@pytest.fixture
def device(backend):
    """The backend's device (conftest's fixture), failing if the backend runs here but lacks these ops."""
    return device_with_ops(backend, OPS)


# ---- data --------------------------------------------------------------------------------------


def random_boxes(n: int, scale: float = IMAGE, min_size: float = 16.0, max_size: float = 96.0) -> torch.Tensor:
    """``[n, 4]`` xyxy boxes inside a ``scale`` x ``scale`` image (float64 on the CPU)."""
    wh = torch.empty(n, 2, dtype=torch.float64).uniform_(min_size, max_size) * (scale / IMAGE)
    xy = torch.rand(n, 2, dtype=torch.float64) * (scale - wh)
    return torch.cat([xy, xy + wh], dim=1)


def make_boxes(kind: str, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two sets of ``[n, 4]`` and ``[m, 4]`` float64 boxes of an awkward kind.

    ``pixels``/``relative``: random faces on 224 x 224 (pixel or [0, 1] coordinates); ``identical``: every box
    the same (IoU 1); ``disjoint``: boxes1 left of x = 100, boxes2 right of it (IoU 0); ``touching``: boxes that
    share an edge or a corner only (IoU 0); ``zero_area``: points and lines among real boxes (IoU 0, and 0/0 for
    two empty boxes, never NaN); ``border``: boxes touching the image border, the whole image among them (pixels;
    ``border_relative``: relative coordinates).
    """
    if kind == "pixels":
        return random_boxes(n), random_boxes(m)
    if kind == "relative":
        return random_boxes(n, 1.0), random_boxes(m, 1.0)
    if kind == "identical":
        box = torch.tensor([[30.5, 22.25, 190.0, 201.75]], dtype=torch.float64)
        return box.expand(n, 4).clone(), box.expand(m, 4).clone()
    if kind == "disjoint":
        b1, b2 = random_boxes(n, 100.0), random_boxes(m, 100.0)
        b2[:, 0::2] += 100.0  # [100, 200] x [0, 100]
        return b1, b2
    if kind == "touching":  # the black and the white cells of a 6 x 6 checkerboard of 10-pixel cells
        cells = [(r, c) for r in range(6) for c in range(6)]
        black = torch.tensor([[10.0 * c, 10.0 * r, 10.0 * c + 10, 10.0 * r + 10] for r, c in cells if (r + c) % 2 == 0])
        white = torch.tensor([[10.0 * c, 10.0 * r, 10.0 * c + 10, 10.0 * r + 10] for r, c in cells if (r + c) % 2 == 1])
        return black[torch.randperm(18)[:n]].double(), white[torch.randperm(18)[:m]].double()
    if kind == "zero_area":
        b1, b2 = random_boxes(n), random_boxes(m)
        b1[0::3, 2] = b1[0::3, 0]  # vertical lines
        b1[1::3, 3] = b1[1::3, 1]  # horizontal lines
        b2[0::2, 2:] = b2[0::2, :2]  # points
        b2[0, :] = b1[0, :]  # the same line twice: an empty union
        return b1, b2
    if kind == "border":
        b1, b2 = random_boxes(n), random_boxes(m)
        b1[0::2, 0], b1[1::2, 2] = 0.0, IMAGE  # left or right border
        b2[0::2, 1], b2[1::2, 3] = 0.0, IMAGE  # top or bottom border
        b1[0], b2[-1] = torch.tensor([0.0, 0.0, IMAGE, IMAGE]), torch.tensor([0.0, 0.0, IMAGE, IMAGE])
        return b1, b2
    if kind == "border_relative":  # the same in relative coordinates: 0 and 1
        b1, b2 = make_boxes("border", n, m)
        return b1 / IMAGE, b2 / IMAGE
    raise ValueError(kind)


def make_perm(kind: str, b: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "flip":
        return flip_perm(b)
    if kind == "random":
        return torch.randperm(b)
    if kind == "repeated":  # not a permutation: partners repeat (and may be the image itself)
        return torch.randint(0, b, (b,))
    raise ValueError(kind)


def exact_dtype(dtype: torch.dtype) -> torch.dtype:
    """IoU is float32, float64 for float64 boxes."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# (kind, N, M)
CASES = [
    pytest.param(("pixels", 1, 1), id="pixels-1x1"),
    pytest.param(("pixels", 5, 7), id="pixels-5x7"),
    pytest.param(("pixels", 33, 64), id="pixels-33x64"),
    pytest.param(("relative", 3, 2), id="relative-3x2"),
    pytest.param(("relative", 64, 33), id="relative-64x33"),
    pytest.param(("identical", 2, 3), id="identical-2x3"),
    pytest.param(("disjoint", 5, 3), id="disjoint-5x3"),
    pytest.param(("touching", 4, 8), id="touching-4x8"),
    pytest.param(("zero_area", 7, 8), id="zero_area-7x8"),
    pytest.param(("border", 8, 5), id="border-8x5"),
    pytest.param(("border_relative", 5, 6), id="border_relative-5x6"),
]
CASES_INTERPRETED = [c for c in CASES if c.id not in ("pixels-33x64", "relative-64x33")]


def check_iou(out: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor, dtype: torch.dtype, kind: str, name="iou"):
    """Against the reference run in float64 on the very box values the op saw: IoU is computed in float32 (or
    float64) whatever the boxes' dtype, so it must be that accurate."""
    assert out.dtype == exact_dtype(dtype), f"{name}: dtype {out.dtype}"
    assert not bool(out.isnan().any()), f"{name}: NaN"
    exact = box_iou_ref(b1.to(dtype).double(), b2.to(dtype).double())
    assert_close_to_ref(out, exact, name=name)
    if kind in ("disjoint", "touching"):
        assert bool((out == 0).all()), f"{name}: disjoint boxes must give exactly 0"
    if kind == "identical":
        assert_close_to_ref(out, torch.ones_like(exact), name=name + " (identical boxes)")
    if kind == "zero_area":
        empty1 = (b1[:, 2] == b1[:, 0]) | (b1[:, 3] == b1[:, 1])
        empty2 = (b2[:, 2] == b2[:, 0]) | (b2[:, 3] == b2[:, 1])
        assert bool((out.cpu()[empty1] == 0).all()) and bool((out.cpu()[:, empty2] == 0).all())
    assert bool(((out >= 0) & (out <= 1 + 1e-6)).all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("backend", "case"), backend_cases(CASES, CASES_INTERPRETED))
def test_box_iou_matches_reference(backend, case, dtype, device):
    kind, n, m = case
    b1, b2 = make_boxes(kind, n, m)
    out = ferfast.box_iou(b1.to(device, dtype), b2.to(device, dtype), backend=backend)
    assert out.shape == (n, m) and out.device.type == device.type
    check_iou(out, b1, b2, dtype, kind)


@pytest.mark.parametrize("kind", ["pixels", "identical", "disjoint", "touching", "zero_area", "border"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_box_iou_integer_boxes(backend, kind, device):
    """SSFER rounds its boxes to integer pixels; int64 boxes are measured in float32."""
    b1, b2 = make_boxes(kind, 5, 6)
    b1, b2 = b1.round().long(), b2.round().long()
    b2[-1] = torch.tensor([0, 0, 224, 224])
    out = ferfast.box_iou(b1.to(device), b2.to(device), backend=backend)
    assert out.dtype == torch.float32
    assert_close_to_ref(out, box_iou_ref(b1.double(), b2.double()), name="iou")
    assert not bool(out.isnan().any())


@pytest.mark.parametrize(
    "kind", ["pixels", "relative", "identical", "disjoint", "touching", "border", "border_relative"]
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_box_iou_equals_torchvision(backend, kind, device):
    """torchvision's box_iou is the model (it has no guard, so boxes with an empty union are left out)."""
    b1, b2 = make_boxes(kind, 6, 5)
    b1, b2 = b1.float(), b2.float()
    out = ferfast.box_iou(b1.to(device), b2.to(device), backend=backend)
    assert_close_to_ref(out, torchvision.ops.box_iou(b1.double(), b2.double()), name="iou vs torchvision")


@pytest.mark.parametrize("backend", BACKENDS)
def test_box_iou_non_contiguous_and_empty(backend, device):
    b1, b2 = make_boxes("pixels", 6, 5)
    b1, b2 = b1.float(), b2.float()
    exact = box_iou_ref(b1.double(), b2.double())
    v1, v2 = non_contiguous(b1).to(device), b2.t().contiguous().to(device).t()
    assert not (v1.is_contiguous() or v2.is_contiguous())
    assert_close_to_ref(ferfast.box_iou(v1, v2, backend=backend), exact, name="iou (strided boxes)")
    assert_close_to_ref(
        ferfast.box_iou(b2.to(device)[1::2], b1.to(device)[::3], backend=backend),
        exact.t()[1::2, ::3].contiguous(),
        name="iou (row slices)",
    )
    for n, m in ((0, 5), (6, 0), (0, 0)):
        out = ferfast.box_iou(b1[:n].to(device), b2[:m].to(device), backend=backend)
        assert out.shape == (n, m) and out.dtype == torch.float32


@pytest.mark.parametrize("backend", [*BACKENDS, "reference"])
def test_box_iou_hand_example(backend, device):
    """[0,0,2,2] vs [1,1,3,3]: intersection 1, union 7; edge contact, a line and a point give 0; the point paired
    with itself has an empty union: 0 as well, not 0/0."""
    a = torch.tensor([[0.0, 0, 2, 2], [1, 1, 1, 3], [5, 5, 5, 5]])
    b = torch.tensor([[1.0, 1, 3, 3], [2, 0, 4, 2], [5, 5, 5, 5]])
    expected = torch.tensor([[1 / 7, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert_close_to_ref(ferfast.box_iou(a.to(device), b.to(device), backend=backend), expected, name="box_iou")
    paired = ferfast.paired_box_iou(a.to(device), torch.arange(3, device=device), backend=backend)
    assert paired.cpu().tolist() == [1.0, 0.0, 0.0]


# ---- paired_box_iou ----------------------------------------------------------------------------

# (kind, B, perm kind)
PAIRED_CASES = [
    pytest.param(("pixels", 1, "flip"), id="pixels-B1-flip"),
    pytest.param(("pixels", 2, "none"), id="pixels-B2-default"),
    pytest.param(("pixels", 3, "flip"), id="pixels-B3-flip"),
    pytest.param(("relative", 5, "random"), id="relative-B5-random"),
    pytest.param(("pixels", 33, "repeated"), id="pixels-B33-repeated"),
    pytest.param(("relative", 64, "flip"), id="relative-B64-flip"),
    pytest.param(("identical", 4, "random"), id="identical-B4-random"),
    pytest.param(("zero_area", 6, "flip"), id="zero_area-B6-flip"),
    pytest.param(("zero_area", 7, "repeated"), id="zero_area-B7-repeated"),
    pytest.param(("border", 8, "flip"), id="border-B8-flip"),
    pytest.param(("border_relative", 5, "random"), id="border_relative-B5-random"),
    pytest.param(("touching", 8, "flip"), id="touching-B8-flip"),
]
PAIRED_CASES_INTERPRETED = [c for c in PAIRED_CASES if c.id not in ("pixels-B33-repeated", "relative-B64-flip")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("backend", "case"), backend_cases(PAIRED_CASES, PAIRED_CASES_INTERPRETED))
def test_paired_box_iou_matches_reference(backend, case, dtype, device):
    kind, b, perm_kind = case
    boxes, _ = make_boxes(kind, b, 1)  # "touching": distinct cells of one checkerboard colour share corners only
    if kind == "zero_area":
        boxes[-1] = boxes[0]  # with flip pairing: a line paired with itself, an empty union
    perm = make_perm(perm_kind, b)
    perm_d = None if perm is None else perm.to(device)
    out = ferfast.paired_box_iou(boxes.to(device, dtype), perm_d, backend=backend)
    assert out.shape == (b,) and out.dtype == exact_dtype(dtype) and out.device.type == device.type
    assert not bool(out.isnan().any())
    perm = flip_perm(b) if perm is None else perm
    exact = paired_box_iou_ref(boxes.to(dtype).double(), perm)
    assert_close_to_ref(out, exact, name="paired iou")
    # the diagonal of the pairwise IoU
    diag = box_iou_ref(boxes.to(dtype).double(), boxes.to(dtype).double()[perm]).diagonal()
    assert_close_to_ref(out, diag, name="paired iou vs box_iou diagonal")
    if kind == "identical":
        assert_close_to_ref(out, torch.ones_like(exact), name="identical boxes")
    if kind == "touching":
        assert bool((out == 0).all())
    if kind == "zero_area":
        assert out[-1].item() == 0.0 and out[0].item() == 0.0  # two copies of a line: 0/0 gives 0
    if perm_kind in ("flip", "none"):  # SSFER mirrors the first half: iou[i] == iou[B-1-i]
        assert_close_to_ref(out, out.flip(0).double(), name="flip pairing is symmetric")


@pytest.mark.parametrize("backend", BACKENDS)
def test_paired_box_iou_integer_and_strided_inputs(backend, device):
    boxes, _ = make_boxes("border", 6, 1)
    int_boxes = boxes.round().long()
    perm = torch.tensor([5, 0, 0, 3, 2, 1])
    out = ferfast.paired_box_iou(int_boxes.to(device), perm.to(device), backend=backend)
    assert out.dtype == torch.float32
    assert_close_to_ref(out, paired_box_iou_ref(int_boxes.double(), perm), name="integer boxes")
    strided_boxes, strided_perm = non_contiguous(boxes.float()).to(device), non_contiguous(perm).to(device)
    out = ferfast.paired_box_iou(strided_boxes, strided_perm, backend=backend)
    assert_close_to_ref(out, paired_box_iou_ref(boxes.float().double(), perm), name="strided boxes and perm")
    empty = ferfast.paired_box_iou(boxes[:0].float().to(device), backend=backend)
    assert empty.shape == (0,) and empty.dtype == torch.float32


def ssfer_detections(b: int) -> list[torch.Tensor]:
    """What SSFER's face detector returns per image: mostly one box (pixel floats, some at .5), sometimes
    none or two (the released code then uses its fallback box)."""
    dets = []
    for i in range(b):
        if i % 5 == 3:
            dets.append(torch.zeros(0, 4))
        elif i % 7 == 5:
            dets.append(random_boxes(2).float())
        else:
            box = random_boxes(1, min_size=40.0, max_size=180.0).float()
            if i % 3 == 0:
                box = box.floor() + 0.5  # int(x + .5) rounds these up
            dets.append(box)
    return dets


def ssfer_int_boxes(detections: list[torch.Tensor]) -> torch.Tensor:
    """The integer boxes of ``tensor2box2iou``: ``int(x + .5)``, or the fallback box."""
    rows = []
    for det in detections:
        if len(det) != 1:
            rows.append([int(v) for v in SSFER_FALLBACK_BOX])
        else:
            rows.append([int(float(v) + 0.5) for v in det[0]])
    return torch.tensor(rows, dtype=torch.int64)


@pytest.mark.parametrize("batch", [2, 4, 16, 64])
@pytest.mark.parametrize("backend", [*BACKENDS, "reference"])
def test_paired_box_iou_equals_ssfer_loop(backend, batch, device):
    """SSFER's IoU loop (``tensor2box2iou`` after the detector) is paired_box_iou on the rounded boxes."""
    if is_interpreted(backend) and batch > 16:
        pytest.skip("interpreted Triton: small batches only")
    dets = ssfer_detections(batch)
    loop = ssfer_paired_iou_loop_ref(dets)
    boxes = ssfer_int_boxes(dets)
    out = ferfast.paired_box_iou(boxes.to(device), backend=backend)
    assert out.dtype == torch.float32
    assert_close_to_ref(out, loop.double(), name="paired iou vs SSFER's loop")
    assert_close_to_ref(out, paired_box_iou_ref(boxes.double(), flip_perm(batch)), name="paired iou")


# ---- opcheck, argument checks (no gradients: boxes are constants) --------------------------------


def _opcheck_samples(device):
    b1, b2 = make_boxes("pixels", 5, 3)
    z1, _ = make_boxes("zero_area", 4, 1)
    perm = torch.tensor([4, 0, 0, 2, 1], device=device)
    return [
        ("box_iou", (b1.float().to(device), b2.float().to(device))),
        ("box_iou", (b1.to(device), b2.to(device))),  # float64
        ("box_iou", (b1.to(device, torch.bfloat16), z1.to(device, torch.bfloat16))),
        ("paired_box_iou", (b1.float().to(device), perm)),
        ("paired_box_iou", (z1.to(device, torch.float16), flip_perm(4, device))),
        ("paired_box_iou", (b1.to(device), perm)),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, device):
    ns = getattr(torch.ops, op_namespace(backend))
    for name, args in _opcheck_samples(device):
        torch.library.opcheck(getattr(ns, name).default, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_direct_op_calls_reject_bad_shapes(backend, device):
    """The ops check their inputs themselves (the public functions are not the only callers)."""
    ns = getattr(torch.ops, op_namespace(backend))
    good, perm = torch.rand(3, 4, device=device), torch.arange(3, device=device)
    bad_calls = [
        (ns.box_iou.default, (torch.rand(3, 3, device=device), good)),
        (ns.box_iou.default, (good, torch.rand(3, device=device))),
        (ns.box_iou.default, (good, torch.rand(2, 4, 1, device=device))),
        (ns.box_iou.default, (good.long(), good)),  # the public function converts integer boxes, the op does not
        (ns.paired_box_iou.default, (torch.rand(3, 5, device=device), perm)),
        (ns.paired_box_iou.default, (good, torch.arange(4, device=device))),
        (ns.paired_box_iou.default, (good, perm.int())),
        (ns.paired_box_iou.default, (good, perm[None])),
    ]
    for op, args in bad_calls:
        with pytest.raises(direct_call_error(backend)):
            op(*args)


BOXES = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]])
PERM = torch.tensor([2, 1, 0])


@pytest.mark.parametrize(
    ("boxes1", "boxes2", "kwargs", "error", "match"),
    [
        pytest.param(BOXES.tolist(), BOXES, {}, TypeError, "boxes1", id="list-boxes1"),
        pytest.param(BOXES, None, {}, TypeError, "boxes2", id="none-boxes2"),
        pytest.param(BOXES[:, :3], BOXES, {}, ValueError, "boxes1", id="boxes1-N3"),
        pytest.param(BOXES, BOXES[0], {}, ValueError, "boxes2", id="boxes2-rank1"),
        pytest.param(BOXES, BOXES[None], {}, ValueError, "boxes2", id="boxes2-rank3"),
        pytest.param(BOXES.flip(1), BOXES, {}, ValueError, "boxes1.*x2 >= x1", id="boxes1-x2<x1"),
        pytest.param(BOXES, BOXES[:, [0, 3, 2, 1]], {}, ValueError, "boxes2.*y2 >= y1", id="boxes2-y2<y1"),
        pytest.param(
            BOXES * torch.tensor([1, 1, float("nan"), 1]), BOXES, {}, ValueError, "boxes1.*finite", id="boxes1-nan"
        ),
        pytest.param(
            BOXES, BOXES + torch.tensor([0, 0, float("inf"), 0]), {}, ValueError, "boxes2.*finite", id="boxes2-inf"
        ),
        pytest.param(BOXES, BOXES.to("meta"), {}, ValueError, "boxes2", id="meta-boxes2"),
        pytest.param(BOXES, BOXES, {"backend": "fused"}, ValueError, "backend", id="bad-backend"),
        pytest.param(BOXES, BOXES, {"backend": "cuda"}, ValueError, "backend", id="unavailable-backend"),
    ],
)
def test_box_iou_rejects_bad_input(boxes1, boxes2, kwargs, error, match):
    with pytest.raises(error, match=match):
        ferfast.box_iou(boxes1, boxes2, **kwargs)


@pytest.mark.parametrize(
    ("boxes", "perm", "kwargs", "error", "match"),
    [
        pytest.param(BOXES.numpy(), PERM, {}, TypeError, "boxes", id="numpy-boxes"),
        pytest.param(BOXES[:, :2], PERM, {}, ValueError, "boxes", id="boxes-N2"),
        pytest.param(BOXES[:, [2, 1, 0, 3]], PERM, {}, ValueError, "boxes.*x2 >= x1", id="boxes-x2<x1"),
        pytest.param(BOXES, PERM.int(), {}, TypeError, "perm", id="int32-perm"),
        pytest.param(BOXES, PERM.float(), {}, TypeError, "perm", id="float-perm"),
        pytest.param(BOXES, PERM.tolist(), {}, TypeError, "perm", id="list-perm"),
        pytest.param(BOXES, PERM[:2], {}, ValueError, "perm", id="perm-short"),
        pytest.param(BOXES, PERM[None], {}, ValueError, "perm", id="perm-rank2"),
        pytest.param(BOXES, torch.tensor([0, 3, 1]), {}, ValueError, "perm", id="perm-out-of-range"),
        pytest.param(BOXES, torch.tensor([0, -1, 1]), {}, ValueError, "perm", id="perm-negative"),
        pytest.param(BOXES, PERM.to("meta"), {}, ValueError, "perm", id="meta-perm"),
        pytest.param(BOXES, PERM, {"backend": "reference2"}, ValueError, "backend", id="bad-backend"),
    ],
)
def test_paired_box_iou_rejects_bad_input(boxes, perm, kwargs, error, match):
    with pytest.raises(error, match=match):
        ferfast.paired_box_iou(boxes, perm, **kwargs)


def test_validate_false_skips_value_checks():
    """validate=False trusts the caller (no host reads): reversed boxes are then measured as given."""
    bad = BOXES.flip(1)
    ferfast.paired_box_iou(bad, PERM, validate=False, backend="reference")
    ferfast.box_iou(bad, BOXES, validate=False, backend="reference")
    with pytest.raises(ValueError, match="boxes"):
        ferfast.paired_box_iou(bad, PERM, validate=True, backend="reference")
