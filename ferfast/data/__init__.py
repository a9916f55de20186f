"""ferfast's data layer: FER datasets, labeled/unlabeled splits, face boxes and loaders (DESIGN.md section 3).

Only the label-fraction splits are here so far (:mod:`ferfast.data.splits`).
"""

from ferfast.data.splits import LabelSplit, labeled_per_class, load_split, save_split, split_labeled

__all__ = ["LabelSplit", "labeled_per_class", "load_split", "save_split", "split_labeled"]
