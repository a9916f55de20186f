"""Loading MAE-format checkpoints: official MAE / SSFER pretraining weights into a ViT for fine-tuning,
and MAE checkpoints back into :class:`MaskedAutoencoderViT` to resume pretraining.

Fine-tuning follows MAE's ``main_finetune.py`` (and SSFER's ``fine-tune.py``, which is based on it): the
pretraining decoder (``decoder_*``, ``mask_token``) is dropped, a ``head`` of another class count is dropped (and
the new head re-initialised with std 2e-5), ``pos_embed`` is interpolated (bicubic) to the model's grid. With
[CLS] pooling (``global_pool=False``: SSFER's fine-tuning, ferfast's default) the encoder's final ``norm`` is
loaded, as it is the norm the [CLS] feature goes through; with global pooling (MAE's fine-tuning default) that
``norm`` is ignored and ``fc_norm`` starts fresh (``copy_norm_to_fc_norm`` copies it instead). Every other
missing or unexpected key is an error that names the keys.

Every checkpoint file ferfast reads goes through :func:`torch_load_safe`: ``torch.load(weights_only=True)``, which
unpickles only tensors and plain types, never code. A file that holds other Python objects raises
:class:`UnsafeCheckpointError` (which says why it is refused and does not pass on torch's advice to turn the
protection off); a damaged or foreign file raises :class:`CorruptCheckpointError`; both name the file.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ferfast.models.pos_embed import interpolate_pos_embed

__all__ = [
    "CheckpointError",
    "CorruptCheckpointError",
    "LoadReport",
    "UnsafeCheckpointError",
    "load_mae_checkpoint",
    "load_pretrained",
    "mae_state_dict",
    "read_state_dict",
    "strip_wrapper_prefixes",
    "torch_load_safe",
    "unwrap_model",
]

logger = logging.getLogger(__name__)

#: Wrapper prefixes stripped from checkpoint keys: DDP and ``torch.compile``.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint file that ferfast cannot use; the message names the file (``path``)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file that is truncated, empty, damaged or not a PyTorch checkpoint at all."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file holding Python objects (classes, functions) that ferfast refuses to unpickle."""


#: the weights-only unpickler's refusals of a global (class / function) or of an object built from one, as
#: opposed to its complaints about bytes that are not a pickle at all (``Unsupported operand``)
_BLOCKED_RE = re.compile(
    r"GLOBAL (?P<global>\S+)|unrecognized function (?P<func>[^\n]+?)(?: which belongs|$)"
    r"|Can only (?:create new object for|build) [^\n]*?but got (?P<cls>[^\n]+)",
    re.MULTILINE,
)


def _unpickler_detail(message: str) -> str:
    """The weights-only unpickler's own complaint inside torch's message, without torch's advice around it."""
    inner = message.rsplit("WeightsUnpickler error:", 1)[-1]
    inner = inner.split("Check the documentation of torch.load", 1)[0]
    inner = inner.split(" Please use `torch.serialization", 1)[0]
    lines = [ln.strip() for ln in inner.strip().splitlines() if ln.strip() and "weights_only" not in ln]
    return lines[0] if lines else "not a pickle torch can read"


def torch_load_safe(path: str | os.PathLike, map_location: Any = "cpu", *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` (``argparse.Namespace``, MAE's ``args``, allowed), its failures
    turned into errors that name the file and say what is wrong.

    ``mmap=True`` maps the tensors' storage instead of reading it: a caller that wants the checkpoint's small
    entries (its config, its epoch) does not read the weights and optimizer state (files in the legacy, non-zip
    format are read whole).

    Raises FileNotFoundError for a missing file; :class:`UnsafeCheckpointError` when the file holds Python
    objects other than tensors and plain types (unpickling those can run arbitrary code, so ferfast refuses
    them, and does not suggest lifting the protection); :class:`CorruptCheckpointError` for an empty,
    truncated, damaged or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            mmap = mmap and zipfile.is_zipfile(path)
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if (m := _BLOCKED_RE.search(text)) is not None:
            what = next(g for g in m.groups() if g)
            raise UnsafeCheckpointError(
                f"checkpoint {path} holds Python objects ({what.strip()}) besides tensors and plain values; "
                "ferfast refuses to unpickle them because unpickling can run arbitrary code. Use a checkpoint "
                "that holds only tensors and plain types (dicts, lists, numbers, strings), as ferfast's and MAE's "
                "own checkpoints do",
                path,
            ) from None
        raise CorruptCheckpointError(
            f"checkpoint {path} is damaged or not a PyTorch checkpoint: {_unpickler_detail(text)}", path
        ) from None
    except EOFError as exc:
        size = path.stat().st_size if path.exists() else 0
        what = "empty" if size == 0 else f"truncated ({size} bytes)"
        raise CorruptCheckpointError(f"checkpoint {path} is {what}: ended before its data did", path) from exc
    except OSError as exc:
        raise CorruptCheckpointError(f"checkpoint {path} cannot be read: {exc.strerror or exc}", path) from exc
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().split(". ", 1)[0].splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt or truncated: {first}", path) from exc


@dataclass
class LoadReport:
    """What a checkpoint load did: keys missing / unexpected after the load, and keys dropped or changed on purpose."""

    missing_keys: list[str] = field(default_factory=list)  #: model keys left at their init
    unexpected_keys: list[str] = field(default_factory=list)  #: checkpoint keys not loaded, not expected
    ignored_keys: list[str] = field(default_factory=list)  #: dropped on purpose: decoder; norm under global pooling
    dropped_head_keys: list[str] = field(default_factory=list)  #: ``head.*`` of another class count
    interpolated: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)  #: old, new
    renamed: dict[str, str] = field(default_factory=dict)  #: checkpoint key -> model key
    kept_model_keys: list[str] = field(default_factory=list)  #: model values kept over a checkpoint's

    def summary(self) -> str:
        """One line per non-empty field, for logs."""
        lines = []
        for name in ("missing_keys", "unexpected_keys", "ignored_keys", "dropped_head_keys", "kept_model_keys"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"{name} ({len(keys)}): {_abbreviate(keys)}")
        for key, (old, new) in self.interpolated.items():
            lines.append(f"interpolated {key}: {list(old)} -> {list(new)}")
        for old, new in self.renamed.items():
            lines.append(f"renamed {old} -> {new}")
        return "\n".join(lines) if lines else "all keys matched"

    def __str__(self) -> str:
        return self.summary()


def _abbreviate(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A state dict without the ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) key prefixes."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        if key in out:
            raise ValueError(f"state dict has two entries for {key!r} once wrapper prefixes are removed")
        out[key] = value
    return out


def mae_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict in MAE's naming, without DDP/compile prefixes (the ``'model'`` entry of a checkpoint)."""
    return strip_wrapper_prefixes(unwrap_model(model).state_dict())


def read_state_dict(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Tensor]:
    """The model state dict of a checkpoint file or dict: ``ckpt['model']`` (MAE/SSFER), ``['state_dict']`` or bare.

    Files are read with :func:`torch_load_safe` (``torch.load(weights_only=True)``; ``argparse.Namespace``, the
    ``'args'`` that MAE's ``save_model`` stores, is allowed; a file holding other Python objects raises
    :class:`UnsafeCheckpointError`, a damaged one :class:`CorruptCheckpointError`). Wrapper prefixes (``module.``,
    ``_orig_mod.``) are stripped.
    """
    name = "state dict"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        name = str(path)
        source = torch_load_safe(path)
    if not isinstance(source, Mapping):
        raise TypeError(f"checkpoint {name} must be a dict, got {type(source).__name__}")
    for entry in ("model", "state_dict"):
        if isinstance(source.get(entry), Mapping):
            source = source[entry]
            break
    bad = [str(k) for k, v in source.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise TypeError(
            f"checkpoint {name} is not a state dict (expected a 'model' entry or name -> tensor pairs); "
            f"non-tensor entries: {_abbreviate(bad)}"
        )
    return strip_wrapper_prefixes(source)


def _is_decoder_key(key: str) -> bool:
    return key.startswith("decoder_") or key == "mask_token"


def _grid_of(model: nn.Module) -> tuple[int, int]:
    patch_embed = getattr(model, "patch_embed", None)
    grid = getattr(patch_embed, "grid_size", None)
    if grid is None:
        raise TypeError(f"model {type(model).__name__} has no patch_embed.grid_size; is it a ferfast ViT?")
    return tuple(grid)


def _check_shapes(state: Mapping[str, Tensor], target: Mapping[str, Tensor], name: str) -> None:
    wrong = [
        f"{k}: checkpoint {list(v.shape)} vs model {list(target[k].shape)}"
        for k, v in state.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    if wrong:
        raise ValueError(f"checkpoint {name} does not fit the model (another architecture?): " + "; ".join(wrong))


def _pooling_hint(state: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> str:
    """A hint for a checkpoint fine-tuned with global pooling (it has ``fc_norm``) loaded into a [CLS] model."""
    if "fc_norm.weight" in state and "fc_norm.weight" not in target:
        return "; the checkpoint has fc_norm (fine-tuned with global_pool=True): build the model with global_pool=True"
    return ""


def load_pretrained(
    model: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    strict_report: bool = True,
    copy_norm_to_fc_norm: bool = False,
    head_init_std: float | None = 2e-5,
) -> LoadReport:
    """Load pretrained (MAE / SSFER) weights into a ViT for fine-tuning and report what was loaded.

    Args:
        model: a :class:`~ferfast.models.VisionTransformer` (or a DDP / compiled wrapper of one).
        source: a checkpoint path, ``{'model': state_dict, ...}`` or a bare state dict, in MAE's naming.
        strict_report: raise a ValueError naming the keys (before anything is loaded) when a model key other
            than ``head.*`` / ``fc_norm.*`` is missing or a checkpoint key is neither loaded nor a known
            pretraining key; otherwise such keys are only reported.
        copy_norm_to_fc_norm: with global pooling, load the encoder's ``norm.*`` into ``fc_norm.*``
            (default: MAE's fine-tuning leaves ``fc_norm`` at its init and ignores ``norm``). Without global
            pooling ([CLS], SSFER's) the model has ``norm`` itself and loads the checkpoint's ``norm.*`` into it.
        head_init_std: when the head is not loaded, re-initialise its weight with this truncated-normal
            std and zero its bias, as MAE's ``main_finetune.py`` (2e-5); ``None`` keeps the model's init.
    """
    model = unwrap_model(model)
    name = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    state = read_state_dict(source)
    target = model.state_dict()
    report = LoadReport()

    for key in [k for k in state if _is_decoder_key(k) and k not in target]:
        report.ignored_keys.append(key)
        del state[key]
    for key in [k for k in state if k.startswith("head.")]:
        if key not in target or tuple(state[key].shape) != tuple(target[key].shape):
            report.dropped_head_keys.append(key)
            del state[key]
    uses_fc_norm = "fc_norm.weight" in target and "norm.weight" not in target
    if uses_fc_norm and "fc_norm.weight" not in state:
        for key in [k for k in state if k.startswith("norm.")]:
            if copy_norm_to_fc_norm:
                new = "fc_" + key
                state[new] = state.pop(key)
                report.renamed[key] = new
            else:
                report.ignored_keys.append(key)
                del state[key]
    if "pos_embed" in state and "pos_embed" in target and state["pos_embed"].shape != target["pos_embed"].shape:
        old = tuple(state["pos_embed"].shape)
        prefix = getattr(model, "num_prefix_tokens", 1)
        state["pos_embed"] = interpolate_pos_embed(state["pos_embed"], _grid_of(model), prefix)
        report.interpolated["pos_embed"] = (old, tuple(state["pos_embed"].shape))

    _check_shapes(state, target, name)
    report.missing_keys = [k for k in target if k not in state]
    report.unexpected_keys = [k for k in state if k not in target]

    expected_missing = ("head.", "fc_norm.") if uses_fc_norm and not copy_norm_to_fc_norm else ("head.",)
    wrong_missing = [k for k in report.missing_keys if not k.startswith(expected_missing)]
    if strict_report and (wrong_missing or report.unexpected_keys):
        raise ValueError(
            f"checkpoint {name} does not match {type(model).__name__} (another architecture?): "
            f"missing keys: {_abbreviate(wrong_missing) or 'none'}; "
            f"unexpected keys: {_abbreviate(report.unexpected_keys) or 'none'}" + _pooling_hint(state, target)
        )
    model.load_state_dict(state, strict=False)
    head = getattr(model, "head", None)
    if head_init_std is not None and isinstance(head, nn.Linear) and "head.weight" in report.missing_keys:
        with torch.no_grad():
            nn.init.trunc_normal_(head.weight, std=head_init_std)
            if head.bias is not None:
                nn.init.zeros_(head.bias)
    logger.info("loaded %s into %s:\n%s", name, type(model).__name__, report.summary())
    return report


def load_mae_checkpoint(
    model: nn.Module, source: str | os.PathLike[str] | Mapping[str, Any], *, strict: bool = True
) -> LoadReport:
    """Load an MAE checkpoint (encoder + decoder) into a :class:`MaskedAutoencoderViT`, e.g. to resume pretraining.

    The fixed sin-cos tables ``pos_embed`` / ``decoder_pos_embed`` are kept from the model when the
    checkpoint's grid differs (they are a function of the grid). With ``strict`` any other missing or
    unexpected key raises a ValueError naming it; with ``strict=False`` (e.g. an encoder-only checkpoint)
    they are only reported.
    """
    model = unwrap_model(model)
    name = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    state = read_state_dict(source)
    target = model.state_dict()
    report = LoadReport()
    for key in ("pos_embed", "decoder_pos_embed"):
        if key in state and key in target and state[key].shape != target[key].shape:
            del state[key]
            report.kept_model_keys.append(key)
    _check_shapes(state, target, name)
    report.missing_keys = [k for k in target if k not in state and k not in report.kept_model_keys]
    report.unexpected_keys = [k for k in state if k not in target]
    if strict and (report.missing_keys or report.unexpected_keys):
        raise ValueError(
            f"checkpoint {name} does not match {type(model).__name__}: "
            f"missing keys: {_abbreviate(report.missing_keys) or 'none'}; "
            f"unexpected keys: {_abbreviate(report.unexpected_keys) or 'none'}"
        )
    model.load_state_dict(state, strict=False)
    logger.info("loaded %s into %s:\n%s", name, type(model).__name__, report.summary())
    return report
