"""Fed-Heart-Disease: the UCI Heart Disease data as four natural silos (hospitals).

The preprocessing reproduces FLamby's Fed-Heart-Disease benchmark:

1. each center's file is parsed (no header, ``?`` = missing);
2. the mostly-missing columns ``slope``, ``ca`` and ``thal`` are dropped, then every
   row with a remaining missing value (303/261/46/130 rows are left);
3. the label is ``num > 0`` (any angiographic disease);
4. ``cp`` and ``restecg`` are one-hot encoded, dropping the first level
   (13 features, ordered as :data:`FEATURE_NAMES`);
5. each center is split 66/34 into train/test with scikit-learn's
   ``train_test_split`` (seed 43, stratified on the label), rows kept in file order
   (seed 43's split is kept in :mod:`~consortium.datasets.heart_disease_split`, so the
   default needs no scikit-learn);
6. each center is z-scored with its own train mean and unbiased std (+ 1e-9).

Features are ``float64``; labels are ``int64`` with values 0/1 (cast with
``y.astype(np.float32)`` for a BCE loss). The files ship inside the package
(``consortium/datasets/data/heart_disease``, CC BY 4.0, see the README there).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from consortium.core.errors import DatasetError, MissingDependencyError
from consortium.datasets import heart_disease_split

__all__ = [
    "CENTERS",
    "CENTER_TITLES",
    "DEFAULT_SPLIT_SEED",
    "FEATURE_NAMES",
    "TRAIN_FRACTION",
    "CenterData",
    "load_all",
    "load_center",
]

#: Short center names, in FLamby's center order (index 0..3).
CENTERS: tuple[str, ...] = ("cleveland", "hungarian", "switzerland", "va")

#: Human-readable name of each center.
CENTER_TITLES: Mapping[str, str] = MappingProxyType(
    {
        "cleveland": "Cleveland Clinic Foundation",
        "hungarian": "Hungarian Institute of Cardiology, Budapest",
        "switzerland": "University Hospitals Zurich and Basel",
        "va": "V.A. Medical Center, Long Beach",
    }
)

#: The 13 model features, in column order (untouched columns first, then the dummies).
FEATURE_NAMES: tuple[str, ...] = (
    "age",
    "sex",
    "trestbps",
    "chol",
    "fbs",
    "thalach",
    "exang",
    "oldpeak",
    "cp_2",
    "cp_3",
    "cp_4",
    "restecg_1",
    "restecg_2",
)

#: FLamby's split seed (its split is kept in :mod:`consortium.datasets.heart_disease_split`)
DEFAULT_SPLIT_SEED = heart_disease_split.SEED
#: FLamby's train share of each center
TRAIN_FRACTION = 0.66

_NUM_COLUMNS = 14
_KEPT_COLUMNS = (0, 1, 3, 4, 5, 7, 8, 9)  # age sex trestbps chol fbs thalach exang oldpeak
_CP_COLUMN, _RESTECG_COLUMN, _LABEL_COLUMN = 2, 6, 13
_DROPPED_COLUMNS = (10, 11, 12)  # slope, ca, thal: mostly missing outside Cleveland
_CP_LEVELS = (1.0, 2.0, 3.0, 4.0)  # first level is the dropped baseline
_RESTECG_LEVELS = (0.0, 1.0, 2.0)
_STD_EPSILON = 1e-9

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class CenterData:
    """One hospital's train and test sets (``x``: float64 rows, ``y``: int64 0/1)."""

    name: str
    index: int
    x_train: FloatArray
    y_train: IntArray
    x_test: FloatArray
    y_test: IntArray

    @property
    def title(self) -> str:
        """The hospital's human-readable name."""
        return CENTER_TITLES[self.name]

    @property
    def num_train(self) -> int:
        """Number of training rows."""
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test rows."""
        return int(self.x_test.shape[0])

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Column names of ``x_train``/``x_test``."""
        return FEATURE_NAMES


def load_center(
    center: int | str,
    *,
    split_seed: int = DEFAULT_SPLIT_SEED,
    normalize: bool = True,
) -> CenterData:
    """Load one center (by index 0-3 or name) with FLamby's split and normalisation."""
    index = _resolve_center(center)
    x, y = _encoded_center(index)
    train_idx, test_idx = _split_indices(index, split_seed)
    x_train, x_test = x[train_idx], x[test_idx]
    if normalize:
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0, ddof=1) + _STD_EPSILON
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std
    return CenterData(
        name=CENTERS[index],
        index=index,
        x_train=x_train,
        y_train=y[train_idx],
        x_test=x_test,
        y_test=y[test_idx],
    )


def load_all(*, split_seed: int = DEFAULT_SPLIT_SEED, normalize: bool = True) -> list[CenterData]:
    """Load all four centers, in :data:`CENTERS` order."""
    return [load_center(i, split_seed=split_seed, normalize=normalize) for i in range(len(CENTERS))]


def _resolve_center(center: int | str) -> int:
    """Map a center index or (case-insensitive) name to its index."""
    if isinstance(center, str):
        key = center.strip().lower()
        if key in CENTERS:
            return CENTERS.index(key)
    elif (
        isinstance(center, int | np.integer)
        and not isinstance(center, bool)
        and 0 <= int(center) < len(CENTERS)
    ):
        return int(center)
    choices = ", ".join(f"{i} {name!r}" for i, name in enumerate(CENTERS))
    raise DatasetError(f"unknown heart-disease center {center!r}; valid choices: {choices}")


@functools.cache
def _encoded_center(index: int) -> tuple[FloatArray, IntArray]:
    """Parse and encode one center's file once; the arrays are read-only."""
    name = CENTERS[index]
    filename = f"processed.{name}.data"
    resource = resources.files("consortium.datasets") / "data" / "heart_disease" / filename
    try:
        text = resource.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(
            f"cannot read the bundled heart-disease file {filename!r} ({exc}); "
            "reinstall consortium with its package data"
        ) from exc
    raw = _parse(text, filename)
    x, y = _encode(raw, filename)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _parse(text: str, filename: str) -> FloatArray:
    """Rows of the 14 file columns as floats (NaN where the file says ``?``)."""
    rows: list[list[float]] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.strip().split(",")
        if len(fields) != _NUM_COLUMNS:
            raise DatasetError(
                f"{filename}:{line_no}: expected {_NUM_COLUMNS} fields, got {len(fields)}"
            )
        try:
            rows.append([np.nan if f.strip() == "?" else float(f) for f in fields])
        except ValueError as exc:
            raise DatasetError(f"{filename}:{line_no}: not a number ({exc})") from exc
    if not rows:
        raise DatasetError(f"{filename} holds no rows")
    return np.asarray(rows, dtype=np.float64)


def _encode(raw: FloatArray, filename: str) -> tuple[FloatArray, IntArray]:
    """Drop slope/ca/thal and incomplete rows, binarise the label, one-hot cp/restecg."""
    kept = np.delete(raw, _DROPPED_COLUMNS, axis=1)
    raw = raw[~np.isnan(kept).any(axis=1)]
    cp, restecg = raw[:, _CP_COLUMN], raw[:, _RESTECG_COLUMN]
    for column, values, levels in (("cp", cp, _CP_LEVELS), ("restecg", restecg, _RESTECG_LEVELS)):
        unexpected = set(np.unique(values).tolist()) - set(levels)
        if unexpected:
            raise DatasetError(f"{filename}: unexpected {column} values {sorted(unexpected)}")
    dummies = [(cp == level) for level in _CP_LEVELS[1:]]
    dummies += [(restecg == level) for level in _RESTECG_LEVELS[1:]]
    x = np.column_stack([raw[:, _KEPT_COLUMNS], *dummies]).astype(np.float64)
    y = (raw[:, _LABEL_COLUMN] > 0).astype(np.int64)
    return x, y


@functools.lru_cache(maxsize=256)
def _split_indices(index: int, split_seed: int) -> tuple[IntArray, IntArray]:
    """FLamby's per-center train/test row indices, each in file order (read-only): for
    the default seed as kept in :mod:`heart_disease_split` (no scikit-learn needed),
    otherwise drawn with scikit-learn."""
    _, y = _encoded_center(index)
    if split_seed == heart_disease_split.SEED:
        test_idx = np.array(heart_disease_split.TEST_ROWS[CENTERS[index]].split(), np.int64)
        train_idx = np.setdiff1d(np.arange(y.shape[0], dtype=np.int64), test_idx)
    else:
        train_idx, test_idx = _drawn_split(y, split_seed)
    train_idx.setflags(write=False)
    test_idx.setflags(write=False)
    return train_idx, test_idx


def _drawn_split(y: IntArray, split_seed: int) -> tuple[IntArray, IntArray]:
    """The train and test rows of a center with labels ``y``, as FLamby draws them."""
    try:
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise MissingDependencyError.for_extra("scikit-learn", "sklearn") from exc
    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.size > 1 and bool((counts > 2).all()) else None
    train, test = train_test_split(
        np.arange(y.shape[0]),
        test_size=1.0 - TRAIN_FRACTION,
        train_size=TRAIN_FRACTION,
        random_state=split_seed,
        shuffle=True,
        stratify=stratify,
    )
    # FLamby tags rows as train/test by position and keeps the file order.
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(test, dtype=np.int64))
