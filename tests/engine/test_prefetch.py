"""The device prefetcher: the loader's batches, on the device, uint8 images normalised there (float ones as they
are); on CUDA the copies run on a side stream from pinned memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ferfast.data.augment import FACE_MEAN, FACE_STD
from ferfast.engine.loop import FitConfig, fit
from ferfast.engine.prefetch import DevicePrefetcher, is_image_key, prepare_batch
from ferfast.engine.steps import StepOutput

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


class Loader:
    """Fixed batches, with the loaders' ``set_epoch`` and ``len``."""

    def __init__(self, batches):
        self.batches, self.epochs = batches, []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def uint8_batches(n=3, b=2, size=4):
    g = torch.Generator().manual_seed(0)
    return [
        {
            "images": torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=g),
            "images_strong": torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=g),
            "labels": torch.randint(0, 7, (b,), generator=g),
            "boxes": torch.rand(b, 4, generator=g),
        }
        for _ in range(n)
    ]


def by_hand(x, mean=MEAN, std=STD):
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (x.double() / 255 - m.double()) / s.double()


def test_uint8_images_are_normalised_and_the_rest_is_unchanged():
    batches = uint8_batches()
    loader = Loader(batches)
    pre = DevicePrefetcher(loader, "cpu", MEAN, STD)
    assert len(pre) == 3
    pre.set_epoch(4)
    assert loader.epochs == [4]
    out = list(pre)
    assert len(out) == 3
    for got, raw in zip(out, batches):
        assert set(got) == set(raw)
        for key in ("images", "images_strong"):
            assert got[key].dtype == torch.float32 and got[key].shape == raw[key].shape
            torch.testing.assert_close(got[key].double(), by_hand(raw[key]), rtol=1e-6, atol=1e-6)
        assert torch.equal(got["labels"], raw["labels"]) and torch.equal(got["boxes"], raw["boxes"])


def test_float_images_pass_through_identical():
    batches = [{k: (v.float() / 255 if is_image_key(k) else v) for k, v in b.items()} for b in uint8_batches()]
    for got, raw in zip(DevicePrefetcher(Loader(batches), "cpu"), batches):
        assert all(torch.equal(got[k], raw[k]) for k in raw)


def test_prepare_batch_uses_the_face_statistics_by_default_and_keeps_non_tensors():
    raw = {"images": torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), "ids": ["a"]}
    got = prepare_batch(raw, "cpu")
    expected = torch.tensor([(1 - m) / s for m, s in zip(FACE_MEAN, FACE_STD)]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    torch.testing.assert_close(got["images"], expected)
    assert got["ids"] == ["a"]
    assert is_image_key("images_weak") and not is_image_key("imagesize") and not is_image_key("labels")


def test_fit_feeds_the_step_normalised_images(tmp_path):
    batches = uint8_batches(n=2, size=4)
    seen = []
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16, 7))

    def step(m, b):
        seen.append(b["images"])
        loss = F.cross_entropy(m(b["images"]), b["labels"])
        return StepOutput(loss, {"loss": loss.detach()})

    cfg = FitConfig(
        epochs=1, lr_at=lambda e: 1e-3, output_dir=tmp_path, show_progress=False, image_mean=MEAN, image_std=STD
    )
    fit(step, model, torch.optim.SGD(model.parameters(), lr=0.1), Loader(batches), cfg)
    assert len(seen) == 2
    for got, raw in zip(seen, batches):
        torch.testing.assert_close(got.double(), by_hand(raw["images"]), rtol=1e-6, atol=1e-6)


def test_a_cuda_prefetcher_without_a_gpu_says_so():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        DevicePrefetcher(Loader([]), "cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_prefetcher_copies_pinned_batches_on_a_side_stream():
    batches = [{k: v.pin_memory() for k, v in b.items()} for b in uint8_batches(n=4, b=8, size=32)]
    pre = DevicePrefetcher(Loader(batches), "cuda", MEAN, STD)
    results = []
    for batch in pre:
        assert all(v.is_cuda for v in batch.values())
        # work on the compute stream right after the hand-off: it must see the finished copy
        results.append({k: (v * 1).cpu() for k, v in batch.items()})
    assert len(results) == 4
    for got, raw in zip(results, batches):
        torch.testing.assert_close(got["images"].double(), by_hand(raw["images"]), rtol=1e-6, atol=1e-6)
        assert torch.equal(got["labels"], raw["labels"])
    # pageable batches work too (synchronous copies), and batches already on the GPU (DALI's) are normalised there
    plain = [{k: v.clone() for k, v in b.items()} for b in uint8_batches(n=2)]
    assert len(list(DevicePrefetcher(Loader(plain), "cuda"))) == 2
    on_gpu = [{k: v.cuda() for k, v in b.items()} for b in plain]
    for got, raw in zip(DevicePrefetcher(Loader(on_gpu), "cuda", MEAN, STD), plain):
        torch.testing.assert_close(got["images"].cpu().double(), by_hand(raw["images"]), rtol=1e-6, atol=1e-6)
