"""Which images each batch holds: seeded shuffling, sharding by rank, explicit epoch length.

Both loaders take their batches from here, so they see the same images in the same order for
the same seed (the torch loader's workers and DALI's source only execute the plan).
``torch.utils.data.DistributedSampler``'s rules: one permutation per epoch from
``(seed, epoch)``; every rank gets ``indices[rank::world_size]``; with ``drop_last`` the tail that
does not fill a batch on every rank is dropped, without it the epoch is padded by wrapping
around so all ranks run the same number of steps (the last batch may then be partial).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ShardedBatches", "batch_rng"]

#: Kinds of random draws of one batch (crop/flip of each view, RandAugment), so views never share draws.
DRAWS = {"view": 0, "weak": 1, "strong": 2, "rand_augment": 3}


def batch_rng(seed: int, epoch: int, rank: int, step: int, stream: int, draw: str) -> np.random.Generator:
    """The generator of one batch's augmentation draws: a pure function of its coordinates."""
    return np.random.default_rng([int(seed), int(epoch), int(rank), int(step), int(stream), DRAWS[draw]])


@dataclass
class ShardedBatches:
    """The batches of each epoch on one rank.

    Args:
        num_samples: images in the dataset.
        batch_size: images per batch on this rank.
        shuffle: a new permutation each epoch (training) or the dataset's order (evaluation).
        drop_last: drop the last incomplete batch (training); else keep it partial.
        seed: seed of the permutations (same on every rank).
        rank, world_size: this process's shard.
        min_batches: repeat the (reshuffled) data within an epoch until each rank has at least this
            many full batches; FixMatch's labeled set, which is smaller than one unlabeled epoch.
    """

    num_samples: int
    batch_size: int
    shuffle: bool = True
    drop_last: bool = True
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    min_batches: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.batch_size, int) and self.batch_size > 0):
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not (isinstance(self.world_size, int) and self.world_size > 0):
            raise ValueError(f"world_size must be a positive int, got {self.world_size!r}")
        if not (isinstance(self.rank, int) and 0 <= self.rank < self.world_size):
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank!r}")
        if self.num_samples <= 0:
            raise ValueError(f"the dataset is empty (num_samples={self.num_samples})")
        if self.min_batches and not self.shuffle:
            raise ValueError("min_batches (repeating the data within an epoch) needs shuffle=True")

    def _repeats(self) -> int:
        """How many passes over the data one epoch takes (1 unless ``min_batches`` asks for more)."""
        need = self.min_batches * self.batch_size * self.world_size
        return max(1, -(-need // self.num_samples)) if need else 1

    def __len__(self) -> int:
        """Batches per epoch on each rank."""
        n = self.num_samples * self._repeats()
        per_rank = n // self.world_size if self.drop_last else -(-n // self.world_size)
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def epoch(self, epoch: int) -> list[np.ndarray]:
        """The dataset indices of every batch of ``epoch`` on this rank."""
        if self.shuffle:
            rng = np.random.default_rng([int(self.seed), int(epoch)])
            order = np.concatenate([rng.permutation(self.num_samples) for _ in range(self._repeats())])
        else:
            order = np.arange(self.num_samples)
        n = len(order)
        if self.drop_last:
            total = (n // self.world_size) * self.world_size
            order = order[:total]
        else:
            total = -(-n // self.world_size) * self.world_size
            order = np.resize(order, total)  # wraps around, as DistributedSampler pads
        mine = order[self.rank :: self.world_size]
        nb = len(self)
        return [mine[b * self.batch_size : (b + 1) * self.batch_size] for b in range(nb)]
