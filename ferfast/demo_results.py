"""The demo's ablation: its rows (:data:`ARMS`) and what a run measured (:class:`DemoResult`).

Apart from :mod:`ferfast.demo`, which runs the ablation, so that :mod:`ferfast.demo_plots` draws the results
without importing the runner.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ARMS", "ARM_BY_KEY", "Arm", "ArmResult", "DemoResult"]


@dataclass(frozen=True)
class Arm:
    """One row of the ablation: which parts of the method it uses."""

    key: str
    label: str
    pretrained: bool
    mixup: bool
    semisup: bool
    all_labels: bool = False


#: The ablation's rows, in the order they are trained and printed.
ARMS: tuple[Arm, ...] = (
    Arm("scratch", "supervised from scratch", pretrained=False, mixup=False, semisup=False),
    Arm("pretrain", "+ MAE pretraining", pretrained=True, mixup=False, semisup=False),
    Arm("mixup", "+ face-IoU Mixup", pretrained=True, mixup=True, semisup=False),
    Arm("semisup", "+ FixMatch (full method)", pretrained=True, mixup=True, semisup=True),
    Arm("full", "fully supervised (ceiling)", pretrained=True, mixup=False, semisup=False, all_labels=True),
)
#: the rows by key
ARM_BY_KEY = {arm.key: arm for arm in ARMS}


@dataclass
class ArmResult:
    """An arm's test scores and wall time for one seed."""

    arm: str
    seed: int
    accuracy: float
    mean_class_accuracy: float
    macro_f1: float
    seconds: float
    labeled: int


@dataclass
class DemoResult:
    """Every arm's scores per seed, each stage's wall time, and what the data was."""

    rows: list[ArmResult]
    stage_seconds: dict[str, float]  #: ``data``, ``mae/seed<S>``, ``<arm>/seed<S>``, ``total``
    data: dict[str, Any]
    seeds: tuple[int, ...]
    labeled_fraction: float
    #: the pictures, relative to ``out_dir``: ``results``, ``reconstruction/seed<S>``, ``confusion/<arm>/seed<S>``
    pictures: dict[str, str] = field(default_factory=dict)
    #: per seed, face-IoU Mixup's pair IoUs after stage 1's crops: ``mean``, ``q25``, ``median``, ``q75``, ``draws``
    pair_iou: dict[int, dict[str, float]] = field(default_factory=dict)

    def row(self, arm: str, seed: int) -> ArmResult | None:
        """The result of ``arm`` for ``seed``, if it ran."""
        return next((r for r in self.rows if r.arm == arm and r.seed == seed), None)

    def scores(self, arm: str, key: str = "accuracy") -> list[float]:
        """``key`` of ``arm`` for each seed, in seed order."""
        rows = [self.row(arm, s) for s in self.seeds]
        return [getattr(r, key) for r in rows if r is not None]

    def mean(self, arm: str, key: str = "accuracy") -> float:
        values = self.scores(arm, key)
        return statistics.fmean(values) if values else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [asdict(r) for r in self.rows],
            "stage_seconds": self.stage_seconds,
            "data": self.data,
            "seeds": list(self.seeds),
            "labeled_fraction": self.labeled_fraction,
            "pictures": self.pictures,
            "pair_iou": {str(k): v for k, v in self.pair_iou.items()},
        }
