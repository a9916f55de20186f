"""``unshuffle_tokens``: MAE's decoder input (append mask tokens, undo the shuffle) in one pass."""

from __future__ import annotations

from torch import Tensor

from ferfast.backends import resolve_backend
from ferfast.ops import _checks
from ferfast.ops._dispatch import dispatch

__all__ = ["unshuffle_tokens"]


def unshuffle_tokens(
    x: Tensor,
    mask_token: Tensor,
    ids_restore: Tensor,
    num_prefix_tokens: int = 1,
    *,
    backend: str | None = None,
    validate: bool | None = None,
) -> Tensor:
    """Decoder tokens ``[B, num_prefix_tokens + L, D]`` from ``x`` = [prefix; K visible tokens].

    Token ``l`` of the output is visible token ``ids_restore[b, l]`` when that index is below K,
    else ``mask_token`` (any shape with D elements, e.g. MAE's ``[1, 1, D]`` parameter).
    Differentiable in ``x`` and ``mask_token``.

    Args:
        validate: check that ``ids_restore`` holds token positions in ``[0, L)`` (``None``: on CPU tensors only;
            a GPU check synchronises). The ``cpu`` backend's kernels check as they read.
    """
    x = _checks.tensor(x, "x")
    mask_token = _checks.tensor(mask_token, "mask_token")
    ids_restore = _checks.tensor(ids_restore, "ids_restore")
    num_prefix_tokens = _checks.non_negative_int(num_prefix_tokens, "num_prefix_tokens")
    _checks.ndim(x, 3, "x", "[B, num_prefix_tokens + K, D]")
    _checks.floating(x, "x")
    _checks.floating(mask_token, "mask_token")
    _checks.ndim(ids_restore, 2, "ids_restore", "[B, L]")
    _checks.index(ids_restore, "ids_restore")
    _checks.batch(ids_restore, "ids_restore", x, "x")
    _checks.same_device(ids_restore, "ids_restore", x, "x")
    _checks.same_device(mask_token, "mask_token", x, "x")
    if mask_token.numel() != x.shape[2]:
        raise ValueError(f"mask_token must have D={x.shape[2]} elements, got shape {tuple(mask_token.shape)}")
    if num_prefix_tokens > x.shape[1]:
        raise ValueError(f"num_prefix_tokens={num_prefix_tokens} exceeds x's {x.shape[1]} tokens")
    if x.shape[1] - num_prefix_tokens > ids_restore.shape[1]:
        raise ValueError(
            f"x has {x.shape[1] - num_prefix_tokens} visible tokens, more than ids_restore's {ids_restore.shape[1]}"
        )
    chosen = resolve_backend(x.device, backend)
    if _checks.values_checked(validate, ids_restore, backend=chosen):
        _checks.index_range(ids_restore, ids_restore.shape[1], "ids_restore", "token positions")
    op = dispatch("unshuffle_tokens", chosen)
    return op(x, mask_token.reshape(-1), ids_restore, num_prefix_tokens)
