"""Synthetic faces: a seeded, vectorised procedural generator of aligned faces with seven expressions.

ferfast's tests and demo run on these images without the licensed FER datasets.
:mod:`~ferfast.data.synthetic.faces` draws them (identities, expressions, pose, lighting,
clutter, exact face boxes); :mod:`~ferfast.data.synthetic.dataset` writes them in RAF-DB
basic's layout plus an unlabeled face pool (``python -m ferfast.train data synth OUT``).
"""

from ferfast.data.synthetic.dataset import RAFDB_CODES, SYNTHETIC_FORMAT, SYNTHETIC_JSON, write_synthetic_dataset
from ferfast.data.synthetic.faces import (
    EXPRESSION_PARAMS,
    EXPRESSION_PROTOTYPES,
    FaceIdentities,
    SyntheticFaceConfig,
    expression_parameters,
    make_identities,
    render_faces,
)

__all__ = [
    "EXPRESSION_PARAMS",
    "EXPRESSION_PROTOTYPES",
    "RAFDB_CODES",
    "SYNTHETIC_FORMAT",
    "SYNTHETIC_JSON",
    "FaceIdentities",
    "SyntheticFaceConfig",
    "expression_parameters",
    "make_identities",
    "render_faces",
    "write_synthetic_dataset",
]
