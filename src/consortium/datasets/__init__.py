"""Data sets and partitioners for federated-learning experiments.

- :mod:`~consortium.datasets.heart_disease`: the four-hospital Fed-Heart-Disease
  benchmark (UCI data shipped with the package, FLamby preprocessing);
- :mod:`~consortium.datasets.fraud`: a synthetic provider-fraud generator with
  class imbalance and feature drift between providers;
- :mod:`~consortium.datasets.partition`: iid, Dirichlet, shard and natural
  partitioners for any array data set.

Only numpy is imported here; scikit-learn only when a heart-disease split of
another seed than FLamby's is first drawn (FLamby's is kept in
:mod:`~consortium.datasets.heart_disease_split`).
"""

from consortium.datasets.fraud import ProviderData, make_provider_fraud
from consortium.datasets.heart_disease import (
    CENTER_TITLES,
    CENTERS,
    FEATURE_NAMES,
    CenterData,
    load_all,
    load_center,
)
from consortium.datasets.partition import dirichlet, iid, natural, shards

__all__ = [
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
