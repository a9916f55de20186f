"""Where the demo's time goes: one demo run with each part of every stage timed (exclusive wall time).

``python benchmarks/profile_demo.py [--quick] [--seed S] [--out DIR] [--set KEY=VALUE ...]`` runs the demo (all
arms, one seed) with timers wrapped around the parts of a training run, and prints per stage (MAE pretraining,
each arm's stage 1 or stage 2) the seconds spent in:

- ``data``: waiting for the next batch (the loader's decoding and augmentation, as the main thread sees it) and
  its normalisation;
- ``forward``: the models' forward passes (MAE with its loss; the classifier; stage 2's teacher);
- ``loss+mixup``: the rest of the step (face-IoU Mixup, the stage-1/2 losses, pseudo-labels);
- ``backward``: ``Tensor.backward``;
- ``optimizer``: AdamW's step and ``zero_grad``; ``ema``: the EMA update;
- ``evaluation``: the test split's evaluation; ``checkpoints``: checkpoint writes;
- ``setup``: data preparation (scan, label split), model building and loading;
- ``other``: everything else (the loop's own Python, logging, learning-rate setting).

Timers are exclusive: time inside a nested timed part counts for the inner part only. The DALI loader decodes in
its own threads, which also use the two cores while the model computes: ``data`` is only the waiting; the
``--loader-alone`` pass times one epoch of each stage's loader with nothing else running, which is what decoding
and augmentation cost on their own. The figures go to ``--out``/profile.json as well.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

PARTS = ("data", "forward", "loss+mixup", "backward", "optimizer", "ema", "evaluation", "checkpoints", "setup", "other")


class Timers:
    """Exclusive wall time per (stage, part): a stack of running parts, the innermost one is charged."""

    def __init__(self) -> None:
        self.seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.stage_total: dict[str, float] = defaultdict(float)
        self.stage = "outside"
        self.last_stage = "outside"
        self._stack: list[tuple[str, float]] = []

    def _charge(self, now: float) -> None:
        if self._stack:
            part, since = self._stack[-1]
            self.seconds[self.stage][part] += now - since

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        now = time.perf_counter()
        self._charge(now)
        self._stack.append((name, now))
        try:
            yield
        finally:
            end = time.perf_counter()
            self._charge(end)
            self._stack.pop()
            if self._stack:
                self._stack[-1] = (self._stack[-1][0], end)

    @contextlib.contextmanager
    def in_stage(self, name: str) -> Iterator[None]:
        previous, self.stage, self.last_stage = self.stage, name, name
        t0 = time.perf_counter()
        try:
            with self.part("other"):
                yield
        finally:
            self.stage_total[name] += time.perf_counter() - t0
            self.stage = previous


def _wrap(owner: Any, attr: str, timers: Timers, part: str) -> None:
    original = getattr(owner, attr)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        with timers.part(part):
            return original(*args, **kwargs)

    setattr(owner, attr, timed)


def _wrap_iter(owner: Any, timers: Timers) -> None:
    """Time each ``next()`` of the prefetcher's batches (the loader's work as the loop waits for it)."""
    original = owner.__iter__

    def timed_iter(self: Any) -> Iterator[Any]:
        it = original(self)
        while True:
            with timers.part("data"):
                try:
                    batch = next(it)
                except StopIteration:
                    return
            yield batch

    owner.__iter__ = timed_iter


def install(timers: Timers) -> None:
    """Wrap the parts of a training run with ``timers`` (process-wide: for a profiling run only). The names are
    wrapped where their callers look them up (``stages``' and ``resume``'s imports; the demo imports
    ``evaluate`` and ``prepare_data`` when it runs)."""
    from ferfast.engine import ema, evaluation, prefetch, resume, stage_data, stages
    from ferfast.models import mae, vit

    _wrap_iter(prefetch.DevicePrefetcher, timers)
    _wrap(vit.VisionTransformer, "forward", timers, "forward")
    _wrap(mae.MaskedAutoencoderViT, "forward", timers, "forward")
    for name in ("pretrain_step", "stage1_step", "stage2_step"):
        _wrap(stages, name, timers, "loss+mixup")
    _wrap(torch.Tensor, "backward", timers, "backward")
    _wrap(torch.optim.AdamW, "step", timers, "optimizer")
    _wrap(torch.optim.Optimizer, "zero_grad", timers, "optimizer")
    _wrap(ema.ModelEma, "update", timers, "ema")
    _wrap_evaluate(evaluation, timers)
    _wrap(resume, "save_epoch_checkpoint", timers, "checkpoints")
    _wrap(stage_data, "prepare_data", timers, "setup")
    for name in ("build_mae", "build_classifier", "load_pretrained"):
        _wrap(stages, name, timers, "setup")
    for name in ("run_pretrain", "run_stage1", "run_stage2"):
        _stage_wrap(stages, name, timers)


def _wrap_evaluate(owner: Any, timers: Timers) -> None:
    """The demo evaluates each arm after its stage returns: charge that to the stage just run."""
    original = owner.evaluate

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if timers.stage != "outside":
            with timers.part("evaluation"):
                return original(*args, **kwargs)
        with timers.in_stage(timers.last_stage), timers.part("evaluation"):
            return original(*args, **kwargs)

    owner.evaluate = timed


def _stage_wrap(owner: Any, attr: str, timers: Timers) -> None:
    original = getattr(owner, attr)

    @functools.wraps(original)
    def staged(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        name = f"{attr.removeprefix('run_')}:{Path(cfg.run.output_dir).name}"
        with timers.in_stage(name):
            return original(cfg, *args, **kwargs)

    setattr(owner, attr, staged)


def _capture_loaders(owner: Any, loaders: dict[str, Any]) -> None:
    """Keep the first loader each stage builds (``stages.stage_loader``), to time it alone afterwards."""
    original = owner.stage_loader

    @functools.wraps(original)
    def capturing(stage: str, *args: Any, **kwargs: Any) -> Any:
        loader = original(stage, *args, **kwargs)
        loaders.setdefault(stage, loader)
        return loader

    owner.stage_loader = capturing


def loader_alone(loaders: dict[str, Any]) -> dict[str, dict[str, float]]:
    """One epoch of each stage's loader with nothing else running: what decoding and augmentation cost alone."""
    timings = {}
    for stage, loader in loaders.items():
        loader.set_epoch(0)
        t0 = time.perf_counter()
        images = 0
        for batch in loader:
            images += sum(int(v.shape[0]) for k, v in batch.items() if k.startswith("images"))
        timings[stage] = {"seconds": time.perf_counter() - t0, "images": images, "batches": len(loader)}
    return timings


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def report(timers: Timers) -> list[str]:
    head = ["stage", "total s", *PARTS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    sums: dict[str, float] = defaultdict(float)
    for stage, total in timers.stage_total.items():
        parts = timers.seconds[stage]
        cells = [stage, f"{total:.1f}"]
        for p in PARTS:
            cells.append(f"{parts.get(p, 0.0):.1f} ({100 * parts.get(p, 0.0) / total:.0f}%)")
            sums[p] += parts.get(p, 0.0)
        lines.append("| " + " | ".join(cells) + " |")
    total = sum(timers.stage_total.values())
    cells = ["all stages", f"{total:.1f}"] + [f"{sums[p]:.1f} ({100 * sums[p] / total:.0f}%)" for p in PARTS]
    lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/profile-demo"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--loader-alone", action="store_true", help="also time each stage's loader alone")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a demo recipe override")
    args = parser.parse_args(argv)

    from ferfast.demo import DemoConfig, run_demo
    from ferfast.engine import stages

    timers = Timers()
    install(timers)
    loaders: dict[str, Any] = {}
    _capture_loaders(stages, loaders)
    overrides = dict(item.split("=", 1) for item in args.set)
    cfg = DemoConfig(out_dir=args.out, seeds=(args.seed,), quick=args.quick, overrides=overrides)
    t0 = time.perf_counter()
    result = run_demo(cfg, echo=lambda line: print(line, flush=True))
    wall = time.perf_counter() - t0
    cpu = cpu_name()
    lines = [
        f"demo profile: {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"seed {args.seed}{' (quick)' if args.quick else ''}, wall {wall:.0f} s",
        "",
        *report(timers),
    ]
    record: dict[str, Any] = {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "wall_s": wall,
        "stage_seconds": result.stage_seconds,
        "stages": {s: {"total": timers.stage_total[s], **timers.seconds[s]} for s in timers.stage_total},
    }
    if args.loader_alone:
        alone = loader_alone(loaders)
        record["loader_alone"] = alone
        lines += [
            "",
            "loaders alone (one epoch each): "
            + ", ".join(
                f"{k} {v['seconds']:.1f} s for {v['images']} images ({v['batches']} batches)" for k, v in alone.items()
            ),
        ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
