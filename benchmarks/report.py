"""Markdown report of a ``pytest benchmarks/ --benchmark-json=FILE`` run.

    python benchmarks/report.py [FILE ...]            # default: benchmarks/results/latest.json
    python benchmarks/report.py a.json b.jsonl --merge-out all.json   # .jsonl: written by --bench-jsonl
    python benchmarks/report.py gpu.json --check-target   # the targets below

One table per benchmark group (op | device | shape | mode | variant): provider, median time, bandwidth
(minimum bytes / median), that bandwidth as a fraction of the machine's copy bandwidth measured in the
same run, and the speedup over ``torch-ref`` and ``torch-compile(ref)`` (their time / this time; over
``ssfer-eager`` too where a group has it). On a GPU the CUDA-event timings (device time only, caches
flushed, no Python or sync overhead) are shown too and the speedups use them.

``--check-target`` checks, for every ferfast provider of the device (``--target-device``):

- ``masked_patch_mse`` full >= 0.8 x copy bandwidth at B64-224-p16 (``--target-op/-mode/-fraction/-shape``);
- ``face_mixup`` fwd (the mixing of face-IoU Mixup, both variants) >= 0.5 x copy bandwidth at B64-224-K7
  (``--mix-fraction``, ``--mixup-shape``);
- ``face_iou_mixup_step`` full (IoU + mix + targets + loss fwd+bwd, both variants) >= 4x faster than
  ``ssfer-eager`` (SSFER's released path) and >= 1.5x faster than ``torch-compile(ref)`` at B64-224-K7
  (``--stage1-vs-ssfer``, ``--stage1-vs-compile``);
- ``fixmatch_loss`` full faster than ``torch-compile(ref)`` at B64-K7 (``--fixmatch-shape``);
- loaders (CPU, ``bench_loader.py``): the DALI CPU loader >= 3x ``ssfer-imagefolder-w0`` and >= 1.8x
  ``ferfast-torch-w2`` (pretraining view), the DALI stage-2 loader >= 3x ``ssfer-two-crop-w2``.

- training steps (GPU, ``bench_train_step.py``): every ferfast provider's MAE pretraining step >= 2x and its
  stage-1 step >= 5x the images/s of ``ssfer-recipe`` (SSFER's released recipe) at the ViT-B/16 shapes
  (``--pretrain-vs-ssfer``, ``--stage1-step-vs-ssfer``).

The targets checked are those of the device (``--target-device``: the GPU targets on ``cuda``, the loader targets
on ``cpu``, the op targets on both), or the ones named with ``--targets``. Each is MET, MISSED, MISSING DATA (no
row of its benchmark in the data) or NO TIMING (a row without a median: a run cut short, ``--benchmark-disable``);
only MET passes. One verdict line ends the report (``VERDICT: PASS`` / ``VERDICT: FAIL (...)``); ``--strict``
exits 1 unless it passes. Every checked row names the implementation that ran (``implementation`` or
``ops_backend`` in its ``extra_info``: for the DALI loaders, ferfast's DALI operators or DALI's own).

The whole training steps (``bench_train_step.py``: MAE pretraining, stages 1 and 2, ferfast ops vs the reference
ops vs the SSFER recipe) get one table of their own, in images/s, instead of the bandwidth tables.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"
PROVIDER_ORDER = (
    "ferfast-triton",
    "ferfast-cuda",
    "ferfast-cpu",
    "ferfast-auto",
    "ferfast-auto+bf16",
    "ferfast-auto+compile",
    "torch-ref",
    "torch-compile(ref)",
    "ssfer-eager",
    "ssfer-recipe",
)
REF, COMPILE, SSFER, SSFER_RECIPE = "torch-ref", "torch-compile(ref)", "ssfer-eager", "ssfer-recipe"
STAGE1_OP = "face_iou_mixup_step"
#: images/s, not GB/s (train_loop_*: a round of several steps fed by their loaders)
TRAIN_STEP_OPS = (
    "train_step_pretrain",
    "train_step_stage1",
    "train_step_stage2",
    "train_loop_pretrain",
    "train_loop_stage1",
)
MET, MISSED, MISSING, UNTIMED = "MET", "MISSED", "MISSING DATA", "NO TIMING"


def load(paths: list[Path]) -> dict[str, Any]:
    """Reads one or more pytest-benchmark JSON files into one document (benchmarks concatenated)."""
    merged: dict[str, Any] | None = None
    for path in paths:
        if path.suffix == ".jsonl":  # conftest's --bench-jsonl: one benchmark record per line
            lines = path.read_text().splitlines()
            data = {"benchmarks": [json.loads(line) for line in lines if line.strip()]}
        else:
            data = json.loads(path.read_text())
        if merged is None:
            merged = data
        else:
            merged["benchmarks"] = merged.get("benchmarks", []) + data.get("benchmarks", [])
    return merged or {"benchmarks": []}


def _row(bench: dict[str, Any]) -> dict[str, Any]:
    info = dict(bench.get("extra_info") or {})
    stats = bench.get("stats") or {}
    median = stats.get("median")
    info.setdefault("provider", bench.get("param") or bench.get("name"))
    info["median_s"] = median
    info["rounds"] = stats.get("rounds")
    event_ms = info.get("gpu_event_ms")
    info["time_s"] = event_ms / 1e3 if event_ms else median  # the time speedups compare
    return info


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:{spec}}{suffix}"


def _provider_key(provider: str) -> tuple[int, str]:
    return (PROVIDER_ORDER.index(provider) if provider in PROVIDER_ORDER else len(PROVIDER_ORDER), provider)


def groups(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for bench in data.get("benchmarks", []):
        out.setdefault(bench.get("group") or bench.get("name", "?"), []).append(_row(bench))
    for rows in out.values():
        rows.sort(key=lambda r: _provider_key(str(r["provider"])))
    return dict(sorted(out.items()))


def _speedup(base: dict[str, Any] | None, row: dict[str, Any]) -> str:
    if not base or not base.get("time_s") or not row.get("time_s"):
        return "-"
    return f"{base['time_s'] / row['time_s']:.2f}x"


def group_table(name: str, rows: list[dict[str, Any]]) -> list[str]:
    by_provider = {r["provider"]: r for r in rows}
    ref, comp, ssfer = by_provider.get(REF), by_provider.get(COMPILE), by_provider.get(SSFER)
    gpu = any(r.get("gpu_event_ms") is not None for r in rows)
    first = rows[0]
    lines = [f"### {name}", ""]
    detail = [first.get("shape_desc"), first.get("dtype")]
    detail.append(first.get("bytes") and f"{first['bytes'] / 1e6:.2f} MB moved (minimum)")
    detail.append(first.get("copy_GB/s") and f"copy {first['copy_GB/s']:.1f} GB/s")
    lines += ["_" + ", ".join(str(d) for d in detail if d) + "_", ""]
    impl = any(r.get("implementation") for r in rows)
    head = ["provider", *(["implementation"] if impl else []), "median ms", "GB/s", "x copy"]
    if gpu:
        head += ["event ms", "event GB/s", "x copy (event)", "peak MiB"]
    head += ["vs torch-ref", "vs torch-compile(ref)"]
    if ssfer:
        head.append(f"vs {SSFER}")
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        median = r.get("median_s")
        cells = [
            str(r["provider"]),
            *([str(r.get("implementation") or "-")] if impl else []),
            _fmt(median * 1e3 if median else None, ".3f"),
            _fmt(r.get("GB/s"), ".1f"),
            _fmt(r.get("copy_fraction"), ".2f"),
        ]
        if gpu:
            cells += [
                _fmt(r.get("gpu_event_ms"), ".4f"),
                _fmt(r.get("gpu_event_GB/s"), ".0f"),
                _fmt(r.get("gpu_event_copy_fraction"), ".2f"),
                _fmt(r.get("peak_mem_extra_MiB"), ".1f"),
            ]
        cells += [_speedup(ref, r), _speedup(comp, r)]
        if ssfer:
            cells.append(_speedup(ssfer, r))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def is_train_step(rows: list[dict[str, Any]]) -> bool:
    return any(r.get("op") in TRAIN_STEP_OPS for r in rows)


def _images_per_s(row: dict[str, Any]) -> float | None:
    """CUDA-event images/s on a GPU, else the median wall-time images/s."""
    return row.get("gpu_event_images_per_s") or row.get("images_per_s")


def train_step_table(data: dict[str, Any]) -> list[str]:
    """Images/s of the whole training steps, ferfast's ops against the reference ops (speedup = images/s ratio)."""
    rows = [r for rs in groups(data).values() if is_train_step(rs) for r in rs]
    if not rows:
        return []
    lines = [
        "## Training steps: images/s, ferfast vs reference ops vs the SSFER recipe",
        "",
        "_one optimizer step (forward + backward + AdamW) per call; images/s from CUDA-event time on a GPU, "
        "else median wall time; stage 1 counts the labeled images (the network sees twice as many), stage 2 the "
        "labeled and unlabeled ones; MFU = model FLOPs / step time / the GPU's dense bf16 peak_",
        "",
    ]
    head = [
        "step",
        "device",
        "shape",
        "precision",
        "provider",
        "ops",
        "images/s",
        "step ms",
        "TFLOP/s",
        "MFU",
        "peak MiB",
        f"vs {REF}",
        f"vs {SSFER_RECIPE}",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    keyed: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        keyed.setdefault((r.get("op"), r.get("device"), r.get("shape")), []).append(r)
    for (op, device, shp), rs in sorted(keyed.items(), key=lambda kv: str(kv[0])):
        rs.sort(key=lambda r: _provider_key(str(r["provider"])))
        ref = next((r for r in rs if r.get("provider") == REF), None)
        ref_ips = _images_per_s(ref) if ref else None
        recipe = next((r for r in rs if r.get("provider") == SSFER_RECIPE), None)
        recipe_ips = _images_per_s(recipe) if recipe else None
        for r in rs:
            ips = _images_per_s(r)
            event_ms = r.get("gpu_event_ms")
            step_ms = event_ms if event_ms is not None else (r["median_s"] * 1e3 if r.get("median_s") else None)
            flops, peak = r.get("model_flops"), r.get("peak_bf16_TFLOP/s")
            tflops = flops / step_ms / 1e9 if flops and step_ms else None
            mfu = tflops / peak if tflops and peak else None
            cells = [
                str(op).removeprefix("train_step_"),
                str(device),
                str(shp),
                str(r.get("precision") or str(r.get("dtype", "-")).split(",")[0]),
                str(r["provider"]),
                str(r.get("ops_backend", "-")),
                _fmt(ips, ".1f"),
                _fmt(step_ms, ".2f"),
                _fmt(tflops, ".2f"),
                _fmt(mfu * 100 if mfu else None, ".1f", "%"),
                _fmt(r.get("peak_mem_MiB"), ".0f"),
                f"{ips / ref_ips:.2f}x" if ips and ref_ips else "-",
                f"{ips / recipe_ips:.2f}x" if ips and recipe_ips else "-",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def header(data: dict[str, Any], paths: list[Path]) -> list[str]:
    machine = data.get("machine_info") or {}
    cpu = (machine.get("cpu") or {}).get("brand_raw") or machine.get("processor") or "?"
    copies: dict[str, float] = {}
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info") or {}
        if "copy_GB/s" in info:
            copies.setdefault(info.get("device", "?"), info["copy_GB/s"])
    lines = ["# ferfast benchmarks", ""]
    lines.append(f"- source: {', '.join(str(p) for p in paths)} ({data.get('datetime', '?')})")
    lines.append(f"- machine: {cpu}, python {machine.get('python_version', '?')}")
    for device, gbs in sorted(copies.items()):
        lines.append(f"- copy bandwidth ({device}, measured in the run): {gbs:.1f} GB/s")
    lines.append("- speedups: their time / this time (CUDA-event time on a GPU, else the median wall time)")
    lines.append("")
    return lines


def _device_rows(data: dict[str, Any], device: str | None) -> tuple[list[dict[str, Any]], str]:
    rows = [r for rs in groups(data).values() for r in rs]
    if device is None:
        device = "cuda" if any(r.get("device") == "cuda" for r in rows) else "cpu"
    return [r for r in rows if r.get("device") == device], device


def _is_ferfast(row: dict[str, Any]) -> bool:
    return str(row.get("provider", "")).startswith("ferfast-")


def implementation(row: dict[str, Any]) -> str:
    """What ran for a row: its ``implementation`` (loaders: ferfast's DALI operators or DALI's own), else its ops
    backend, else its provider."""
    return str(row.get("implementation") or row.get("ops_backend") or row.get("provider"))


def _untimed(row: dict[str, Any]) -> bool:
    return not row.get("time_s")


def check_target(
    data: dict[str, Any], op: str, mode: str, fraction: float, device: str | None, shape: str | None
) -> tuple[list[str], bool]:
    """The ferfast providers' bandwidth in ``op``/``mode`` groups as a fraction of the copy bandwidth.

    Returns the report lines and whether the target is met (False when the data has no such benchmark)."""
    lines, status = check_bandwidth(data, op, mode, fraction, device, shape)
    return lines, status == MET


def check_bandwidth(
    data: dict[str, Any], op: str, mode: str, fraction: float, device: str | None, shape: str | None
) -> tuple[list[str], str]:
    """Every ferfast row of ``op``/``mode`` (at ``shape``) at least ``fraction`` x the copy bandwidth.

    Returns the report lines and the status: MET, MISSED, MISSING DATA or NO TIMING."""
    rows, device = _device_rows(data, device)
    picked = [
        r
        for r in rows
        if r.get("op") == op and r.get("mode") == mode and (shape is None or r.get("shape") == shape) and _is_ferfast(r)
    ]
    lines = [f"## Target: {op} {mode} on {device} >= {fraction:.2f} x copy bandwidth", ""]
    if not picked:
        where = f" at {shape}" if shape else ""
        return [*lines, f"no ferfast {op} {mode} row{where} in the data: {MISSING}", ""], MISSING
    status = MET
    keyed: dict[tuple, list[dict[str, Any]]] = {}
    for r in picked:
        keyed.setdefault((r.get("shape"), r.get("variant")), []).append(r)
    for (shp, variant), rs in sorted(keyed.items(), key=lambda kv: str(kv[0])):
        for r in rs:
            text = f"- {shp} {variant} {r['provider']} [{implementation(r)}]: "
            if _untimed(r):
                lines.append(text + f"no timing in the data -> {UNTIMED}")
                status = UNTIMED if status != MISSED else status
                continue
            event = r.get("gpu_event_copy_fraction")
            wall = r.get("copy_fraction")
            measure = event if event is not None else wall
            met = measure is not None and measure >= fraction
            if not met:
                status = MISSED
            if event is not None:
                text += f"{r['gpu_event_GB/s']:.0f} GB/s = {event:.2f} x copy (CUDA events); "
            text += f"wall {_fmt(r.get('GB/s'), '.1f')} GB/s = {_fmt(wall, '.2f')} x copy"
            text += f" of {_fmt(r.get('copy_GB/s'), '.1f')} GB/s -> {'TARGET MET' if met else 'TARGET MISSED'}"
            lines.append(text)
    lines.append("")
    return lines, status


def check_speedup(
    data: dict[str, Any],
    op: str,
    mode: str,
    baseline: str,
    factor: float,
    device: str | None,
    shape: str | None,
    strict: bool = False,
    only: str | None = None,
) -> tuple[list[str], str]:
    """Every ferfast provider (or only provider ``only``) of each ``op``/``mode`` group at least ``factor`` x
    faster than ``baseline`` (``strict``: more than ``factor`` x, i.e. "beats" for 1.0) in the time the tables'
    speedups use.

    Returns the report lines and the status: MET, MISSED, MISSING DATA (no ferfast row, or no baseline row,
    of a group) or NO TIMING (a row of the comparison has no median)."""
    rows, device = _device_rows(data, device)
    picked = [
        r for r in rows if r.get("op") == op and r.get("mode") == mode and (shape is None or r.get("shape") == shape)
    ]
    relation = f"> {factor:g}x" if strict else f">= {factor:g}x"
    who = only or "ferfast"
    lines = [f"## Target: {op} {mode} on {device}: {who} {relation} faster than {baseline}", ""]
    keyed: dict[tuple, list[dict[str, Any]]] = {}
    for r in picked:
        keyed.setdefault((r.get("shape"), r.get("variant")), []).append(r)
    status, compared = MET, False
    for (shp, variant), rs in sorted(keyed.items(), key=lambda kv: str(kv[0])):
        base = next((r for r in rs if r.get("provider") == baseline), None)
        mine = [r for r in rs if (r.get("provider") == only if only else _is_ferfast(r))]
        if not mine:
            continue
        if base is None:
            lines.append(f"- {shp} {variant}: no {baseline} row in the data -> {MISSING}")
            status = MISSING if status == MET else status
            continue
        for r in mine:
            compared = True
            if _untimed(r) or _untimed(base):
                who_untimed = r["provider"] if _untimed(r) else baseline
                lines.append(f"- {shp} {variant} {r['provider']}: {who_untimed} has no timing -> {UNTIMED}")
                status = UNTIMED if status in (MET, MISSING) else status
                continue
            speedup = base["time_s"] / r["time_s"]
            met = speedup > factor if strict else speedup >= factor
            if not met:
                status = MISSED
            clock = "CUDA-event" if r.get("gpu_event_ms") is not None else "median wall"
            verdict = "TARGET MET" if met else "TARGET MISSED"
            lines.append(
                f"- {shp} {variant} {r['provider']} [{implementation(r)}]: {r['time_s'] * 1e3:.3f} ms vs {baseline} "
                f"[{implementation(base)}] {base['time_s'] * 1e3:.3f} ms ({clock}) = {speedup:.2f}x -> {verdict}"
            )
    if not compared and status == MET:
        lines.append(f"no {who} {op} {mode} row with its {baseline} baseline in the data: {MISSING}")
        status = MISSING
    lines.append("")
    return lines, status


#: Loader targets on the CPU: (group, baseline provider, factor, ferfast provider).
LOADER_TARGETS = [
    ("loader_pretrain", "ssfer-imagefolder-w0", 3.0, "ferfast-dali-cpu"),
    ("loader_pretrain", "ferfast-torch-w2", 1.8, "ferfast-dali-cpu"),
    ("loader_stage2", "ssfer-two-crop-w2", 3.0, "ferfast-dali-stage2"),
]


def target_plan(args: argparse.Namespace) -> list[tuple[str, tuple[str, ...], Callable[..., tuple[list[str], str]]]]:
    """``(name, devices, check(data, device))`` of every target (see the module docstring)."""
    mix = args.mixup_shape or None
    plan: list[tuple[str, tuple[str, ...], Callable[..., tuple[list[str], str]]]] = [
        (
            "masked_patch_mse",
            ("cuda", "cpu"),
            lambda d, dev: check_bandwidth(
                d, args.target_op, args.target_mode, args.target_fraction, dev, args.target_shape or None
            ),
        ),
        (
            "face_mixup",
            ("cuda", "cpu"),
            lambda d, dev: check_bandwidth(d, "face_mixup", "fwd", args.mix_fraction, dev, mix),
        ),
        (
            "stage1_vs_ssfer",
            ("cuda", "cpu"),
            lambda d, dev: check_speedup(d, STAGE1_OP, "full", SSFER, args.stage1_vs_ssfer, dev, mix),
        ),
        (
            "stage1_vs_compile",
            ("cuda", "cpu"),
            lambda d, dev: check_speedup(d, STAGE1_OP, "full", COMPILE, args.stage1_vs_compile, dev, mix),
        ),
        (
            "fixmatch_vs_compile",
            ("cuda", "cpu"),
            lambda d, dev: check_speedup(
                d, "fixmatch_loss", "full", COMPILE, 1.0, dev, args.fixmatch_shape or None, strict=True
            ),
        ),
        (
            "train_pretrain_vs_ssfer",
            ("cuda",),
            lambda d, dev: check_speedup(
                d, "train_step_pretrain", "step", SSFER_RECIPE, args.pretrain_vs_ssfer, dev, None
            ),
        ),
        (
            "train_stage1_vs_ssfer",
            ("cuda",),
            lambda d, dev: check_speedup(
                d, "train_step_stage1", "step", SSFER_RECIPE, args.stage1_step_vs_ssfer, dev, None
            ),
        ),
    ]
    for op, base, factor, mine in LOADER_TARGETS:  # one epoch per round, equal samples: time ratio = throughput
        plan.append(
            (
                f"{op}_vs_{base}",
                ("cpu",),
                lambda d, _dev, op=op, base=base, factor=factor, mine=mine: check_speedup(
                    d, op, "epoch", base, factor, "cpu", None, only=mine
                ),
            )
        )
    return plan


def check_all_targets(args: argparse.Namespace, data: dict[str, Any]) -> tuple[list[str], bool]:
    """The targets of ``--check-target`` (see the module docstring): report lines, ending with the one verdict
    line, and whether every checked target is met."""
    _rows, device = _device_rows(data, args.target_device)
    plan = target_plan(args)
    names = [n.strip() for n in (args.targets or "").split(",") if n.strip()]
    unknown = sorted(set(names) - {name for name, _, _ in plan})
    if unknown:
        raise SystemExit(f"unknown --targets {', '.join(unknown)}; known: {', '.join(n for n, _, _ in plan)}")
    selected = [(n, check) for n, devices, check in plan if (n in names if names else device in devices)]
    lines: list[str] = []
    statuses: dict[str, str] = {}
    for name, check in selected:
        target_lines, status = check(data, device)
        lines += target_lines
        statuses[name] = status
    counts = {s: [n for n, st in statuses.items() if st == s] for s in (MET, MISSED, MISSING, UNTIMED)}
    ok = bool(statuses) and not (counts[MISSED] or counts[MISSING] or counts[UNTIMED])
    if ok:
        verdict = f"VERDICT: PASS: all {len(statuses)} targets on {device} met"
    elif not statuses:
        verdict = f"VERDICT: FAIL: no target selected on {device}"
    else:
        problems = [f"{len(v)} {k.lower()} ({', '.join(v)})" for k, v in counts.items() if v and k != MET]
        verdict = f"VERDICT: FAIL on {device}: {len(counts[MET])} of {len(statuses)} met; " + "; ".join(problems)
    lines += [verdict]
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "json", nargs="*", type=Path, help=f"pytest-benchmark JSON or --bench-jsonl files (default {DEFAULT_JSON})"
    )
    parser.add_argument("--merge-out", type=Path, help="also write the merged JSON here")
    parser.add_argument("--check-target", action="store_true", help="check the targets (see the module docstring)")
    parser.add_argument("--target-op", default="masked_patch_mse")
    parser.add_argument("--target-mode", default="full")
    parser.add_argument("--target-fraction", type=float, default=0.8)
    parser.add_argument("--target-device", default=None, help="cuda when the data has CUDA rows, else cpu")
    parser.add_argument("--target-shape", default="B64-224-p16", help="'' = every shape")
    parser.add_argument("--mix-fraction", type=float, default=0.5, help="face_mixup fwd: fraction of copy bandwidth")
    parser.add_argument("--stage1-vs-ssfer", type=float, default=4.0, help="face_iou_mixup_step: x ssfer-eager")
    parser.add_argument("--stage1-vs-compile", type=float, default=1.5, help="face_iou_mixup_step: x compile")
    parser.add_argument("--mixup-shape", default="B64-224-K7", help="shape of the face-IoU Mixup targets")
    parser.add_argument("--fixmatch-shape", default="B64-K7", help="shape of the fixmatch_loss target")
    parser.add_argument("--pretrain-vs-ssfer", type=float, default=2.0, help="MAE step: x ssfer-recipe (GPU)")
    parser.add_argument("--stage1-step-vs-ssfer", type=float, default=5.0, help="stage-1 step: x ssfer-recipe (GPU)")
    parser.add_argument("--targets", default="", help="comma-separated target names (default: the device's)")
    parser.add_argument("--strict", action="store_true", help="exit 1 unless the verdict is PASS")
    args = parser.parse_args(argv)

    paths = list(args.json or [DEFAULT_JSON])
    missing = [p for p in paths if not p.is_file()]
    if missing:
        print(f"no such file: {', '.join(map(str, missing))} (run `make bench` first)", file=sys.stderr)
        paths = [p for p in paths if p.is_file()]
        if not paths:
            if args.check_target:
                print("VERDICT: FAIL: no benchmark data (no such file)")
            return 2
    data = load(paths)
    if args.merge_out:
        args.merge_out.parent.mkdir(parents=True, exist_ok=True)
        args.merge_out.write_text(json.dumps(data, indent=1))
    if not data.get("benchmarks"):
        print("no benchmarks in the data", file=sys.stderr)
        if args.check_target:
            print("VERDICT: FAIL: no benchmarks in the data")
        return 2
    lines = header(data, paths)
    for name, rows in groups(data).items():
        if not is_train_step(rows):
            lines += group_table(name, rows)
    lines += train_step_table(data)
    ok = True
    if args.check_target:
        target_lines, ok = check_all_targets(args, data)
        lines += target_lines
    print("\n".join(lines))
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
