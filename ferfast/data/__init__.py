"""ferfast's data layer: FER datasets in their official layouts, label splits, face boxes, loaders, synthetic faces.

See docs/design.md, Datasets and labels. Every format builds a :class:`FaceDataset` (encoded images, labels in the
canonical class order :data:`CANONICAL_CLASSES`, face boxes); :func:`build_loader` turns datasets
into batches ``{images, labels, boxes, index, ...}`` (uint8 images, normalised on the training
device by :func:`normalize_images`) for the four uses (pretrain, stage 1, stage 2, eval) with DALI or
torch; :func:`split_labeled` draws SSFER's label fractions;
:mod:`ferfast.data.synthetic` draws faces so that everything runs without the licensed datasets.
"""

from ferfast.data.augment import FACE_MEAN, FACE_STD, AugmentConfig, RandAugmentConfig
from ferfast.data.base import (
    BOX_SIDECAR,
    CANONICAL_CLASSES,
    FER7_CLASSES,
    FER8_CLASSES,
    UNREADABLE_FILE,
    FaceDataset,
    canonical_class_name,
    load_box_sidecar,
    load_unreadable,
    save_box_sidecar,
)
from ferfast.data.check import (
    CheckReport,
    SkipCounter,
    UnreadableImageError,
    check_image,
    check_images,
    decode_rgb,
    list_image_files,
    write_unreadable,
)
from ferfast.data.dali_loader import DaliFaceLoader, dali_available
from ferfast.data.faces import FaceDetector, detect_faces
from ferfast.data.formats import (
    RAFDB,
    AffectNet,
    FaceFolder,
    FERImageFolder,
    FERPlus,
    FileList,
    MXNetRecord,
    detect_format,
    open_dataset,
)
from ferfast.data.loaders import DEVICES, LOADER_BACKENDS, build_loader, make_plan, resolve_dali_device
from ferfast.data.normalize import normalize_images
from ferfast.data.plan import IMAGE_KEYS, LOADER_STAGES, LoaderPlan
from ferfast.data.rand_augment import RAND_AUGMENT_OPS, RandAugmentDraws, apply_rand_augment_torch, draw_rand_augment
from ferfast.data.sampling import ShardedBatches
from ferfast.data.splits import LabelSplit, SplitMismatchError, labeled_per_class, load_split, save_split, split_labeled
from ferfast.data.synthetic import (
    EXPRESSION_PARAMS,
    EXPRESSION_PROTOTYPES,
    FaceIdentities,
    SyntheticFaceConfig,
    make_identities,
    render_faces,
    write_synthetic_dataset,
)
from ferfast.data.torch_loader import TorchFaceLoader

__all__ = [
    "BOX_SIDECAR",
    "CANONICAL_CLASSES",
    "DEVICES",
    "EXPRESSION_PARAMS",
    "EXPRESSION_PROTOTYPES",
    "FACE_MEAN",
    "FACE_STD",
    "FER7_CLASSES",
    "FER8_CLASSES",
    "IMAGE_KEYS",
    "LOADER_BACKENDS",
    "LOADER_STAGES",
    "RAFDB",
    "RAND_AUGMENT_OPS",
    "UNREADABLE_FILE",
    "AffectNet",
    "AugmentConfig",
    "CheckReport",
    "DaliFaceLoader",
    "FERImageFolder",
    "FERPlus",
    "FaceDataset",
    "FaceDetector",
    "FaceFolder",
    "FaceIdentities",
    "FileList",
    "LabelSplit",
    "LoaderPlan",
    "MXNetRecord",
    "RandAugmentConfig",
    "RandAugmentDraws",
    "ShardedBatches",
    "SkipCounter",
    "SplitMismatchError",
    "SyntheticFaceConfig",
    "TorchFaceLoader",
    "UnreadableImageError",
    "apply_rand_augment_torch",
    "build_loader",
    "canonical_class_name",
    "check_image",
    "check_images",
    "dali_available",
    "decode_rgb",
    "detect_faces",
    "detect_format",
    "draw_rand_augment",
    "labeled_per_class",
    "list_image_files",
    "load_box_sidecar",
    "load_split",
    "load_unreadable",
    "make_identities",
    "make_plan",
    "normalize_images",
    "open_dataset",
    "render_faces",
    "resolve_dali_device",
    "save_box_sidecar",
    "save_split",
    "split_labeled",
    "write_synthetic_dataset",
    "write_unreadable",
]
