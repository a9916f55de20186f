"""The stage drivers' start-up summary: one ``<stage>: ...`` line each for the data, the label split, the model,
its weights and the loader (rank 0, unless ``run.print_every`` is 0)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ferfast.config import TrainConfig
from ferfast.engine.dist import is_main_process
from ferfast.engine.stage_data import FERData, split_path

__all__ = ["describe_data", "describe_loader", "describe_model", "describe_pretrained", "say"]


def say(cfg: TrainConfig, stage: str, lines: list[str]) -> None:
    """The start-up summary (rank 0, unless ``run.print_every`` is 0): one ``stage: ...`` line each."""
    if is_main_process() and cfg.run.print_every:
        for line in lines:
            print(f"{stage}: {line}", flush=True)


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def describe_model(model: nn.Module, cfg: TrainConfig, name: str) -> str:
    params = sum(p.numel() for p in model.parameters())
    pooling = ""
    if not name.startswith("mae_"):
        pooling = ", mean of the patch tokens (MAE's pooling)" if cfg.model.global_pool else ", [CLS] after norm"
    return f"model {name}: {_count(params)} parameters, {cfg.data.image_size} px images{pooling}"


def describe_loader(loader: object, cfg: TrainConfig) -> str:
    """The loader's backend, where it decodes, its workers."""
    name = type(loader).__name__
    if "Dali" in name:
        where = getattr(loader, "device", cfg.data.dali_device)
        return f"loader DALI ({where} decoding)"
    workers = cfg.data.num_workers
    return (
        f"loader torch ({workers} worker process{'es' if workers != 1 else ''})"
        if workers
        else "loader torch (decoding in the main process)"
    )


def describe_pretrained(start: Path | None, report: object | None) -> str:
    """Where stage 1's weights come from and what loaded (the missing and unexpected keys, by name)."""
    if start is None:
        return "weights: random initialisation (no model.pretrained: training from scratch)"
    missing = list(getattr(report, "missing_keys", []))
    unexpected = list(getattr(report, "unexpected_keys", []))
    ignored = len(getattr(report, "ignored_keys", []))
    interpolated = ", ".join(f"{k} {list(a)} -> {list(b)}" for k, (a, b) in getattr(report, "interpolated", {}).items())
    text = (
        f"weights: {start}; missing keys (initialised here): {', '.join(missing) or 'none'}; unexpected keys: "
        f"{', '.join(unexpected) or 'none'}; {ignored} pretraining-only keys (decoder...) ignored"
    )
    return text + (f"; interpolated {interpolated}" if interpolated else "")


def describe_data(data: FERData, cfg: TrainConfig) -> list[str]:
    """The labeled dataset, the label split and where it comes from, and the evaluation split."""
    train, split = data.train, data.split
    source = "drawn now" if data.pending_split_file is not None else "from its file"
    where = split_path(cfg)
    val = data.validation
    which = cfg.data.val_split or cfg.data.test_split
    return [
        f"data {cfg.data.root} ({type(train).__name__}): {len(train)} training images of {len(data.class_names)} "
        f"classes ({', '.join(data.class_names)})",
        f"labels: {len(split.labeled)} labeled ({split.fraction:g} of the training images, seed {split.seed}), "
        f"{len(split.unlabeled)} unlabeled; split {source} ({where})",
        f"validation: {len(val)} images of the {which!r} split after each evaluated epoch",
    ]
