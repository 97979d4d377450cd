"""Tests for the PyTorch adapter in consortium.ml.torch."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.core.errors import MissingDependencyError
from consortium.ml import logistic
from consortium.ml import torch as adapter

N, D = 100, 6


@pytest.fixture
def torch() -> Any:
    return pytest.importorskip("torch")


def _net(torch: Any, seed: int) -> Any:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.ReLU(), torch.nn.Linear(3, 2)
    )


@pytest.mark.torch
def test_state_dict_round_trip(torch: Any) -> None:
    source, target = _net(torch, 0), _net(torch, 1)
    source.train()
    source(torch.randn(8, 4))  # move the batch-norm running statistics
    arrays = adapter.state_dict_to_arrays(source)
    assert list(arrays) == list(source.state_dict())
    assert arrays["0.weight"].dtype == np.float32
    assert arrays["1.num_batches_tracked"].dtype == np.int64
    assert arrays["0.weight"].shape == (3, 4)

    adapter.load_arrays(target, Arrays.from_bytes(arrays.to_bytes()))
    for name, tensor in target.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), arrays[name], err_msg=name)


@pytest.mark.torch
def test_arrays_are_detached_copies(torch: Any) -> None:
    net = _net(torch, 0)
    arrays = adapter.state_dict_to_arrays(net)
    snapshot = arrays.copy()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    assert arrays.equals(snapshot)
    arrays["0.weight"][...] = 7.0
    assert not torch.any(net[0].weight == 7.0)


@pytest.mark.torch
def test_load_casts_float64_into_float32_parameters(torch: Any) -> None:
    net = torch.nn.Linear(3, 1)
    adapter.load_arrays(net, {"weight": np.ones((1, 3)), "bias": np.array([0.5])})
    assert net.weight.dtype == torch.float32
    assert torch.equal(net.weight, torch.ones(1, 3))
    assert net.bias.item() == 0.5


@pytest.mark.torch
def test_bfloat16_travels_as_bfloat16(torch: Any) -> None:
    net = torch.nn.Linear(2, 2).to(torch.bfloat16)
    arrays = adapter.state_dict_to_arrays(net)
    assert arrays["weight"].dtype.name == "bfloat16"
    wire = Arrays.from_bytes(arrays.to_bytes())  # 2 bytes a value, read back as bfloat16
    assert wire["weight"].nbytes == 2 * 4
    other = torch.nn.Linear(2, 2).to(torch.bfloat16)
    adapter.load_arrays(other, wire)
    assert other.weight.dtype == torch.bfloat16
    assert torch.equal(other.weight, net.weight)
    assert torch.equal(other.bias, net.bias)


@pytest.mark.torch
def test_shape_and_name_mismatches(torch: Any) -> None:
    net = torch.nn.Linear(3, 2)
    good = adapter.state_dict_to_arrays(net)
    with pytest.raises(ValueError, match=r"'weight'.*\(2, 4\).*\(2, 3\)"):
        adapter.load_arrays(net, {"weight": np.zeros((2, 4)), "bias": good["bias"]})
    with pytest.raises(ValueError, match=r"missing \['bias'\]"):
        adapter.load_arrays(net, {"weight": good["weight"]})
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        adapter.load_arrays(net, {**good, "extra": np.zeros(1)})


@pytest.mark.torch
def test_non_strict_loads_what_matches(torch: Any) -> None:
    net = torch.nn.Linear(3, 2)
    before = net.bias.detach().clone()
    adapter.load_arrays(net, {"weight": np.zeros((2, 3)), "unknown": np.zeros(5)}, strict=False)
    assert torch.equal(net.weight, torch.zeros(2, 3))
    assert torch.equal(net.bias, before)
    with pytest.raises(ValueError, match="'weight'"):
        adapter.load_arrays(net, {"weight": np.zeros((3, 3))}, strict=False)


def test_missing_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(MissingDependencyError, match=r"consortium\[torch\]"):
        adapter.state_dict_to_arrays(object())


@pytest.mark.torch
@pytest.mark.parametrize(
    "kwargs",
    [
        {"optimizer": "sgd", "lr": 0.1},
        {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01, "prox_mu": 0.3},
        {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.01, "prox_mu": 0.3},
    ],
)
def test_logistic_train_matches_torch_linear_with_the_same_batches(
    torch: Any, kwargs: dict[str, Any]
) -> None:
    """consortium.ml.logistic follows torch's Linear + BCE + SGD/Adam step for step."""
    rng = np.random.default_rng(12)
    x = rng.normal(size=(N, D))
    y = (x @ rng.normal(size=D) > 0).astype(np.float64)
    params = logistic.init_params(D, np.random.default_rng(12))
    steps, batch = 11, 32
    result = logistic.train(
        params, x, y, rng=np.random.default_rng(3), batch_size=batch, steps=steps, **kwargs
    )

    model = torch.nn.Linear(D, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(params["weight"]))
        model.bias.copy_(torch.from_numpy(params["bias"]))
    w0 = [p.detach().clone() for p in model.parameters()]
    opt_kwargs = {"lr": kwargs["lr"], "weight_decay": kwargs.get("weight_decay", 0.0)}
    if kwargs["optimizer"] == "adam":
        opt = torch.optim.Adam(model.parameters(), **opt_kwargs)
    else:
        opt = torch.optim.SGD(
            model.parameters(), momentum=kwargs.get("momentum", 0.0), **opt_kwargs
        )
    mu = float(kwargs.get("prox_mu", 0.0))
    rng = np.random.default_rng(3)
    done = 0
    while done < steps:
        perm = rng.permutation(N)
        for start in range(0, N, batch):
            if done == steps:
                break
            idx = perm[start : start + batch]
            xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xb)[:, 0], yb)
            prox = sum(((p - q) ** 2).sum() for p, q in zip(model.parameters(), w0, strict=True))
            opt.zero_grad()
            (loss + mu / 2 * prox).backward()
            opt.step()
            done += 1
    np.testing.assert_allclose(result.params["weight"], model.weight.detach().numpy(), rtol=1e-9)
    np.testing.assert_allclose(result.params["bias"], model.bias.detach().numpy(), rtol=1e-9)
