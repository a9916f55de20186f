"""normalize_images: uint8 batches normalised on their device, as the loaders used to do in their workers."""

import pytest
import torch

from ferfast.data import FACE_MEAN, FACE_STD
from ferfast.data.normalize import normalize_images


def _expected(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    return (x.double() / 255.0 - m) / s


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_uint8_matches_the_formula(dtype):
    x = torch.randint(0, 256, (3, 3, 5, 7), dtype=torch.uint8)
    x[0, :, 0, 0] = 0
    x[0, :, 0, 1] = 255
    out = normalize_images(x, dtype=dtype)
    assert out.dtype == dtype and out.shape == x.shape
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), _expected(x, FACE_MEAN, FACE_STD), atol=tol, rtol=tol)


def test_custom_statistics_and_cache_per_statistics():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    a = normalize_images(x, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    b = normalize_images(x, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    torch.testing.assert_close(a.double(), _expected(x, (0.5,) * 3, (0.25,) * 3), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.double(), x.double() / 255.0, atol=1e-6, rtol=1e-6)


def test_float_images_pass_through():
    x = torch.randn(2, 3, 4, 4)
    assert normalize_images(x) is x or torch.equal(normalize_images(x), x)
    assert normalize_images(x, dtype=torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.zeros(2, 3, 4, 4, dtype=torch.int32), "uint8"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), r"\[B, 3, H, W\]"),
        (torch.zeros(3, 4, 4, dtype=torch.uint8), r"\[B, 3, H, W\]"),
    ],
)
def test_bad_input_is_named(images, match):
    with pytest.raises((TypeError, ValueError), match=match):
        normalize_images(images)


def test_not_a_tensor():
    with pytest.raises(TypeError, match="images must be a tensor"):
        normalize_images([1, 2, 3])
