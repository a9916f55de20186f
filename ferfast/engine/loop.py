"""The epoch loop every stage runs: per-iteration learning rate, autocast (bf16, or fp16 with a GradScaler),
accumulation, clipping, EMA, logs, periodic evaluation, a non-finite-loss guard, and atomic checkpoints that a
killed run resumes from exactly.

Stages differ only in their step (:mod:`ferfast.engine.steps`) and schedule; :func:`fit` runs any of them. What a
checkpoint holds besides the weights, and restoring it, is :mod:`ferfast.engine.resume`'s.
``checkpoint-last.pth`` is written after every epoch, and with ``save_every_steps`` also every that many steps
inside an epoch (at an optimizer step: never between two accumulated micro-batches); resuming from it restores the
model, the optimizer, the EMA, the GradScaler, the best score so far, the random states (every rank's own) and, in
the middle of an epoch, the step and the epoch's running sums (so the epoch's means and the next log record cover
the whole epoch); the loader restarts with ``set_epoch(epoch, start_step)`` and its draws depend only on (seed,
epoch, rank, step), so on the CPU with a fixed seed the weights after a kill and resume equal those of an
uninterrupted run. At start-up, temporary files that a run killed during a checkpoint write left behind are removed
(with a warning), and a damaged ``checkpoint-last.pth`` (empty, truncated, unreadable) is skipped, with a warning
naming it, for the newest numbered ``checkpoint-<N>.pth`` that loads; when none loads, one error names them all.
The records that the killed run wrote to ``log.jsonl`` after its last checkpoint are dropped at start-up, so that
the log holds each step once.

Epochs are numbered from 1 wherever they are shown: the screen, ``log.jsonl``'s ``"epoch"``, the messages, the
history :func:`fit` returns and the file names (``checkpoint-<N>.pth`` is the state after N epochs). The callbacks
(``evaluate``, ``on_epoch_start``, ``on_epoch_end``) get the 0-based epoch index, and a checkpoint's ``epoch`` field
keeps MAE's meaning (the 0-based index of the last finished epoch); see :mod:`ferfast.engine.checkpoint`.

A non-finite loss with ``nonfinite="rollback"`` reloads the last checkpoint and changes what made it fail: the
learning rate is scaled by a per-run factor halved at every rollback (applied on top of ``lr_at``; kept in the
checkpoints, the log records and the warning) and the batch of the first non-finite step is skipped from then on.
After ``max_rollbacks`` rollbacks the run stops with an error that lists what was tried.

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
import inspect
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ferfast.config import schema as _schema
from ferfast.config.schema import RunConfig, check_run_settings
from ferfast.config.values import _check_int
from ferfast.data.augment import FACE_MEAN, FACE_STD
from ferfast.engine.checkpoint import CorruptCheckpointError
from ferfast.engine.dist import all_gather_objects, all_reduce_mean, get_world_size, is_main_process
from ferfast.engine.ema import ModelEma
from ferfast.engine.logging import (
    MetricLogger,
    NonFiniteLossError,
    epoch_summary,
    nonfinite_found,
    nonfinite_where,
    progress,
)
from ferfast.engine.optim import set_lr
from ferfast.engine.prefetch import DevicePrefetcher
from ferfast.engine.resume import (
    BEST_KEY,
    RANK_RNG_KEY,
    Resumed,
    RunState,
    TrainedState,
    drop_replayed_records,
    own_checkpoint,
    remove_stale_temps,
    restore,
    restore_rank_rng,
    resume_source,
    save_run_checkpoint,
)
from ferfast.engine.steps import PRECISIONS, StepOutput, autocast
from ferfast.models.checkpoint import unwrap_model

__all__ = ["BEST_KEY", "RANK_RNG_KEY", "FitConfig", "fit", "resume_line", "start_line"]  # the keys: resume.py's

#: each rollback multiplies the run's learning-rate factor by this
ROLLBACK_LR_FACTOR = 0.5
#: without a terminal, an epoch of at least this many steps prints a progress line at a log step, at most every
#: _PROGRESS_LINE_EVERY_S seconds
_PROGRESS_LINE_MIN_STEPS = 50
_PROGRESS_LINE_EVERY_S = 30.0
#: what :class:`FitConfig` does on a non-finite loss: ``run.nonfinite``'s values
NONFINITE_POLICIES = _schema.NONFINITE_POLICIES
#: torch.compile's modes that :class:`FitConfig` accepts: ``run.compile_mode``'s values
COMPILE_MODES = _schema.COMPILE_MODES
#: FitConfig's names of the run settings it shares with :class:`~ferfast.config.RunConfig` (the others: the same)
_RUN_NAMES = {"keep": "keep_checkpoints"}
#: the settings :meth:`FitConfig.from_run` takes from a :class:`~ferfast.config.RunConfig`
_FROM_RUN = (
    "nonfinite",
    "log_every",
    "keep",
    "save_every",
    "save_every_steps",
    "eval_every",
    "compile",
    "compile_mode",
    "print_every",
)


@dataclass
class FitConfig:
    """How :func:`fit` trains: epochs, the learning rate at a fractional epoch, precision, and housekeeping."""

    epochs: int
    lr_at: Callable[[float], float]  #: learning rate at a fractional epoch (MAE sets it every iteration)
    output_dir: Path
    precision: str = "fp32"  #: "bf16" or "fp16" autocast (fp16 with a GradScaler), or "fp32"
    clip_grad: float | None = None  #: max gradient norm, or None
    accum_steps: int = 1  #: gradient accumulation (optimizer steps every accum_steps batches)
    #: a NaN/inf loss "stop"s the run, or "rollback"s to the last checkpoint (halving the learning rate and skipping
    #: the first bad step's batch). The loss is not read every step (that would synchronise the host with the
    #: device): its finiteness accumulates on the device and is checked every ``log_every`` steps, before a
    #: mid-epoch checkpoint and at the end of each epoch, before the epoch's checkpoint is written; the steps between
    #: a non-finite loss and that check still run (their weights are never saved), and the error names the first one.
    nonfinite: str = "stop"
    #: a JSON-lines record every this many batches, with the means over those batches (0: epoch records only); the
    #: statistics are read from the device only then. Every record's ``step`` is the global index of the last step
    #: it covers, so each step appears once: the epoch record sits at the epoch's last step (the batches after the
    #: last log step are in its means only)
    log_every: int = 20
    keep: int | None = 2  #: numbered checkpoints kept besides checkpoint-last.pth (None: all, 0: none)
    save_every: int = 1  #: a numbered checkpoint-<N>.pth (after N epochs) every this many epochs and after the last
    #: also write checkpoint-last.pth every this many steps inside an epoch, at the first optimizer step at or after
    #: each multiple (0: only at the epochs' ends); a resume from it continues the epoch exactly
    save_every_steps: int = 0
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
    max_rollbacks: int = 3  #: give up after this many rollbacks in one run (the error lists what each one tried)

    def __post_init__(self) -> None:
        for name in ("epochs", "accum_steps"):
            _check_int(getattr(self, name), name)
        _check_int(self.max_rollbacks, "max_rollbacks", minimum=0)  # 0: give up at the first non-finite loss
        # the settings RunConfig shares: its rule (ferfast.config.schema.RUN_COUNTS), errors under FitConfig's names
        shared = {_RUN_NAMES.get(name, name): getattr(self, name) for name in _FROM_RUN if name != "compile"}
        check_run_settings(shared, names={run: fit for fit, run in _RUN_NAMES.items()})
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"clip_grad must be > 0 or None, got {self.clip_grad!r}")
        self.output_dir = Path(self.output_dir)

    @classmethod
    def from_run(cls, run: RunConfig, **stage_values: Any) -> FitConfig:
        """A stage's settings: ``run``'s (``nonfinite``, ``log_every``, ``keep_checkpoints`` as ``keep``,
        ``save_every``, ``save_every_steps``, ``eval_every``, ``compile``, ``compile_mode``, ``print_every``;
        RunConfig checked them by the same rule) plus ``stage_values`` (``epochs``, ``lr_at``, ``output_dir``,
        ``precision``...), which win."""
        values = {name: getattr(run, _RUN_NAMES.get(name, name)) for name in _FROM_RUN}
        return cls(**{**values, **stage_values})

    def due(self, epoch: int, every: int) -> bool:
        """True after every ``every``-th epoch and after the last one (``epoch``: the 0-based index)."""
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
        row = torch.stack(
            [bad.to(device=self.device, dtype=torch.float32), *(self._scalar(k, v) for k, v in stats.items())]
        )
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

    def window_means(self, sums: Mapping[str, float]) -> dict[str, float] | None:
        """The means over the steps since the previous call (``sums`` from :meth:`read`); None when no step ran
        since (their batches were skipped)."""
        if self.steps == self._logged_steps:
            return None
        now = [sums[k] for k in self.keys or []]
        before = self._logged_sums or [0.0] * len(now)
        n = self.steps - self._logged_steps
        self._logged_sums, self._logged_steps = now, self.steps
        return {k: (a - b) / n for k, a, b in zip(self.keys or [], now, before)}

    def epoch_means(self, sums: Mapping[str, float]) -> dict[str, float]:
        """The means over every step of the epoch (``sums`` from :meth:`read`)."""
        return {k: v / max(self.steps, 1) for k, v in sums.items()}

    def snapshot(self, sums: Mapping[str, float]) -> dict[str, Any]:
        """What a mid-epoch checkpoint keeps so that the epoch's means and the next log record continue exactly
        after a resume (``sums`` from a :meth:`read` that found no non-finite loss): plain floats and ints."""
        keys = list(self.keys or [])
        return {
            "keys": keys,
            "sums": [float(sums[k]) for k in keys],
            "steps": self.steps,
            "logged_sums": None if self._logged_sums is None else [float(v) for v in self._logged_sums],
            "logged_steps": self._logged_steps,
        }

    def load(self, saved: Mapping[str, Any]) -> None:
        """Continue from a :meth:`snapshot` (a mid-epoch resume). Under DDP every rank starts from the global sums
        (the ranks' mean), which :meth:`read`'s mean over the ranks carries on unchanged."""
        keys = [str(k) for k in saved.get("keys") or []]
        if not keys:
            return
        self.keys = keys
        self._sums = torch.tensor([0.0, *map(float, saved["sums"])], dtype=torch.float64, device=self.device)
        self._first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)
        self.steps = int(saved["steps"])
        logged = saved.get("logged_sums")
        self._logged_sums = None if logged is None else [float(v) for v in logged]
        self._logged_steps = int(saved.get("logged_steps", 0))


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


# ---------------------------------------------------------------------------- checkpoints and evaluation


def _save(
    cfg: FitConfig,
    done: int,
    step: int,
    state: TrainedState,
    run: RunState,
    improved: bool = False,
    epoch_stats: dict[str, Any] | None = None,
) -> None:
    """The run's checkpoint (:func:`~ferfast.engine.resume.save_run_checkpoint`), numbered at the end of every
    ``save_every``-th epoch."""
    numbered = step == 0 and cfg.due(done - 1, cfg.save_every)
    save_run_checkpoint(
        cfg.output_dir,
        done,
        step,
        state,
        run,
        epochs=cfg.epochs,
        keep=cfg.keep,
        numbered=numbered,
        improved=improved,
        epoch_stats=epoch_stats,
    )


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


@dataclass
class _NonFinite:
    """A non-finite loss that the rollback policy answers: how many, the first one's global step (over all ranks;
    -1: unknown), the global step of the read that found them, and the 0-based epoch."""

    count: int
    first_bad: int
    step: int
    epoch: int


def _global_first_bad(first_bad: int) -> int:
    """The first non-finite step over the ranks (every rank calls it: a collective under DDP), -1 when none knows."""
    if get_world_size() == 1:
        return first_bad
    found = [int(f) for f in all_gather_objects(first_bad) if f >= 0]
    return min(found) if found else -1


def _nonfinite(cfg: FitConfig, stage: str, epoch: int, count: int, first_bad: int, step: int) -> _NonFinite:
    """React to non-finite losses found at global ``step``: raise (``stop``), or describe them for the rollback."""
    first_bad = _global_first_bad(first_bad)
    if cfg.nonfinite == "stop":
        nonfinite_found("stop", stage, epoch + 1, count, first_bad, step)  # raises
    return _NonFinite(count, first_bad, step, epoch)


# ------------------------------------------------------------------------------------------- the loop


def _set_loader_epoch(loader: Any, epoch: int, start_step: int) -> int:
    """``loader.set_epoch(epoch, start_step)``; returns the batches that the caller must draw and discard itself:
    ``start_step`` for a loader whose ``set_epoch`` takes no ``start_step`` (or that has no ``set_epoch``)."""
    set_epoch = getattr(loader, "set_epoch", None)
    if set_epoch is None:
        return start_step
    if not start_step:
        set_epoch(epoch)
        return 0
    try:
        takes_step = "start_step" in inspect.signature(set_epoch).parameters
    except (TypeError, ValueError):
        takes_step = False
    if takes_step:
        set_epoch(epoch, start_step=start_step)
        return 0
    set_epoch(epoch)
    return start_step


def _progress_lines(cfg: FitConfig, steps: int) -> bool:
    """Plain progress lines instead of a bar: rank 0, progress not switched off or forced, stderr not a terminal,
    and an epoch long enough to wait for."""
    if not is_main_process() or cfg.show_progress is not None or steps < _PROGRESS_LINE_MIN_STEPS:
        return False
    return not bool(getattr(sys.stderr, "isatty", lambda: False)())


def _duration(seconds: float) -> str:
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def _train_one_epoch(
    step_fn: Callable[[nn.Module, Mapping[str, torch.Tensor]], StepOutput],
    net: nn.Module,
    ddp: DistributedDataParallel | None,
    state: TrainedState,
    loader: Any,
    batches: Any,
    cfg: FitConfig,
    device: torch.device,
    epoch: int,
    logger: MetricLogger | None,
    stage: str,
    run: RunState,
    *,
    start_step: int = 0,
    epoch_stats: Mapping[str, Any] | None = None,
    rng: Mapping[str, Any] | None = None,
    save_mid: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, float] | _NonFinite:
    """One pass over ``batches`` (``loader`` behind its prefetcher; MAE's ``train_one_epoch``) from batch
    ``start_step``: the epoch's mean statistics and its last learning rate, or a :class:`_NonFinite` for the
    rollback policy.

    Nothing in a step reads a tensor on the host: the statistics and the loss's finiteness accumulate on the device
    (:class:`_DeviceStats`) and are read every ``log_every`` steps (a log record, the progress bar's numbers, the
    non-finite check), before a mid-epoch checkpoint (``save_mid(step, sums)``, every ``save_every_steps``) and at
    the end of the epoch. A mid-epoch resume passes the checkpoint's running sums (``epoch_stats``) and random
    states (``rng``): those are restored after the first batch is drawn, since a DataLoader draws its base seed
    from torch's generator when its iterator is made (the uninterrupted run did that before step 0). The batches of
    ``run.skipped`` steps are drawn but not trained on.
    """
    to_discard = _set_loader_epoch(loader, epoch, start_step)
    net.train()
    optimizer, steps = state.optimizer, run.steps_per_epoch
    stats = _DeviceStats(device)
    if epoch_stats:
        stats.load(epoch_stats)
    lr = 0.0
    optimizer.zero_grad(set_to_none=True)
    bar = progress(
        batches,
        desc=f"{stage} epoch {epoch + 1}/{cfg.epochs}",
        total=steps,
        enabled=cfg.show_progress,
        initial=start_step - to_discard,
        leave=False,
    )  # the epoch summary line stays instead
    it = iter(bar)
    for _ in range(to_discard):  # a loader that cannot start mid-epoch: draw the trained batches again
        next(it, None)
    first = next(it, None)  # the loader's iterator exists now
    if rng is not None:
        restore_rank_rng(rng)
    graphs = cfg.compile and cfg.compile_mode == "reduce-overhead" and device.type == "cuda"
    lines = _progress_lines(cfg, steps)
    t0 = last_line = time.monotonic()
    last_sync = epoch * steps + start_step  # global steps done at the last optimizer step
    accumulated = False  # gradients of this accumulation group not yet stepped
    skipped_sync = False  # a skipped batch closed a group: DDP did not all-reduce its gradients
    batch_iter = iter(()) if first is None else _chain_first(first, it)
    for i, batch in enumerate(batch_iter, start=start_step):  # on the device, images normalised (DevicePrefetcher)
        global_step = epoch * steps + i
        if i % cfg.accum_steps == 0:
            lr = set_lr(optimizer, cfg.lr_at(epoch + i / steps) * run.lr_scale)
        sync = (i + 1) % cfg.accum_steps == 0 or i + 1 == steps
        if global_step in run.skipped:  # the batch of a non-finite loss that a rollback skips
            skipped_sync = sync
        else:
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()  # a new iteration: the last one's graph outputs are free
            with _grad_sync(ddp, sync):
                with autocast(device, cfg.precision):
                    out = step_fn(net, batch)
                stats.add(out.loss, out.stats, global_step)
                scaled = out.loss / cfg.accum_steps
                (state.scaler.scale(scaled) if state.scaler is not None else scaled).backward()
            accumulated, skipped_sync = True, False
        if sync:
            if accumulated:
                if skipped_sync and ddp is not None:
                    _all_reduce_grads(state.model)
                _optimizer_step(optimizer, state.model, state.scaler, cfg.clip_grad)
                if state.ema is not None:
                    state.ema.update(state.model)
            accumulated = skipped_sync = False
        done = global_step + 1
        log_due = bool(cfg.log_every) and (i + 1) % cfg.log_every == 0 and i + 1 < steps
        save_due = False
        if sync:
            every = cfg.save_every_steps
            save_due = save_mid is not None and every > 0 and i + 1 < steps and done // every > last_sync // every
            last_sync = done
        if not (log_due or save_due):
            continue
        nonfinite, first_bad, sums = stats.read()  # every rank: the read is collective under DDP
        if nonfinite:
            return _nonfinite(cfg, stage, epoch, nonfinite, first_bad, global_step)
        if log_due and (means := stats.window_means(sums)) is not None:
            if logger is not None:
                logger.log({"stage": stage, "epoch": epoch + 1, "lr": lr, **means}, step=global_step, prefix=stage)
            bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()}, refresh=False)
            now = time.monotonic()
            if lines and now - last_line >= _PROGRESS_LINE_EVERY_S:
                last_line = now
                eta = (now - t0) / (i + 1 - start_step) * (steps - i - 1)
                shown = " | ".join(f"{k} {v:.4g}" for k, v in means.items())
                print(
                    f"{stage} epoch {epoch + 1}/{cfg.epochs} step {i + 1}/{steps} | {shown} | lr {lr:.3e} | "
                    f"eta {_duration(eta)}",
                    flush=True,
                )
        if save_due:
            save_mid(i + 1, stats.snapshot(sums))
    nonfinite, first_bad, sums = stats.read()
    if nonfinite:
        return _nonfinite(cfg, stage, epoch, nonfinite, first_bad, epoch * steps + steps - 1)
    # the epoch's last step has no step record of its own: the epoch record, at that step, covers it
    return {**stats.epoch_means(sums), "lr": float(lr)}


def _chain_first(first: Any, rest: Any) -> Any:
    yield first
    yield from rest


def _all_reduce_grads(model: nn.Module) -> None:
    """Average the gradients over the ranks by hand: the micro-batch that would have all-reduced them (DDP's
    synchronising backward) was skipped."""
    for p in model.parameters():
        if p.grad is not None:
            p.grad.copy_(all_reduce_mean(p.grad))


def start_line(
    cfg: FitConfig, device: torch.device, steps_per_epoch: int, start_epoch: int = 0, start_step: int = 0
) -> str:
    """The start-up summary :func:`fit` prints: device, precision (and why), compilation, steps and where it starts
    (``start_epoch``: 0-based index of the epoch it starts in, ``start_step``: the batch in it)."""
    precision = cfg.precision + (f" ({cfg.precision_note})" if cfg.precision_note else "")
    compiled = "off"
    if cfg.compile:
        compiled = cfg.compile_backend + (f", mode {cfg.compile_mode}" if cfg.compile_backend == "inductor" else "")
    where = "from the start"
    if start_epoch or start_step:
        where = f"resuming at epoch {start_epoch + 1}" + (f" step {start_step}" if start_step else "")
    world = f" x {get_world_size()} processes" if get_world_size() > 1 else ""
    return (
        f"device {device}{world} | precision {precision} | compile {compiled} | {cfg.epochs} epochs of "
        f"{steps_per_epoch} steps, {where}"
    )


def resume_line(resumed: Resumed, epochs: int, steps_per_epoch: int) -> str:
    """What :func:`fit` says about the checkpoint it continues from (``epochs``: the run's epochs now)."""
    done, path = resumed.epochs_done, resumed.path
    if done >= epochs:
        of = f"{done} of {epochs} epochs" if done == epochs else f"{done} epochs, more than the {epochs} asked"
        return f"already finished ({path}: {of}): nothing to train"
    if not resumed.step and resumed.planned_epochs is not None and done == resumed.planned_epochs:
        return f"continuing {path} from epoch {done} to {epochs}"
    return f"resuming from {path} (epoch {done + 1}, step {resumed.step} of {steps_per_epoch})"


def _roll_back(
    bad: _NonFinite, cfg: FitConfig, state: TrainedState, run: RunState, logger: MetricLogger | None, stage: str
) -> Resumed:
    """Reload the last checkpoint after a non-finite loss, halving the run's learning-rate factor and skipping the
    first bad step's batch from now on; raises :class:`NonFiniteLossError` when ``max_rollbacks`` were spent or
    there is no checkpoint yet."""
    where = nonfinite_where(stage, bad.epoch + 1, bad.count, bad.first_bad, bad.step)
    run.rollbacks += 1
    if run.rollbacks > cfg.max_rollbacks:
        tried = "; ".join(f"{n}: {what}" for n, what in enumerate(run.tried, 1)) or "nothing"
        raise NonFiniteLossError(
            f"{where}; gave up after {cfg.max_rollbacks} rollback{'s' if cfg.max_rollbacks != 1 else ''} to the "
            f"last checkpoint, which tried ({tried}): lower the learning rate, enable gradient clipping or check the "
            "data"
        )
    try:
        last = own_checkpoint(cfg.output_dir, "rolling back", stacklevel=4)
    except CorruptCheckpointError as exc:
        raise NonFiniteLossError(f"{where}; {exc}") from None
    if last is None:
        first = "at the end of epoch 1"
        if cfg.save_every_steps:
            first = f"after {cfg.save_every_steps} steps or at the end of epoch 1, whichever comes first"
        raise NonFiniteLossError(
            f"{where}; no checkpoint to roll back to in {cfg.output_dir} (the first is written {first}): lower the "
            "learning rate, enable gradient clipping or check the data"
        )
    lr_scale = run.lr_scale * ROLLBACK_LR_FACTOR
    skipped = run.skipped | ({bad.first_bad} if bad.first_bad >= 0 else set())
    resumed = restore(*last, state, stage)
    run.best, run.lr_scale, run.skipped = resumed.best, lr_scale, skipped
    what = f"learning rate x{lr_scale:g}"
    if bad.first_bad >= 0:
        what += f", skipping the batch of step {bad.first_bad}"
    run.tried.append(what)
    if is_main_process():
        warnings.warn(
            f"{where}: rolling back to {last[0]} (epoch {resumed.epochs_done + 1}, step {resumed.step}), "
            f"rollback {run.rollbacks} of {cfg.max_rollbacks}: {what}",
            stacklevel=4,
        )
    drop_replayed_records(logger, stage, resumed.epochs_done, resumed.step, run.steps_per_epoch)
    if logger is not None:
        logger.log(
            {
                "stage": stage,
                "epoch": bad.epoch + 1,
                "event": "rollback",
                "rollback": run.rollbacks,
                "nonfinite_losses": bad.count,
                "lr_scale": lr_scale,
                "skipped_step": bad.first_bad,
                "checkpoint": str(last[0]),
            },
            step=bad.first_bad if bad.first_bad >= 0 else bad.step,
            prefix=f"{stage}/rollback",
        )
    return resumed


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
    on_epoch_start: Callable[[int, int], None] | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    stage: str = "train",
) -> list[dict[str, float]]:
    """Train ``model`` for ``config.epochs`` epochs of ``loader`` with ``step_fn``; returns one record per epoch run
    (its ``"epoch"``: the 1-based number, as on the screen and in ``log.jsonl``).

    ``loader`` has ``set_epoch(epoch, start_step=0)`` (a ``set_epoch(epoch)`` without ``start_step`` works too: a
    mid-epoch resume then draws the trained batches again), ``len()`` and yields batch dicts (the ferfast loaders,
    uint8 or normalised float images, pinned for an asynchronous copy);
    :class:`~ferfast.engine.prefetch.DevicePrefetcher` copies the next batch to ``device`` while a step runs and
    normalises its images there (``config.image_mean/image_std``), so ``step_fn`` gets batches on the device with
    float images, and the module to run (compiled and/or DDP-wrapped, see the module docstring). ``resume``:
    continue from ``output_dir``'s own newest intact checkpoint when there is one (a killed run; see the module
    docstring for a damaged ``checkpoint-last.pth``); otherwise from ``resume_from`` when given (a checkpoint of the
    same ``stage``); a line on the screen says which, and a finished run returns at once ("already finished").
    ``evaluate(epoch) -> scores`` runs every ``eval_every`` epochs and after the last (on every rank: it may be
    collective); its scores join the epoch record and the log, and ``best_metric`` picks ``checkpoint-best.pth``.
    ``scaler``: fp16's GradScaler (default: a new one). ``on_epoch_start(epoch, start_step)`` lets a stage
    position its own random draws (e.g. face-IoU Mixup's) at the epoch's first step: 0, or the step a mid-epoch
    resume continues at. The callbacks get the 0-based epoch index.
    """
    device = torch.device(device)
    cfg = config
    args = {**(args or {}), "stage": stage}
    bare = unwrap_model(model)
    state = TrainedState(bare, optimizer, ema, _make_scaler(cfg.precision, device, scaler))
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError("the loader yields no batch per epoch (dataset smaller than one batch with drop_last?)")
    run = RunState(steps_per_epoch, {"args": args, "class_names": class_names})
    remove_stale_temps(cfg.output_dir)
    epoch, start_step, epoch_stats, rng = 0, 0, None, None
    show = is_main_process() and cfg.show_progress is not False
    if (source := resume_source(cfg.output_dir, resume, resume_from)) is not None:
        resumed = restore(*source, state, stage)
        if resumed.step and resumed.steps_per_epoch not in (None, steps_per_epoch):
            raise ValueError(
                f"{resumed.path} was written in the middle of an epoch of {resumed.steps_per_epoch} steps (at step "
                f"{resumed.step}); the loader now has {steps_per_epoch} steps per epoch: resume with the same data "
                "and batch size, or from a checkpoint written at an epoch's end"
            )
        run.best, run.lr_scale, run.skipped = resumed.best, resumed.lr_scale, resumed.skipped
        epoch, start_step, epoch_stats, rng = resumed.epochs_done, resumed.step, resumed.epoch_stats, resumed.rng
        if show:
            print(f"{stage}: {resume_line(resumed, cfg.epochs, steps_per_epoch)}", flush=True)
        if epoch >= cfg.epochs:
            return []
    drop_replayed_records(logger, stage, epoch, start_step, steps_per_epoch)
    net, ddp = _training_module(model, device, cfg)
    batches = DevicePrefetcher(loader, device, cfg.image_mean, cfg.image_std)
    if show and cfg.print_every and epoch < cfg.epochs:
        print(f"{stage}: {start_line(cfg, device, steps_per_epoch, epoch, start_step)}", flush=True)
    history: list[dict[str, float]] = []
    while epoch < cfg.epochs:
        if on_epoch_start is not None:
            on_epoch_start(epoch, start_step)
        t0 = time.perf_counter()

        def save_mid(step: int, sums: dict[str, Any], done: int = epoch) -> None:
            _save(cfg, done, step, state, run, epoch_stats=sums)

        means = _train_one_epoch(
            step_fn,
            net,
            ddp,
            state,
            loader,
            batches,
            cfg,
            device,
            epoch,
            logger,
            stage,
            run,
            start_step=start_step,
            epoch_stats=epoch_stats,
            rng=rng,
            save_mid=save_mid if cfg.save_every_steps else None,
        )
        epoch_stats = rng = None
        if isinstance(means, _NonFinite):  # the rollback policy
            resumed = _roll_back(means, cfg, state, run, logger, stage)
            epoch, start_step, epoch_stats, rng = resumed.epochs_done, resumed.step, resumed.epoch_stats, resumed.rng
            continue
        start_step = 0
        record = {"epoch": float(epoch + 1), **means, "time_s": time.perf_counter() - t0}
        if run.lr_scale != 1.0:
            record["lr_scale"] = run.lr_scale
        improved = False
        if evaluate is not None and cfg.due(epoch, cfg.eval_every):
            scores, run.best, improved = _evaluate(evaluate, epoch, cfg, run.best)
            record.update(scores)
        history.append(record)
        if logger is not None:
            logger.log({"stage": stage, **record}, step=(epoch + 1) * steps_per_epoch - 1, prefix=f"{stage}/epoch")
        _save(cfg, epoch + 1, 0, state, run, improved)
        if show and cfg.print_every and cfg.due(epoch, cfg.print_every):
            shown = {k: v for k, v in record.items() if k not in ("epoch", "time_s")}  # the time ends the line
            print(
                f"{stage} " + epoch_summary(epoch + 1, shown, total_epochs=cfg.epochs, elapsed_s=record["time_s"]),
                flush=True,
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
        epoch += 1
    if history and not all(math.isfinite(v) for v in history[-1].values()):
        raise NonFiniteLossError(f"{stage}: the last epoch's statistics are not finite: {history[-1]}")
    return history
