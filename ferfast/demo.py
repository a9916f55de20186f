"""The demo: SSFER's ablation on synthetic faces, end to end on this machine (``python -m ferfast.train demo``).

It generates (or reuses) the synthetic faces, pretrains a small MAE on their unlabeled pool, and trains the
paper's ablation with 5% of the labels, each arm through the same stage drivers as a real run:

========================  ====================================================================================
``scratch``               stage 1 without pretraining and without Mixup (plain cross-entropy)
``pretrain``              the same from the MAE encoder
``mixup``                 the same with face-IoU Mixup (SSFER's stage 1)
``semisup``               FixMatch with an EMA teacher from ``mixup``'s model (SSFER's stage 2: the full method)
``full``                  the ceiling: ``pretrain``'s recipe with 100% of the labels (same model and pretraining),
                          trained for as many steps as stage 1 and stage 2 of the full method together
========================  ====================================================================================

Every arm is evaluated on the synthetic test split (identities unseen in training): accuracy, mean class
accuracy, macro-F1, with its wall time. :data:`DEMO_RECIPE` is SSFER's recipe scaled to a 2-core CPU budget
(a 0.8M-parameter ViT on 64x64 faces, tens of epochs instead of hundreds); ``overrides`` change any
:class:`~ferfast.config.TrainConfig` setting of every arm. Results go to ``out_dir/results.json`` and
``results.md``; each arm's checkpoints, logs, metrics and confusion matrix to ``out_dir/seed<S>/<arm>/``. Pictures
(:mod:`ferfast.demo_plots`): ``results.png`` (the ablation as bars) and each seed's MAE reconstructions
``seed<S>/reconstruction.png``, shown in ``results.md`` with the confusion matrices.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ferfast._io import write_text_atomic
from ferfast.config import TrainConfig, build_config, config_keys, derive_config
from ferfast.demo_results import ARM_BY_KEY, ARMS, Arm, ArmResult, DemoResult
from ferfast.runtime import tune_cpu_allocator

if TYPE_CHECKING:  # torch, the data layer and the engine are imported when the demo runs, not for `--help`
    from ferfast.data.synthetic import SyntheticFaceConfig

__all__ = [
    "ARMS",
    "DEMO_RECIPE",
    "QUICK_RECIPE",
    "Arm",
    "ArmResult",
    "DataRecipe",
    "DemoConfig",
    "DemoResult",
    "check_config",
    "format_table",
    "picture_links",
    "run_demo",
    "save_mae_reconstructions",
]


@dataclass(frozen=True)
class DataRecipe:
    """The synthetic faces of the demo: counts, image size and how strong the expressions are."""

    num_train: int = 6000
    num_test: int = 1400
    num_unlabeled: int = 10000
    num_identities: int = 600
    size: int = 64
    intensity: float = 2.5
    background: float = 0.3
    #: face placement: the centre's shift and the size's spread (SyntheticFaceConfig's ``align_jitter``,
    #: ``scale_jitter``); they set how far apart two faces' boxes are, hence face-IoU Mixup's pair IoUs
    align_jitter: float = 0.03
    scale_jitter: float = 0.05

    def face_config(self) -> SyntheticFaceConfig:
        from ferfast.data.synthetic import SyntheticFaceConfig

        return SyntheticFaceConfig(
            size=self.size,
            intensity=self.intensity,
            background=self.background,
            align_jitter=self.align_jitter,
            scale_jitter=self.scale_jitter,
        )


#: SSFER's recipe (docs/design.md, Recipes) scaled to ten minutes of a 2-core CPU: the TrainConfig settings of every
#: arm. A 4-block ViT on 64x64 faces; MAE 9 epochs on the 10k unlabeled faces; stage 1 at batch 32 for 40 epochs
#: of the 300 labeled images (360 steps), with the EMA decay, learning rates and layer decay a model this small and
#: a schedule this short need; stage 2 at 32 labeled + 32 unlabeled images per step for 2 passes over the unlabeled
#: pool, with FixMatch's unlabeled loss weight 1 (SSFER's 5 cost 5-6 points here). The random crops keep at least half
#: of the aligned face (RandomResizedCrop scale 0.5-1 instead of MAE's 0.2-1: face-IoU Mixup then adds instead of
#: costing). docs/demo.md: how it was chosen.
DEMO_RECIPE: dict[str, Any] = {
    "data.format": "synthetic",
    "data.image_size": 64,
    "data.num_workers": 0,
    "data.scale": (0.5, 1.0),
    "model.name": "vit_demo",
    "model.drop_path": 0.0,
    "pretrain.epochs": 9,
    "pretrain.batch_size": 64,
    "pretrain.optim.lr": 1.5e-3,
    "pretrain.optim.warmup_epochs": 1,
    "stage1.epochs": 40,
    "stage1.batch_size": 32,
    "stage1.ema_decay": 0.99,
    "stage1.optim.lr": 1e-3,
    "stage1.optim.warmup_epochs": 2,
    "stage1.optim.layer_decay": 0.75,
    "stage2.epochs": 2,
    "stage2.batch_size": 32,
    "stage2.unlabeled_batch_size": 32,
    "stage2.ema_decay": 0.99,
    "stage2.optim.lr": 3e-4,
    "stage2.optim.schedule": "cosine",
    "stage2.optim.milestones": (),
    "stage2.unlabeled_weight": 1.0,
    "run.tensorboard": False,
    "run.log_every": 50,
    "run.eval_every": 1000,
    "run.save_every": 1000,
    "run.keep_checkpoints": 1,
    "run.print_every": 0,
}

#: ``--quick``: the same pipeline on a few hundred 32x32 faces, for a smoke test (under a minute).
QUICK_RECIPE: dict[str, Any] = {
    **DEMO_RECIPE,
    "data.image_size": 32,
    "pretrain.epochs": 1,
    "pretrain.batch_size": 32,
    "stage1.epochs": 3,
    "stage1.batch_size": 8,
    "stage1.optim.warmup_epochs": 1,
    "stage2.epochs": 1,
    "stage2.batch_size": 8,
    "stage2.unlabeled_batch_size": 8,
    "stage2.optim.milestones": (),
}
_QUICK_DATA = DataRecipe(num_train=700, num_test=140, num_unlabeled=320, num_identities=40, size=32)


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs: where, which seeds, full or quick, and overrides of :data:`DEMO_RECIPE`."""

    out_dir: Path = Path("runs/demo")  #: results, and each seed's runs under ``seed<S>/``
    data_dir: Path | None = None  #: the synthetic faces (cached; default ``out_dir/faces`` or ``faces-quick``)
    seeds: tuple[int, ...] = (0,)
    quick: bool = False  #: a tiny version of everything (the CLI smoke test)
    labeled_fraction: float = 0.05
    device: str = "auto"
    loader: str = "auto"
    resume: bool = False  #: continue a killed demo (each arm from its last checkpoint) instead of starting afresh
    arms: tuple[str, ...] = tuple(a.key for a in ARMS)  #: a subset of :data:`ARMS` to run
    overrides: Mapping[str, Any] = field(default_factory=dict)  #: TrainConfig settings over the recipe
    faces: DataRecipe | None = None  #: the synthetic faces (default: :class:`DataRecipe`, or the quick one)

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be non-negative ints, got {self.seeds!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds!r}")
        if not 0.0 < self.labeled_fraction < 1.0:
            raise ValueError(f"labeled_fraction must be in (0, 1), got {self.labeled_fraction!r}")
        unknown = [a for a in self.arms if a not in ARM_BY_KEY]
        if unknown or not self.arms:
            raise ValueError(f"arms must be a non-empty subset of {[a.key for a in ARMS]}, got {list(self.arms)}")
        if "semisup" in self.arms and "mixup" not in self.arms:
            raise ValueError("arm 'semisup' starts from arm 'mixup''s model: include 'mixup' in arms")
        keys = set(config_keys(TrainConfig))
        bad = [k for k in self.overrides if k.replace("__", ".") not in keys]
        if bad:
            raise ValueError(f"overrides: unknown TrainConfig setting(s) {bad} (e.g. 'stage1.epochs')")

    @property
    def data(self) -> DataRecipe:
        if self.faces is not None:
            return self.faces
        return _QUICK_DATA if self.quick else DataRecipe()

    @property
    def faces_dir(self) -> Path:
        return (
            Path(self.data_dir)
            if self.data_dir is not None
            else self.out_dir / ("faces-quick" if self.quick else "faces")
        )


def arm_config(
    cfg: DemoConfig, arm: Arm, seed: int, pretrained: Path | None, *, steps: tuple[int, int] | None = None
) -> TrainConfig:
    """The TrainConfig of ``arm`` for ``seed``: the recipe, the arm's switches, then ``cfg.overrides``.

    The ceiling (``all_labels``) trains as many optimizer steps as the full method's two stages together:
    ``steps`` is ``(stage-1 steps per epoch with the labeled fraction, stage-2 steps per epoch)``; its epochs and
    warmup are converted to epochs of the whole training set (its learning rate schedule has the same shape in steps).
    """
    recipe = QUICK_RECIPE if cfg.quick else DEMO_RECIPE
    faces = cfg.faces_dir
    seed_dir = cfg.out_dir / f"seed{seed}"
    values: dict[str, Any] = {
        **recipe,
        "data.root": str(faces),
        "data.unlabeled_root": str(faces / "unlabeled"),
        "data.loader": cfg.loader,
        "data.seed": seed,
        "run.seed": seed,
        "run.device": cfg.device,
        "run.output_dir": str(seed_dir / arm.key),
        "stage1.mixup": arm.mixup,
        "model.pretrained": None if pretrained is None else str(pretrained),
    }
    if _on_cpu(cfg):
        values["run.precision"] = "fp32"  # the documented results; "auto" may measure bf16 faster on some CPUs
    if arm.all_labels:
        values["data.labeled_fraction"] = 1.0
    else:  # the 5% arms share one split file
        values["data.labeled_fraction"] = cfg.labeled_fraction
        values["data.split_file"] = str(seed_dir / f"split-{cfg.labeled_fraction:g}.json")
    if not arm.pretrained:  # layer-wise lr decay is for fine-tuning a pretrained encoder, not for training from scratch
        values["stage1.optim.layer_decay"] = None
    values.update({k.replace("__", "."): v for k, v in cfg.overrides.items()})
    config = build_config(TrainConfig, overrides=_as_text(values))
    if arm.all_labels and steps is not None:
        config = _ceiling_budget(config, *steps, num_train=cfg.data.num_train)
    return config


def _ceiling_budget(config: TrainConfig, stage1_steps: int, stage2_steps: int, num_train: int) -> TrainConfig:
    """``config`` (stage 1 on all labels) with as many steps as stage 1 + stage 2 of the labeled-fraction arms."""
    s1, s2 = config.stage1, config.stage2
    total = s1.epochs * stage1_steps + s2.epochs * stage2_steps
    per_epoch = max(1, num_train // s1.batch_size)
    epochs = max(1, round(total / per_epoch))
    warmup = s1.optim.warmup_epochs * stage1_steps / per_epoch
    return derive_config(config, {"stage1.epochs": epochs, "stage1.optim.warmup_epochs": warmup})


def _as_text(values: Mapping[str, Any]) -> dict[str, Any]:
    """Tuples as the comma lists the config parser reads (an empty tuple stays a tuple)."""
    return {k: (",".join(str(x) for x in v) if isinstance(v, tuple) and v else v) for k, v in values.items()}


def _pretrain_config(cfg: DemoConfig, seed: int) -> TrainConfig:
    base = arm_config(cfg, ARM_BY_KEY["pretrain"], seed, None)
    return derive_config(base, {"run.output_dir": str(cfg.out_dir / f"seed{seed}" / "mae")})


def _scores(metrics: Mapping[str, Any], arm: str, seed: int, seconds: float, labeled: int) -> ArmResult:
    return ArmResult(
        arm,
        seed,
        float(metrics["accuracy"]),
        float(metrics["mean_class_accuracy"]),
        float(metrics["macro_f1"]),
        seconds,
        labeled,
    )


def _fresh(path: Path, resume: bool) -> None:
    """Start a seed's runs afresh (its checkpoints would make every stage resume, i.e. do nothing)."""
    if not resume and path.exists():
        shutil.rmtree(path)


def check_config(cfg: DemoConfig) -> None:
    """Build every arm's TrainConfig once, so that a bad override fails before anything runs (ConfigError)."""
    for arm in ARMS:
        arm_config(cfg, arm, cfg.seeds[0], cfg.out_dir / "mae.pth")
    _pretrain_config(cfg, cfg.seeds[0])


def _print(line: str) -> None:
    print(line, flush=True)  # each step's line as it finishes, also into a pipe or a log file


def run_demo(cfg: DemoConfig | None = None, echo: Callable[[str], None] = _print) -> DemoResult:
    """Run the ablation for every seed of ``cfg``; ``echo`` receives one line per finished step."""
    from ferfast.data import write_synthetic_dataset

    cfg = cfg or DemoConfig()
    check_config(cfg)
    t_start = time.perf_counter()
    d = cfg.data
    echo(
        f"ferfast demo: SSFER on synthetic faces, {cfg.labeled_fraction:.0%} of the labels, seeds "
        f"{', '.join(map(str, cfg.seeds))}{' (quick)' if cfg.quick else ''}"
    )
    if _on_cpu(cfg) and tune_cpu_allocator():  # docs/demo.md: a stage-1 step about 5% faster on these CPUs
        echo("[cpu] training on the CPU: glibc keeps freed memory for reuse (ferfast.tune_cpu_allocator)")
    t0 = time.perf_counter()
    write_synthetic_dataset(
        cfg.faces_dir,
        num_train=d.num_train,
        num_test=d.num_test,
        num_unlabeled=d.num_unlabeled,
        num_identities=d.num_identities,
        config=d.face_config(),
    )
    stage_seconds = {"data": time.perf_counter() - t0}
    echo(
        f"[data] {d.num_train} training, {d.num_test} test (unseen identities) and {d.num_unlabeled} unlabeled "
        f"faces of {d.size}x{d.size} in {cfg.faces_dir} ({stage_seconds['data']:.0f} s)"
    )
    rows: list[ArmResult] = []
    pictures: dict[str, Path] = {}
    pair_iou: dict[int, dict[str, float]] = {}
    for seed in cfg.seeds:
        _fresh(cfg.out_dir / f"seed{seed}", cfg.resume)
        rows += _run_seed(cfg, seed, stage_seconds, echo, pictures, pair_iou)
    stage_seconds["total"] = time.perf_counter() - t_start
    result = DemoResult(
        rows,
        stage_seconds,
        {**asdict(d), "faces_dir": str(cfg.faces_dir)},
        tuple(cfg.seeds),
        cfg.labeled_fraction,
        pair_iou=pair_iou,
    )
    from ferfast.demo_plots import save_results_png

    pictures = {"results": save_results_png(result, cfg.out_dir / "results.png"), **pictures}
    result.pictures = {key: _relative(path, cfg.out_dir) for key, path in pictures.items()}
    table = format_table(result)
    write_text_atomic(cfg.out_dir / "results.json", json.dumps(result.to_dict(), indent=2) + "\n")
    write_text_atomic(cfg.out_dir / "results.md", table + "\n" + picture_links(result))
    echo("")
    echo(table)
    return result


def _on_cpu(cfg: DemoConfig) -> bool:
    """Whether the demo trains on the CPU (``device`` cpu, or auto without a CUDA GPU)."""
    import torch

    return cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start``, with ``/`` (a Markdown link's form)."""
    return Path(os.path.relpath(path, start)).as_posix()


def _run_seed(
    cfg: DemoConfig,
    seed: int,
    stage_seconds: dict[str, float],
    echo: Callable[[str], None],
    pictures: dict[str, Path],
    pair_iou: dict[int, dict[str, float]],
) -> list:
    """Pretrain once (and draw the MAE's reconstructions), then every arm of ``cfg`` for ``seed``; the pictures'
    paths go into ``pictures``, the face-IoU Mixup arm's pair-IoU distribution into ``pair_iou``."""
    from ferfast.engine.evaluation import evaluate
    from ferfast.engine.stage_data import prepare_data
    from ferfast.engine.stages import run_pretrain, run_stage1, run_stage2

    rows: list[ArmResult] = []
    wanted = [ARM_BY_KEY[k] for k in cfg.arms]
    mae: Path | None = None
    if any(a.pretrained for a in wanted):
        pcfg = _pretrain_config(cfg, seed)
        t0 = time.perf_counter()
        mae = run_pretrain(pcfg)
        stage_seconds[f"mae/seed{seed}"] = dt = time.perf_counter() - t0
        echo(
            f"[seed {seed}] MAE pretraining: {pcfg.pretrain.epochs} epochs on {cfg.data.num_unlabeled} unlabeled "
            f"faces ({dt:.0f} s)"
        )
        recon = save_mae_reconstructions(pcfg, mae, cfg.out_dir / f"seed{seed}" / "reconstruction.png", seed)
        pictures[f"reconstruction/seed{seed}"] = recon
    stage1_models = {}
    steps = None  # (stage-1, stage-2) steps per epoch of the labeled-fraction arms: the ceiling's budget
    for arm in wanted:
        if arm.all_labels and steps is None:
            steps = _fraction_steps(cfg, seed, mae)
        acfg = arm_config(cfg, arm, seed, mae if arm.pretrained else None, steps=steps)
        t0 = time.perf_counter()
        data = prepare_data(acfg)
        if not arm.all_labels:
            steps = (
                len(data.labeled) // acfg.stage1.batch_size,
                len(data.unlabeled) // acfg.stage2.unlabeled_batch_size,
            )
        if arm.mixup and not arm.semisup:
            pair_iou[seed] = stats = mixup_pair_ious(acfg, data)
            echo(
                f"[seed {seed}] face-IoU Mixup pairs after stage 1's crops: IoU mean {stats['mean']:.2f}, quartiles "
                f"{stats['q25']:.2f} / {stats['median']:.2f} / {stats['q75']:.2f} ({stats['draws']:.0f} draws over "
                f"{MIXUP_IOU_EPOCHS} epochs)"
            )
        if arm.semisup:
            model = run_stage2(acfg, data, stage1_models["mixup"]).module
        else:
            model = run_stage1(acfg, data).module
            stage1_models[arm.key] = model
        seconds = time.perf_counter() - t0
        eval_dir = Path(acfg.run.output_dir) / "eval"
        metrics = evaluate(model, data.test, acfg, eval_dir)
        if (eval_dir / "confusion.png").is_file():
            pictures[f"confusion/{arm.key}/seed{seed}"] = eval_dir / "confusion.png"
        stage_seconds[f"{arm.key}/seed{seed}"] = seconds
        row = _scores(metrics, arm.key, seed, seconds, len(data.labeled))
        rows.append(row)
        echo(
            f"[seed {seed}] {arm.label}: accuracy {row.accuracy:.1%}, mean class accuracy "
            f"{row.mean_class_accuracy:.1%} ({row.labeled} labeled images, {seconds:.0f} s)"
        )
    return rows


def save_mae_reconstructions(pcfg: TrainConfig, checkpoint: Path, path: Path, seed: int, count: int = 6) -> Path:
    """Draw the pretrained MAE's reconstructions of ``count`` test faces (masking noise seeded by ``seed``) to
    ``path``: the MAE of ``pcfg`` (the pretraining config) with the weights of ``checkpoint``."""
    from ferfast.demo_plots import sample_faces, save_reconstruction_png
    from ferfast.engine.stage_data import evaluation_data
    from ferfast.engine.stages import build_mae
    from ferfast.models.checkpoint import load_mae_checkpoint

    mae = build_mae(pcfg)
    load_mae_checkpoint(mae, checkpoint)
    aug = pcfg.data.augment()
    faces = sample_faces(evaluation_data(pcfg), count, pcfg.data.image_size, aug.mean, aug.std)
    title = f"seed {seed}: MAE reconstructions of test faces, {pcfg.pretrain.mask_ratio:.0%} of the patches masked"
    save_reconstruction_png(
        mae, faces, path, mask_ratio=pcfg.pretrain.mask_ratio, seed=seed, mean=aug.mean, std=aug.std, title=title
    )
    return path


#: epochs of stage 1's loader that :func:`mixup_pair_ious` draws (each epoch crops every labeled image again)
MIXUP_IOU_EPOCHS = 5


def mixup_pair_ious(acfg: TrainConfig, data: Any, epochs: int = MIXUP_IOU_EPOCHS) -> dict[str, float]:
    """The distribution of face-IoU Mixup's pair IoUs as stage 1 sees them: each labeled image's face box after
    the stage's random crop and flip, against its Mixup partner's, over ``epochs`` epochs of the stage's own
    loader (the boxes only: nothing is trained). ``mean``, ``q25``, ``median``, ``q75`` and ``draws`` (images x
    epochs; with the flip pairing both images of a pair count)."""
    import numpy as np
    import torch

    from ferfast.engine.stages import build_mixup, stage1_loader

    cpu = torch.device("cpu")
    mixup = build_mixup(acfg, len(data.class_names))
    loader = stage1_loader(acfg, data, cpu)
    ious = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            n = int(batch["images"].shape[0])
            ious.append(mixup.pair_iou(batch.get("boxes"), mixup.sample_perm(n, cpu), n, cpu).numpy())
    values = np.concatenate(ious) if ious else np.full(1, np.nan)
    q25, median, q75 = (float(v) for v in np.quantile(values, [0.25, 0.5, 0.75]))
    return {"mean": float(values.mean()), "q25": q25, "median": median, "q75": q75, "draws": float(values.size)}


def _fraction_steps(cfg: DemoConfig, seed: int, mae: Path | None) -> tuple[int, int]:
    """Steps per epoch of stage 1 and stage 2 with the labeled fraction (for a ceiling run without those arms)."""
    from ferfast.engine.stage_data import prepare_data

    acfg = arm_config(cfg, ARM_BY_KEY["mixup"], seed, mae)
    data = prepare_data(acfg)
    return len(data.labeled) // acfg.stage1.batch_size, len(data.unlabeled) // acfg.stage2.unlabeled_batch_size


def format_table(result: DemoResult) -> str:
    """The ablation as a Markdown table: accuracy and mean class accuracy per arm (per seed and their mean)."""
    seeds = result.seeds
    arms = [a for a in ARMS if result.scores(a.key)]
    many = len(seeds) > 1
    head = ["method", "labels"]
    for s in seeds if many else ():
        head += [f"acc s{s}", f"mca s{s}"]
    head += ["accuracy" + (" (mean)" if many else ""), "mean class acc" + (" (mean)" if many else ""), "time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for arm in arms:
        labels = "100%" if arm.all_labels else f"{result.labeled_fraction:.0%}"
        cells = [arm.label, labels]
        for s in seeds if many else ():
            row = result.row(arm.key, s)
            cells += ["-", "-"] if row is None else [f"{row.accuracy:.1%}", f"{row.mean_class_accuracy:.1%}"]
        seconds = statistics.fmean(r.seconds for r in result.rows if r.arm == arm.key)
        cells += [
            f"{result.mean(arm.key):.1%}",
            f"{result.mean(arm.key, 'mean_class_accuracy'):.1%}",
            f"{seconds:.0f} s",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    out = ["SSFER ablation on synthetic faces (test split: identities unseen in training)", "", *lines, ""]
    out += _summary(result)
    for seed, q in sorted(result.pair_iou.items()):
        out.append(
            f"face-IoU Mixup pair IoU after stage 1's crops (seed {seed}): mean {q['mean']:.2f}, quartiles "
            f"{q['q25']:.2f} / {q['median']:.2f} / {q['q75']:.2f}"
        )
    times = [f"{k} {v:.0f} s" for k, v in result.stage_seconds.items()]
    out.append("wall time: " + ", ".join(times))
    shown = [v for k, v in result.pictures.items() if not k.startswith("confusion/")]
    if shown:  # the confusion matrices are each arm's eval/confusion.png, linked from results.md
        out.append("pictures: " + ", ".join(shown) + " (results.md shows them, with the confusion matrices)")
    return "\n".join(out)


def picture_links(result: DemoResult) -> str:
    """Markdown image links to ``result.pictures`` (paths relative to ``results.md``): the chart, each seed's
    MAE reconstructions, then each arm's confusion matrix; empty without pictures."""
    pics = result.pictures
    out: list[str] = []
    if "results" in pics:
        out += ["", f"![accuracy of each arm]({pics['results']})"]
    recons = [(s, pics[f"reconstruction/seed{s}"]) for s in result.seeds if f"reconstruction/seed{s}" in pics]
    if recons:
        out += ["", "## MAE reconstructions (original / masked / reconstruction)"]
        for s, link in recons:
            out += ["", f"seed {s}:", "", f"![MAE reconstructions, seed {s}]({link})"]
    confusions = [
        (a, s, pics[f"confusion/{a.key}/seed{s}"])
        for s in result.seeds
        for a in ARMS
        if f"confusion/{a.key}/seed{s}" in pics
    ]
    if confusions:
        out += ["", "## Confusion matrices (test split)"]
        for a, s, link in confusions:
            out += ["", f"seed {s}, {a.label}:", "", f"![confusion matrix: {a.label}, seed {s}]({link})"]
    return "\n".join(out) + "\n" if out else ""


def _summary(result: DemoResult) -> list[str]:
    """The method's story in numbers: each part's gain, the gap to scratch and to the fully supervised ceiling."""
    acc = {a.key: result.mean(a.key) for a in ARMS}
    lines = []
    steps = [
        ("pretrain", "scratch", "MAE pretraining"),
        ("mixup", "pretrain", "face-IoU Mixup"),
        ("semisup", "mixup", "FixMatch"),
    ]
    gains = [f"{name} {100 * (acc[a] - acc[b]):+.1f}" for a, b, name in steps if not math.isnan(acc[a] - acc[b])]
    if gains:
        lines.append(
            "gain of each part (accuracy points"
            + (", mean over seeds" if len(result.seeds) > 1 else "")
            + "): "
            + ", ".join(gains)
        )
    if not math.isnan(acc["semisup"] - acc["scratch"]):
        lines.append(f"full method vs supervised from scratch: {100 * (acc['semisup'] - acc['scratch']):+.1f} points")
    if not math.isnan(acc["semisup"] / acc["full"]):
        per_seed = ""
        if len(result.seeds) > 1:
            pairs = [(s, result.row("semisup", s), result.row("full", s)) for s in result.seeds]
            ratios = [f"s{s} {m.accuracy / f.accuracy:.1%}" for s, m, f in pairs if m is not None and f is not None]
            per_seed = f" ({', '.join(ratios)})"
        lines.append(
            f"full method with {result.labeled_fraction:.0%} of the labels reaches "
            f"{acc['semisup'] / acc['full']:.1%} of the fully supervised accuracy{per_seed}"
        )
    return lines
