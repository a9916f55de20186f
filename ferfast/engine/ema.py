"""Exponential moving average of a model's weights: stage 1's EMA model and stage 2's FixMatch teacher.

``ema = decay * ema + (1 - decay) * p`` for every floating-point parameter and buffer, as one
``torch._foreach_lerp_`` over all tensors (no custom kernel); integer buffers (e.g. BatchNorm's
``num_batches_tracked``) are copied.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ferfast.engine.checkpoint import strip_wrapper_prefixes, unwrap_model

__all__ = ["ModelEma"]


def _tensors(module: nn.Module) -> list[Tensor]:
    return [*module.parameters(), *module.buffers()]


class ModelEma:
    """A detached copy of ``model`` whose weights follow an exponential moving average of the model's.

    ``warmup=True`` uses TF's ``ExponentialMovingAverage`` rule ``min(decay, (1 + n) / (10 + n))`` for the
    ``n``-th update, so that early updates follow the model faster; off by default (SSFER uses a fixed decay).
    """

    def __init__(
        self, model: nn.Module, decay: float = 0.999, *, warmup: bool = False, device: torch.device | str | None = None
    ) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be a number in [0, 1], got {decay!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.device = None if device is None else torch.device(device)
        self.num_updates = 0
        self._module = copy.deepcopy(unwrap_model(model))
        if self.device is not None:
            self._module.to(self.device)
        self._module.eval()
        self._module.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model (in eval mode, no gradients)."""
        return self._module

    def get_decay(self) -> float:
        """The decay the next :meth:`update` applies."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (a DDP/compiled wrapper is unwrapped)."""
        decay = self.get_decay()
        ema_tensors = _tensors(self._module)
        model_tensors = _tensors(unwrap_model(model))
        if len(ema_tensors) != len(model_tensors):
            raise ValueError(
                f"model has {len(model_tensors)} parameters and buffers, the EMA copy {len(ema_tensors)}: "
                "update() needs the model the EMA was made from"
            )
        lerp_ema: list[Tensor] = []
        lerp_model: list[Tensor] = []
        for e, m in zip(ema_tensors, model_tensors):
            if e.shape != m.shape:
                raise ValueError(f"EMA tensor of shape {tuple(e.shape)} does not match model's {tuple(m.shape)}")
            m = m.detach()
            if m.device != e.device or m.dtype != e.dtype:
                m = m.to(device=e.device, dtype=e.dtype)
            if e.is_floating_point() or e.is_complex():
                lerp_ema.append(e)
                lerp_model.append(m)
            else:
                e.copy_(m)
        if lerp_ema:
            torch._foreach_lerp_(lerp_ema, lerp_model, 1.0 - decay)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        """The averaged model's state dict (loads into a plain model of the same architecture)."""
        return self._module.state_dict()

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, num_updates: int | None = None
    ) -> Any:
        """Load averaged weights (``module.``/``_orig_mod.`` prefixes removed); optionally set the update count."""
        result = self._module.load_state_dict(strip_wrapper_prefixes(state_dict), strict=strict)
        if num_updates is not None:
            self.num_updates = int(num_updates)
        return result

    def __repr__(self) -> str:
        return f"ModelEma(decay={self.decay}, warmup={self.warmup}, num_updates={self.num_updates})"
