"""The epoch loop every stage runs: per-iteration learning rate, autocast (bf16, or fp16 with a GradScaler),
accumulation, clipping, EMA, logs, periodic evaluation, a non-finite-loss guard, and atomic checkpoints that a
killed run resumes from exactly.

Stages differ only in their step (:mod:`ferfast.engine.steps`) and schedule; :func:`fit` runs any of them.
``checkpoint-last.pth`` is written after every epoch; resuming from it restores the model, the optimizer, the EMA,
the GradScaler, the best score so far and the random states (every rank's own); the loaders' draws depend only on
(seed, epoch, rank, step), so on the CPU with a fixed seed the losses after a resume equal those of an
uninterrupted run. At start-up, temporary files that a run killed during a checkpoint write left behind are removed
(with a warning), and a damaged ``checkpoint-last.pth`` (empty, truncated, unreadable) is skipped, with a warning
naming it, for the newest numbered ``checkpoint-<epoch>.pth`` that loads; when none loads, one error names them all.

Distributed (``torchrun``; a process group of two or more): :func:`fit` wraps the model in
``DistributedDataParallel`` (``device_ids`` on CUDA), skips the gradient all-reduce on accumulation micro-batches
(``no_sync``), clips gradients and updates the EMA on the bare module, and averages the summed statistics and
non-finite-loss flags over the ranks whenever it reads them (every ``log_every`` steps and at the end of an epoch),
so that every rank takes the same non-finite decision and rank 0 logs the global batch's values.

No host synchronisation per step: the batches arrive through :class:`~ferfast.engine.prefetch.DevicePrefetcher`
(copied ahead on a side stream, normalised on the device), and the steps' statistics stay on the device until a
log step. Only rank 0 writes checkpoints and logs and prints; the others wait for it at the end of each
epoch. Each rank's loss is the mean over its local batch (FixMatch's too); DDP averages the gradients, which for
equal local batches (the loaders' ``drop_last``) is the gradient of the global batch's mean loss.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ferfast.data.augment import FACE_MEAN, FACE_STD
from ferfast.engine.checkpoint import (
    BEST_CHECKPOINT,
    CorruptCheckpointError,
    capture_rng,
    link_checkpoint,
    load_checkpoint,
    load_latest_checkpoint,
    remove_stale_temp_files,
    restore_rng,
    save_epoch_checkpoint,
)
from ferfast.engine.dist import all_gather_objects, all_reduce_mean, barrier, get_rank, get_world_size, is_main_process
from ferfast.engine.ema import ModelEma
from ferfast.engine.logging import (
    ROLLBACK_POLICIES,
    MetricLogger,
    NonFiniteLossError,
    epoch_summary,
    nonfinite_found,
    progress,
)
from ferfast.engine.prefetch import DevicePrefetcher
from ferfast.engine.schedule import set_lr
from ferfast.engine.steps import PRECISIONS, StepOutput, autocast
from ferfast.models.checkpoint import unwrap_model

__all__ = ["BEST_KEY", "RANK_RNG_KEY", "FitConfig", "fit"]

#: checkpoint entry ``{"metric", "value", "epoch"}``: the best evaluation so far (``checkpoint-best.pth``'s)
BEST_KEY = "best"
#: checkpoint entry of a distributed run: every rank's random states, in rank order
RANK_RNG_KEY = "rank_rng"
#: what :class:`FitConfig` does on a non-finite loss
NONFINITE_POLICIES = ROLLBACK_POLICIES
#: torch.compile's modes that :class:`FitConfig` accepts
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def _check_int(value: Any, name: str, *, minimum: int = 1, allow_none: bool = False) -> None:
    """An int (not a bool) of at least ``minimum`` (1: positive, 0: non-negative), or None if allowed."""
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be a {kind} int{' or None' if allow_none else ''}, got {value!r}")


@dataclass
class FitConfig:
    """How :func:`fit` trains: epochs, the learning rate at a fractional epoch, precision, and housekeeping."""

    epochs: int
    lr_at: Callable[[float], float]  #: learning rate at a fractional epoch (MAE sets it every iteration)
    output_dir: Path
    precision: str = "fp32"  #: "bf16" or "fp16" autocast (fp16 with a GradScaler), or "fp32"
    clip_grad: float | None = None  #: max gradient norm, or None
    accum_steps: int = 1  #: gradient accumulation (optimizer steps every accum_steps batches)
    #: a NaN/inf loss "stop"s the run, or "rollback"s to the last checkpoint. The loss is not read every step (that
    #: would synchronise the host with the device): its finiteness accumulates on the device and is checked every
    #: ``log_every`` steps and at the end of each epoch, before the epoch's checkpoint is written; the steps between a
    #: non-finite loss and that check still run (their weights are never saved), and the error names the first one.
    nonfinite: str = "stop"
    #: a JSON-lines record every this many batches, with the means over those batches (0: epoch records only); the
    #: statistics are read from the device only then
    log_every: int = 20
    keep: int | None = 2  #: numbered checkpoints kept besides checkpoint-last.pth (None: all, 0: none)
    save_every: int = 1  #: a numbered checkpoint-<epoch>.pth every this many epochs and after the last
    eval_every: int = 1  #: run fit's ``evaluate`` every this many epochs and after the last
    best_metric: str = "val_accuracy"  #: the ``evaluate`` score (higher is better) that picks checkpoint-best.pth
    compile: bool = False  #: torch.compile the model the step runs
    compile_backend: str = "inductor"  #: torch.compile's backend
    #: torch.compile's mode with inductor: "default", "reduce-overhead" (CUDA graphs: the step must not synchronise,
    #: which ferfast's steps do not) or "max-autotune"
    compile_mode: str = "default"
    image_mean: tuple[float, ...] = FACE_MEAN  #: the loader's normalisation, applied to uint8 images on the device
    image_std: tuple[float, ...] = FACE_STD
    precision_note: str = ""  #: why this precision (e.g. how "auto" chose it), for the start-up line
    show_progress: bool | None = None  #: progress bar (None: on a terminal, rank 0); False also silences the summaries
    print_every: int = 1  #: print the one-line epoch summary every this many epochs and after the last (0: never)
    max_rollbacks: int = 3  #: give up after this many rollbacks in one run

    def __post_init__(self) -> None:
        for name in ("epochs", "accum_steps", "save_every", "eval_every"):
            _check_int(getattr(self, name), name)
        _check_int(self.print_every, "print_every", minimum=0)
        _check_int(self.log_every, "log_every", minimum=0)
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {self.nonfinite!r}")
        _check_int(self.keep, "keep", minimum=0, allow_none=True)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"clip_grad must be > 0 or None, got {self.clip_grad!r}")
        self.output_dir = Path(self.output_dir)

    def due(self, epoch: int, every: int) -> bool:
        """True after every ``every``-th epoch and after the last one."""
        return (epoch + 1) % every == 0 or epoch + 1 == self.epochs


# ------------------------------------------------------------------------------------ wrapping and stepping


def _device_ids(device: torch.device) -> list[int] | None:
    if device.type != "cuda":
        return None
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _training_module(
    model: nn.Module, device: torch.device, cfg: FitConfig
) -> tuple[nn.Module, DistributedDataParallel | None]:
    """The module the step runs (compiled when asked, then DDP-wrapped in a group of 2+) and its DDP wrapper.

    The compiled module goes inside DDP (nanoGPT's order), so that ``no_sync`` stays on the outer wrapper. With
    ``compile_mode="reduce-overhead"`` on a GPU, inductor replays the forward and backward passes as CUDA graphs;
    the loop marks each iteration's start (``torch.compiler.cudagraph_mark_step_begin``).
    """
    net = model
    if cfg.compile:
        # a mode is inductor's; other backends (aot_eager, eager: tests) take none
        mode = cfg.compile_mode if cfg.compile_backend == "inductor" else None
        net = torch.compile(model, backend=cfg.compile_backend, mode=mode)
    if isinstance(model, DistributedDataParallel):  # wrapped by the caller
        return net, model
    if get_world_size() == 1:
        return net, None
    ddp = DistributedDataParallel(net, device_ids=_device_ids(device))
    return ddp, ddp


def _grad_sync(ddp: DistributedDataParallel | None, sync: bool) -> contextlib.AbstractContextManager:
    """All-reduce this micro-batch's gradients (``sync``), or only accumulate them locally (DDP's ``no_sync``)."""
    return contextlib.nullcontext() if ddp is None or sync else ddp.no_sync()


class _DeviceStats:
    """The steps' statistics summed on the device; the host reads them only in :meth:`read`.

    Every step adds one row, ``[loss is non-finite, *stats]``, to a float64 running sum with one ``torch.stack`` and
    one in-place add (no host synchronisation), and keeps the first step whose loss was not finite in a device
    scalar. :meth:`read` (at log steps and at the end of the epoch) all-reduces the sums over the ranks (so that
    every rank takes the same non-finite decision and rank 0 logs the global batch's values) and copies them to
    the host: one synchronisation.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.keys: list[str] | None = None
        self.steps = 0
        self._sums: Tensor | None = None
        self._first_bad: Tensor | None = None
        self._logged_sums: list[float] | None = None  # host sums at the previous log record
        self._logged_steps = 0

    def _scalar(self, key: str, value: Tensor | float) -> Tensor:
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise ValueError(f"step statistic {key!r} must be a scalar, got a tensor of shape {tuple(value.shape)}")
            return value.detach().reshape(()).to(device=self.device, dtype=torch.float32)
        return torch.full((), float(value), dtype=torch.float32, device=self.device)

    def add(self, loss: Tensor, stats: Mapping[str, Tensor | float], step: int) -> None:
        """Add one step's loss flag and statistics (``step``: the global step, for the non-finite message)."""
        if self.keys is None:
            self.keys = list(stats)
        elif list(stats) != self.keys:
            raise ValueError(f"a step returned the statistics {list(stats)}, earlier steps {self.keys}")
        loss = loss.detach()
        bad = (~torch.isfinite(loss)).any()
        row = torch.stack([bad.to(device=self.device, dtype=torch.float32),
                           *(self._scalar(k, v) for k, v in stats.items())])  # fmt: skip
        if self._sums is None:
            self._sums = torch.zeros(row.shape, dtype=torch.float64, device=self.device)
            self._first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)
        self._sums += row
        bad = bad.to(self.device)
        self._first_bad = torch.where(bad & (self._first_bad < 0), step, self._first_bad)
        self.steps += 1

    def read(self) -> tuple[int, int, dict[str, float]]:
        """``(non-finite steps, first such step of this rank or -1, sums per key)``, averaged over the ranks."""
        if self._sums is None or self._first_bad is None or self.keys is None:
            return 0, -1, {}
        sums = all_reduce_mean(self._sums) if get_world_size() > 1 else self._sums
        host = torch.cat([sums, self._first_bad.to(torch.float64).reshape(1)]).tolist()  # the one sync
        nonfinite, values, first_bad = host[0], host[1:-1], int(host[-1])
        # summed over the ranks' means, a flag counts 1/world: any rank's non-finite loss is seen by all
        return (math.ceil(nonfinite) if nonfinite > 0 else 0), first_bad, dict(zip(self.keys, values))

    def window_means(self, sums: Mapping[str, float]) -> dict[str, float]:
        """The means over the steps since the previous call (``sums`` from :meth:`read`)."""
        now = [sums[k] for k in self.keys or []]
        before = self._logged_sums or [0.0] * len(now)
        n = max(self.steps - self._logged_steps, 1)
        self._logged_sums, self._logged_steps = now, self.steps
        return {k: (a - b) / n for k, a, b in zip(self.keys or [], now, before)}

    def epoch_means(self, sums: Mapping[str, float]) -> dict[str, float]:
        """The means over every step of the epoch (``sums`` from :meth:`read`)."""
        return {k: v / max(self.steps, 1) for k, v in sums.items()}


def _make_scaler(
    precision: str, device: torch.device, scaler: torch.amp.GradScaler | None
) -> torch.amp.GradScaler | None:
    """fp16's GradScaler (the caller's, or a new one for ``device``); None for bf16 and fp32."""
    if precision != "fp16":
        if scaler is not None:
            raise ValueError(f"a GradScaler is for precision 'fp16', not {precision!r}")
        return None
    return scaler if scaler is not None else torch.amp.GradScaler(device.type)


def _optimizer_step(
    optimizer: torch.optim.Optimizer, model: nn.Module, scaler: torch.amp.GradScaler | None, clip_grad: float | None
) -> None:
    """Clip (on unscaled gradients), step (GradScaler skips a step with inf/NaN gradients), zero the gradients."""
    if clip_grad is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# -------------------------------------------------------------------------------------- checkpoints


@dataclass
class _Trained:
    """What a checkpoint holds and a resume restores, besides the epoch."""

    model: nn.Module  #: the bare module
    optimizer: torch.optim.Optimizer
    ema: ModelEma | None
    scaler: torch.amp.GradScaler | None


def _own_checkpoint(output_dir: Path, why: str, stacklevel: int) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of ``output_dir`` that loads (``load_latest_checkpoint``), with one warning (rank 0)
    naming the damaged newer files it skipped and the one used; ``why``: "resuming" or "rolling back";
    ``stacklevel``: the warning's, pointing at :func:`fit`'s caller."""
    found = load_latest_checkpoint(output_dir)
    if found is None:
        return None
    path, ckpt, damaged = found
    if damaged and is_main_process():
        skipped = "; ".join(str(exc) for _, exc in damaged)
        warnings.warn(f"skipping damaged checkpoint{'s' if len(damaged) > 1 else ''} ({skipped}); {why} from "
                      f"{path} instead", stacklevel=stacklevel)  # fmt: skip
    return path, ckpt


def _resume_source(
    output_dir: Path, resume: bool, resume_from: str | os.PathLike | None
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint a run continues from, loaded: its own folder's newest intact one (a killed run; a damaged
    ``checkpoint-last.pth`` falls back to the newest numbered checkpoint that loads), else ``resume_from``."""
    if resume and (own := _own_checkpoint(output_dir, "resuming", stacklevel=4)) is not None:
        return own
    if resume_from is None:
        return None
    path = Path(resume_from)
    if not path.is_file():
        raise FileNotFoundError(f"resume_from: checkpoint not found: {path}")
    return path, load_checkpoint(path)


def _remove_stale_temps(output_dir: Path) -> None:
    """Delete the temporary files that a run killed during a checkpoint write left behind, and say so (rank 0)."""
    if not is_main_process():
        return
    removed = remove_stale_temp_files(output_dir)
    if removed:
        warnings.warn(f"removed {len(removed)} temporary file{'s' if len(removed) > 1 else ''} left in {output_dir} "
                      f"by an interrupted checkpoint write: {', '.join(p.name for p in removed)}",
                      stacklevel=3)  # fmt: skip


def _restore_rng(ckpt: Mapping[str, Any]) -> None:
    """This rank's random states when the checkpoint has every rank's (same world size), else rank 0's."""
    per_rank = ckpt.get(RANK_RNG_KEY)
    if per_rank and len(per_rank) == get_world_size():
        restore_rng(per_rank[get_rank()])
    elif ckpt.get("rng") is not None:
        restore_rng(ckpt["rng"])


def _restore(path: Path, ckpt: Mapping[str, Any], state: _Trained, stage: str) -> tuple[int, dict | None]:
    """Restore a checkpoint written by :func:`fit` and loaded from ``path`` (on every rank); returns the next epoch
    and the best score."""
    saved = (ckpt.get("args") or {}).get("stage")
    if saved is not None and saved != stage:
        raise ValueError(f"{path} is a checkpoint of {saved!r}, not of {stage!r}: resume from the same stage")
    state.model.load_state_dict(ckpt["model"])
    if ckpt.get("optimizer") is not None:
        state.optimizer.load_state_dict(ckpt["optimizer"])
    if state.ema is not None and ckpt.get("ema") is not None:
        state.ema.load_state_dict(ckpt["ema"], num_updates=ckpt.get("ema_num_updates"))
    if state.scaler is not None and ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    _restore_rng(ckpt)
    return int(ckpt["epoch"]) + 1, ckpt.get(BEST_KEY)


def _save(cfg: FitConfig, epoch: int, state: _Trained, best: dict | None, improved: bool, **meta: Any) -> None:
    """checkpoint-last.pth (+ the numbered and best links) from rank 0, with every rank's random states; all wait."""
    rank_rng = all_gather_objects(capture_rng()) if get_world_size() > 1 else None  # a collective: every rank
    if is_main_process():
        extra: dict[str, Any] = {}
        if best is not None:
            extra[BEST_KEY] = best
        if rank_rng is not None:
            extra[RANK_RNG_KEY] = rank_rng
        last = save_epoch_checkpoint(
            cfg.output_dir, epoch=epoch, keep=cfg.keep, numbered=cfg.due(epoch, cfg.save_every), model=state.model,
            optimizer=state.optimizer, scaler=state.scaler, ema=state.ema, extra=extra, **meta,
        )  # fmt: skip
        if improved:
            link_checkpoint(last, cfg.output_dir / BEST_CHECKPOINT)
    barrier()  # a rollback or the next stage reads what rank 0 wrote


def _evaluate(
    evaluate: Callable[[int], Mapping[str, float]], epoch: int, cfg: FitConfig, best: dict | None
) -> tuple[dict[str, float], dict | None, bool]:
    """Run ``evaluate``; returns its scores, the best score so far and whether this epoch improved it."""
    scores = {k: float(v) for k, v in evaluate(epoch).items()}
    if cfg.best_metric not in scores:
        raise ValueError(f"evaluate returned {sorted(scores)}, without best_metric {cfg.best_metric!r}")
    value = scores[cfg.best_metric]
    if best is not None and not value > best["value"]:
        return scores, best, False
    return scores, {"metric": cfg.best_metric, "value": value, "epoch": epoch}, True


# ------------------------------------------------------------------------------------------- the loop


def _train_one_epoch(
    step_fn: Callable[[nn.Module, Mapping[str, torch.Tensor]], StepOutput],
    net: nn.Module,
    ddp: DistributedDataParallel | None,
    state: _Trained,
    loader: Any,
    cfg: FitConfig,
    device: torch.device,
    epoch: int,
    logger: MetricLogger | None,
    stage: str,
) -> dict[str, float] | None:
    """One pass over ``loader`` (MAE's ``train_one_epoch``): the epoch's mean statistics and its last learning rate,
    or None when a non-finite loss asks for a rollback.

    Nothing in a step reads a tensor on the host: the statistics and the loss's finiteness accumulate on the device
    (:class:`_DeviceStats`) and are read every ``log_every`` steps (a log record, the progress bar's numbers, the
    non-finite check) and at the end of the epoch.
    """
    loader.set_epoch(epoch)
    net.train()
    optimizer, steps = state.optimizer, len(loader)
    stats = _DeviceStats(device)
    lr = 0.0
    optimizer.zero_grad(set_to_none=True)
    bar = progress(loader, desc=f"{stage} epoch {epoch + 1}/{cfg.epochs}", total=steps, enabled=cfg.show_progress,
                   leave=False)  # the epoch summary line stays instead
    graphs = cfg.compile and cfg.compile_mode == "reduce-overhead" and device.type == "cuda"
    for i, batch in enumerate(bar):  # on the device, images normalised (DevicePrefetcher)
        global_step = epoch * steps + i
        if i % cfg.accum_steps == 0:
            lr = set_lr(optimizer, cfg.lr_at(epoch + i / steps))
        sync = (i + 1) % cfg.accum_steps == 0 or i + 1 == steps
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: the last one's graph outputs are free
        with _grad_sync(ddp, sync):
            with autocast(device, cfg.precision):
                out = step_fn(net, batch)
            stats.add(out.loss, out.stats, global_step)
            scaled = out.loss / cfg.accum_steps
            (state.scaler.scale(scaled) if state.scaler is not None else scaled).backward()
        if sync:
            _optimizer_step(optimizer, state.model, state.scaler, cfg.clip_grad)
            if state.ema is not None:
                state.ema.update(state.model)
        if cfg.log_every and (i + 1) % cfg.log_every == 0 and i + 1 < steps:
            nonfinite, first_bad, sums = stats.read()  # every rank: the read is collective under DDP
            if nonfinite and nonfinite_found(cfg.nonfinite, stage, epoch, nonfinite, first_bad, global_step):
                return None
            means = stats.window_means(sums)
            if logger is not None:
                logger.log({"stage": stage, "epoch": epoch, "lr": lr, **means}, step=global_step, prefix=stage)
            bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()}, refresh=False)
    nonfinite, first_bad, sums = stats.read()
    if nonfinite and nonfinite_found(cfg.nonfinite, stage, epoch, nonfinite, first_bad, epoch * steps + steps - 1):
        return None
    if cfg.log_every and steps % cfg.log_every == 0:  # the last step is a log step too: one read serves both
        means = stats.window_means(sums)
        if logger is not None:
            logger.log({"stage": stage, "epoch": epoch, "lr": lr, **means}, step=epoch * steps + steps - 1,
                       prefix=stage)  # fmt: skip
    return {**stats.epoch_means(sums), "lr": float(lr)}


def start_line(cfg: FitConfig, device: torch.device, steps_per_epoch: int, start_epoch: int = 0) -> str:
    """The start-up summary :func:`fit` prints: device, precision (and why), compilation, steps and where it starts."""
    precision = cfg.precision + (f" ({cfg.precision_note})" if cfg.precision_note else "")
    compiled = "off"
    if cfg.compile:
        compiled = cfg.compile_backend + (f", mode {cfg.compile_mode}" if cfg.compile_backend == "inductor" else "")
    where = f"resuming at epoch {start_epoch + 1}" if start_epoch else "from the start"
    world = f" x {get_world_size()} processes" if get_world_size() > 1 else ""
    return (f"device {device}{world} | precision {precision} | compile {compiled} | {cfg.epochs} epochs of "
            f"{steps_per_epoch} steps, {where}")  # fmt: skip


def fit(
    step_fn: Callable[[nn.Module, Mapping[str, torch.Tensor]], StepOutput],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    config: FitConfig,
    *,
    device: torch.device | str = "cpu",
    ema: ModelEma | None = None,
    args: Mapping[str, Any] | None = None,
    class_names: list[str] | None = None,
    logger: MetricLogger | None = None,
    resume: bool = True,
    resume_from: str | os.PathLike | None = None,
    evaluate: Callable[[int], Mapping[str, float]] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    stage: str = "train",
) -> list[dict[str, float]]:
    """Train ``model`` for ``config.epochs`` epochs of ``loader`` with ``step_fn``; returns one record per epoch run.

    ``loader`` has ``set_epoch(epoch)``, ``len()`` and yields batch dicts (the ferfast loaders, uint8 or normalised
    float images, pinned for an asynchronous copy); :class:`~ferfast.engine.prefetch.DevicePrefetcher` copies the
    next batch to ``device`` while a step runs and normalises its images there (``config.image_mean/image_std``),
    so ``step_fn`` gets batches on the device with float images, and the module to run (compiled and/or
    DDP-wrapped, see the module docstring). ``resume``: continue from
    ``output_dir``'s own newest intact checkpoint when there is one (a killed run; see the module docstring for a
    damaged ``checkpoint-last.pth``); otherwise from ``resume_from`` when given
    (a checkpoint of the same ``stage``). ``evaluate(epoch) -> scores`` runs every ``eval_every`` epochs and after
    the last (on every rank: it may be collective); its scores join the epoch record and the log, and
    ``best_metric`` picks ``checkpoint-best.pth``. ``scaler``: fp16's GradScaler (default: a new one).
    ``on_epoch_start`` lets a stage reseed its own random draws per epoch (e.g. face-IoU Mixup's generator).
    """
    device = torch.device(device)
    cfg = config
    args = {**(args or {}), "stage": stage}
    bare = unwrap_model(model)
    state = _Trained(bare, optimizer, ema, _make_scaler(cfg.precision, device, scaler))
    start_epoch, best = 0, None
    _remove_stale_temps(cfg.output_dir)
    if (source := _resume_source(cfg.output_dir, resume, resume_from)) is not None:
        start_epoch, best = _restore(*source, state, stage)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError("the loader yields no batch per epoch (dataset smaller than one batch with drop_last?)")
    net, ddp = _training_module(model, device, cfg)
    batches = DevicePrefetcher(loader, device, cfg.image_mean, cfg.image_std)
    if is_main_process() and cfg.show_progress is not False and cfg.print_every and start_epoch < cfg.epochs:
        print(f"{stage}: {start_line(cfg, device, steps_per_epoch, start_epoch)}", flush=True)
    history: list[dict[str, float]] = []
    rollbacks = 0
    epoch = start_epoch
    while epoch < cfg.epochs:
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        t0 = time.perf_counter()
        means = _train_one_epoch(step_fn, net, ddp, state, batches, cfg, device, epoch, logger, stage)
        if means is None:  # a non-finite loss, and the rollback policy
            rollbacks += 1
            last = None
            try:
                if rollbacks <= cfg.max_rollbacks:
                    last = _own_checkpoint(cfg.output_dir, "rolling back", stacklevel=3)
            except CorruptCheckpointError as exc:
                raise NonFiniteLossError(f"{stage}: non-finite loss at epoch {epoch}; {exc}") from None
            if last is None:
                why = "no checkpoint to roll back to"
                if rollbacks > cfg.max_rollbacks:
                    why = f"gave up after {cfg.max_rollbacks} rollbacks"
                raise NonFiniteLossError(f"{stage}: non-finite loss at epoch {epoch}; {why}")
            epoch, best = _restore(*last, state, stage)
            continue
        record = {"epoch": float(epoch), **means, "time_s": time.perf_counter() - t0}
        improved = False
        if evaluate is not None and cfg.due(epoch, cfg.eval_every):
            scores, best, improved = _evaluate(evaluate, epoch, cfg, best)
            record.update(scores)
        history.append(record)
        if logger is not None:
            logger.log({"stage": stage, **record}, step=(epoch + 1) * steps_per_epoch, prefix=f"{stage}/epoch")
        _save(cfg, epoch, state, best, improved, args=args, class_names=class_names)
        if is_main_process() and cfg.show_progress is not False and cfg.print_every and cfg.due(epoch, cfg.print_every):
            print(f"{stage} " + epoch_summary(epoch + 1, {k: v for k, v in record.items() if k != "epoch"},
                                              total_epochs=cfg.epochs, elapsed_s=record["time_s"]), flush=True)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
        epoch += 1
    if history and not all(math.isfinite(v) for v in history[-1].values()):
        raise NonFiniteLossError(f"{stage}: the last epoch's statistics are not finite: {history[-1]}")
    return history
