"""Tests for the bundled Fed-Heart-Disease data set and its FLamby preprocessing."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest

from consortium.core.errors import DatasetError, MissingDependencyError
from consortium.datasets import heart_disease as hd
from consortium.datasets import load_all, load_center

EXPECTED_ROWS = {"cleveland": 303, "hungarian": 261, "switzerland": 46, "va": 130}
EXPECTED_SPLIT = {
    "cleveland": (199, 104),
    "hungarian": (172, 89),
    "switzerland": (30, 16),
    "va": (85, 45),
}
# num > 0 among the complete rows (train, test) with the default split seed.
EXPECTED_POSITIVES = {
    "cleveland": (91, 48),
    "hungarian": (65, 33),
    "switzerland": (30, 15),
    "va": (66, 35),
}
EXPECTED_SHA256 = {
    f"processed.{name}.data": digest
    for name, digest in {
        "cleveland": "a74b7efa387bc9d108d7d0115d831fe9b414b29ae7124f331b622b4efa0427c8",
        "hungarian": "d1ad108f785768cd3d7e82dc522e6f5a61eea93cccfb3a46ee8076f73fc3d796",
        "switzerland": "834a405ccf5b66ab4056bb77794adc8df0b7125186454c0a1d002d33c6c3b314",
        "va": "e7c93d8d0d2acdadfa4c5e8de768e2191e7f618b952e29623f1f0d5949ff6b8f",
    }.items()
}

DATA_DIR = resources.files("consortium.datasets") / "data" / "heart_disease"


def test_centers_and_feature_names() -> None:
    assert hd.CENTERS == ("cleveland", "hungarian", "switzerland", "va")
    assert set(hd.CENTER_TITLES) == set(hd.CENTERS)
    assert hd.CENTER_TITLES["cleveland"] == "Cleveland Clinic Foundation"
    assert hd.FEATURE_NAMES == (
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


@pytest.mark.parametrize("name", hd.CENTERS)
def test_rows_split_sizes_shapes_and_dtypes(name: str) -> None:
    c = load_center(name)
    assert c.name == name
    assert c.index == hd.CENTERS.index(name)
    assert c.title == hd.CENTER_TITLES[name]
    assert (c.num_train, c.num_test) == EXPECTED_SPLIT[name]
    assert c.num_train + c.num_test == EXPECTED_ROWS[name]
    assert c.x_train.shape == (c.num_train, 13)
    assert c.x_test.shape == (c.num_test, 13)
    assert c.y_train.shape == (c.num_train,)
    assert c.y_test.shape == (c.num_test,)
    assert c.x_train.dtype == np.float64 and c.x_test.dtype == np.float64
    assert c.y_train.dtype == np.int64 and c.y_test.dtype == np.int64
    assert c.feature_names == hd.FEATURE_NAMES
    assert np.isfinite(c.x_train).all() and np.isfinite(c.x_test).all()


@pytest.mark.parametrize("name", hd.CENTERS)
def test_label_balance(name: str) -> None:
    c = load_center(name)
    assert set(np.unique(np.concatenate([c.y_train, c.y_test]))) <= {0, 1}
    assert (int(c.y_train.sum()), int(c.y_test.sum())) == EXPECTED_POSITIVES[name]
    if name != "switzerland":  # switzerland has too few negatives to stratify
        assert abs(c.y_train.mean() - c.y_test.mean()) < 0.02


def test_raw_values_and_one_hot_encoding() -> None:
    for c in load_all(normalize=False):
        x = np.concatenate([c.x_train, c.x_test])
        for col in ("sex", "fbs", "exang", "cp_2", "cp_3", "cp_4", "restecg_1", "restecg_2"):
            assert set(np.unique(x[:, hd.FEATURE_NAMES.index(col)])) <= {0.0, 1.0}
        assert (x[:, 8:11].sum(axis=1) <= 1).all()  # at most one cp dummy
        assert (x[:, 11:13].sum(axis=1) <= 1).all()  # at most one restecg dummy
        assert ((x[:, 0] > 20) & (x[:, 0] < 90)).all()  # age in years
    # First Cleveland line: 63,1,1,145,233,1,2,150,0,2.3,... (cp 1 is the baseline).
    cleveland = load_center(0, normalize=False)
    first = np.array([63, 1, 145, 233, 1, 150, 0, 2.3, 0, 0, 0, 0, 1], dtype=np.float64)
    rows = np.concatenate([cleveland.x_train, cleveland.x_test])
    assert (rows == first).all(axis=1).sum() == 1


@pytest.mark.parametrize("name", hd.CENTERS)
def test_normalization_uses_train_statistics(name: str) -> None:
    raw = load_center(name, normalize=False)
    c = load_center(name)
    varying = raw.x_train.std(axis=0, ddof=1) > 0
    np.testing.assert_allclose(c.x_train.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(c.x_train[:, varying].std(axis=0, ddof=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(c.x_train[:, ~varying], 0.0)
    mean = raw.x_train.mean(axis=0)
    std = raw.x_train.std(axis=0, ddof=1) + 1e-9
    np.testing.assert_allclose(c.x_test, (raw.x_test - mean) / std)
    np.testing.assert_array_equal(c.y_train, raw.y_train)
    np.testing.assert_array_equal(c.y_test, raw.y_test)


def test_switzerland_constant_cholesterol_stays_finite() -> None:
    # chol is recorded as 0 for every Swiss patient: std 0, normalised to 0.
    c = load_center("switzerland")
    np.testing.assert_array_equal(c.x_train[:, hd.FEATURE_NAMES.index("chol")], 0.0)


def test_deterministic_and_seed_dependent() -> None:
    a, b = load_all(), load_all()
    for ca, cb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ca.x_train, cb.x_train)
        np.testing.assert_array_equal(ca.x_test, cb.x_test)
        np.testing.assert_array_equal(ca.y_test, cb.y_test)
    base = load_center("cleveland", normalize=False)
    other = load_center("cleveland", normalize=False, split_seed=7)
    assert other.num_train == base.num_train
    assert not np.array_equal(base.x_train, other.x_train)


def test_results_do_not_share_memory_with_cache() -> None:
    first = load_center("va", normalize=False)
    first.x_train[:] = -1.0
    first.y_train[:] = 7
    again = load_center("va", normalize=False)
    assert (again.x_train != -1.0).any()
    assert set(np.unique(again.y_train)) <= {0, 1}


@pytest.mark.parametrize("center", ["cleveland", "VA", " Hungarian ", 2, np.int64(3)])
def test_center_lookup(center: int | str) -> None:
    assert load_center(center).name in hd.CENTERS


@pytest.mark.parametrize("center", ["zurich", 4, -1, True, ""])
def test_unknown_center_names_valid_choices(center: int | str) -> None:
    with pytest.raises(DatasetError, match=r"cleveland.*hungarian.*switzerland.*va"):
        load_center(center)


def test_missing_sklearn_raises_missing_dependency_for_another_seed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without scikit-learn, the default split (kept) loads; another seed names the extra."""
    hd._split_indices.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.model_selection", None)
    try:
        assert load_center("cleveland").num_test == 104
        with pytest.raises(MissingDependencyError, match=r"consortium\[sklearn\]"):
            load_center("cleveland", split_seed=7)
    finally:
        hd._split_indices.cache_clear()


def test_the_kept_default_split_is_the_one_scikit_learn_draws() -> None:
    pytest.importorskip("sklearn")
    assert hd.DEFAULT_SPLIT_SEED == 43  # FLamby's
    for index, name in enumerate(hd.CENTERS):
        _, y = hd._encoded_center(index)
        kept = hd._split_indices(index, hd.DEFAULT_SPLIT_SEED)
        drawn = hd._drawn_split(y, hd.DEFAULT_SPLIT_SEED)
        for part, mine, theirs in zip(("train", "test"), kept, drawn, strict=True):
            np.testing.assert_array_equal(mine, theirs, err_msg=f"{name} {part}")
            assert mine.dtype == theirs.dtype and not mine.flags.writeable


def test_import_does_not_load_sklearn() -> None:
    code = "import sys, consortium.datasets; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_shipped_files_match_readme_digests() -> None:
    readme = (DATA_DIR / "README.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| (processed\.\w+\.data) \|.*\| ([0-9a-f]{64}) \|$", readme, re.M))
    assert table == EXPECTED_SHA256
    for filename, digest in table.items():
        assert hashlib.sha256((DATA_DIR / filename).read_bytes()).hexdigest() == digest
    assert "CC BY 4.0" in readme and "10.24432/C52P4X" in readme


def test_matches_flamby_pandas_pipeline() -> None:
    """Rebuild FLamby's pipeline with pandas (pooled get_dummies) and compare."""
    pd = pytest.importorskip("pandas")
    sklearn_split = pytest.importorskip("sklearn.model_selection").train_test_split
    frames, labels, tags = [], [], []
    for center, name in enumerate(hd.CENTERS):
        with (DATA_DIR / f"processed.{name}.data").open("r") as fh:
            df = pd.read_csv(fh, header=None, na_values="?").drop(columns=[10, 11, 12]).dropna()
        y = (df[13] > 0).astype(int)
        counts = y.value_counts()
        stratify = y if len(counts) > 1 and (counts > 2).all() else None
        _, test = sklearn_split(
            np.arange(len(df)),
            test_size=1.0 - 0.66,
            train_size=0.66,
            random_state=43,
            shuffle=True,
            stratify=stratify,
        )
        frames.append(df.drop(columns=[13]))
        labels.append(y.to_numpy())
        in_test = np.isin(np.arange(len(df)), test)
        tags += [(center, bool(t)) for t in in_test]
    pooled = pd.get_dummies(pd.concat(frames, ignore_index=True), columns=[2, 6], drop_first=True)
    assert [str(c) for c in pooled.columns] == [
        "0", "1", "3", "4", "5", "7", "8", "9", "2_2.0", "2_3.0", "2_4.0", "6_1.0", "6_2.0",
    ]  # fmt: skip
    x_all = pooled.to_numpy(dtype=np.float64)
    y_all = np.concatenate(labels)
    center_of = np.array([t[0] for t in tags])
    is_test = np.array([t[1] for t in tags])
    for c in load_all(normalize=False):
        train = (center_of == c.index) & ~is_test
        test_ = (center_of == c.index) & is_test
        np.testing.assert_array_equal(c.x_train, x_all[train])
        np.testing.assert_array_equal(c.x_test, x_all[test_])
        np.testing.assert_array_equal(c.y_train, y_all[train])
        np.testing.assert_array_equal(c.y_test, y_all[test_])


def test_package_public_api_is_all() -> None:
    import consortium.datasets as datasets

    assert sorted(datasets.__all__) == sorted(
        [
            "CENTERS",
            "CENTER_TITLES",
            "FEATURE_NAMES",
            "CenterData",
            "ProviderData",
            "dirichlet",
            "iid",
            "load_all",
            "load_center",
            "make_provider_fraud",
            "natural",
            "shards",
        ]
    )
    public = {n for n in vars(datasets) if not n.startswith("_")}
    submodules = {"fraud", "heart_disease", "heart_disease_split", "partition"}
    assert public - submodules == set(datasets.__all__)
