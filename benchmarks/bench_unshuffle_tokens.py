"""``unshuffle_tokens`` (MAE's decoder input: append mask tokens, undo the shuffle) vs its reference and
``torch.compile`` of it, on the decoder's token shapes (cls + K visible tokens of width D -> cls + L tokens).

Minimum bytes: ``fwd`` reads x, the mask token and ids_restore and writes the output; ``full`` adds the
backward: it reads ids_restore and ``grad_out`` and writes ``grad_x`` and the mask token's gradient.
"""

from __future__ import annotations

import pytest
import torch

import shapes
from ferfast.ops import unshuffle_tokens
from ferfast.reference import unshuffle_tokens_ref

MODES = ("fwd", "full")


def min_bytes(shape: shapes.MAEShape, mode: str) -> int:
    es, b, d = shape.element_size, shape.batch, shape.decoder_dim
    x, out, ids = b * (1 + shape.num_keep) * d * es, b * (1 + shape.num_patches) * d * es, b * shape.num_patches * 8
    moved = x + d * es + ids + out
    if mode == "full":
        moved += ids + out + x + d * es
    return moved


@pytest.mark.benchmark(group="unshuffle_tokens")
@pytest.mark.parametrize("mode", MODES)
def test_unshuffle_tokens(bench, target, shape, mode):
    full = mode == "full"
    x, token = shapes.decoder_tokens(shape, target.device, requires_grad=full)
    ids_restore = shapes.masking(shape, target.device).ids_restore
    unshuffle = bench.impl(
        ferfast=lambda backend: lambda x, t, ids: unshuffle_tokens(x, t, ids, 1, backend=backend),
        ref=lambda x, t, ids: unshuffle_tokens_ref(x, t, ids, 1),
    )
    b, n, d = shape.batch, shape.num_patches, shape.decoder_dim
    grad_out = torch.randn(b, 1 + n, d, device=target.device, dtype=shape.dtype)

    def fwd_bwd(x, t, ids, g):
        return torch.autograd.grad(unshuffle(x, t, ids), (x, t), grad_outputs=(g,))

    bench.run(
        op="unshuffle_tokens",
        mode=mode,
        shape=shape,
        fn=fwd_bwd if full else unshuffle,
        args=(x, token, ids_restore, grad_out) if full else (x, token, ids_restore),
        nbytes=min_bytes(shape, mode),
        shape_desc=shape.describe_tokens(),
    )
