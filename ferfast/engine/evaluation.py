"""Evaluation: accuracy, mean class accuracy, macro-F1 and the confusion matrix (JSON + PNG) of a classifier on a
split, and the stage drivers' validation during training (:func:`validator`).

The images are whole images resized, in dataset order; in a distributed run every rank evaluates its shard and the
predictions are gathered, so the metrics are a single process's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ferfast._io import write_text_atomic
from ferfast.config import TrainConfig
from ferfast.data import FaceDataset
from ferfast.engine.dist import all_gather_tensor, is_main_process
from ferfast.engine.metrics import classification_metrics, save_confusion_png
from ferfast.engine.prefetch import DevicePrefetcher
from ferfast.engine.stage_data import resolve_device, stage_loader

__all__ = ["EVAL_BATCH_SIZE", "evaluate", "validator"]

#: images per evaluation batch
EVAL_BATCH_SIZE = 64


def _eval_loader(dataset: FaceDataset, cfg: TrainConfig) -> DevicePrefetcher:
    """Whole images resized, in dataset order, sharded over the ranks (padded by wrapping around), on the run's
    device with their images normalised (the next batch copied while one is evaluated, on CUDA)."""
    device = resolve_device(cfg.run.device)
    augment = cfg.data.augment()
    loader = stage_loader("eval", dataset, cfg, device, batch_size=EVAL_BATCH_SIZE, config=augment)
    return DevicePrefetcher(loader, device, augment.mean, augment.std)


@torch.no_grad()
def _predictions(model: nn.Module, loader: DevicePrefetcher, num_images: int) -> tuple[Tensor, Tensor]:
    """True and predicted labels of the ``num_images`` images in dataset order, gathered from every rank's shard.

    The eval plan gives rank ``r`` the positions ``r, r + world, ...`` (``DistributedSampler``'s rule, padded by
    wrapping around), so interleaving the ranks' results restores the dataset order and the padding falls at the end.
    """
    loader.set_epoch(0)
    preds, labels = [], []
    for batch in loader:  # on the device, images normalised (a DevicePrefetcher)
        preds.append(model(batch["images"]).argmax(-1))
        labels.append(batch["labels"])

    def in_dataset_order(t: Tensor) -> Tensor:
        return all_gather_tensor(torch.cat(t)).transpose(0, 1).reshape(-1)[:num_images].cpu()

    return in_dataset_order(labels), in_dataset_order(preds)


def evaluate(model: nn.Module, dataset: FaceDataset, cfg: TrainConfig, out_dir: Path | None = None) -> dict:
    """Accuracy, mean class accuracy, macro-F1 and the confusion matrix on ``dataset`` (whole images resized);
    with ``out_dir``, also ``metrics.json`` and ``confusion.png`` there (written by rank 0).

    In a distributed run every rank evaluates its shard and gets the metrics of the whole dataset.
    """
    device = resolve_device(cfg.run.device)
    model = model.to(device).eval()
    y_true, y_pred = _predictions(model, _eval_loader(dataset, cfg), len(dataset))
    metrics = classification_metrics(y_true, y_pred, len(dataset.class_names))
    result = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in metrics.items()}
    result["class_names"] = list(dataset.class_names)
    if out_dir is not None and is_main_process():
        out_dir = Path(out_dir)
        write_text_atomic(out_dir / "metrics.json", json.dumps(result, indent=2, default=float) + "\n")
        save_confusion_png(metrics["confusion"], list(dataset.class_names), out_dir / "confusion.png")
    return result


def validator(model: nn.Module, dataset: FaceDataset, cfg: TrainConfig) -> Callable[[int], dict[str, float]]:
    """``fit``'s ``evaluate``: ``model`` (the EMA, updated in place) on ``dataset`` as ``val_*`` scores."""
    loader = _eval_loader(dataset, cfg)
    device = resolve_device(cfg.run.device)

    def scores(epoch: int) -> dict[str, float]:
        y_true, y_pred = _predictions(model.to(device).eval(), loader, len(dataset))
        m = classification_metrics(y_true, y_pred, len(dataset.class_names))
        return {f"val_{k}": float(m[k]) for k in ("accuracy", "mean_class_accuracy", "macro_f1")}

    return scores
