"""The public source task and the pretrained base every party builds for itself.

The base is an MLP pretrained on scikit-learn's bundled handwritten digits of
classes 0–4 (UCI Optical Recognition of Handwritten Digits, 1797 8×8 images
shipped inside scikit-learn, so nothing is downloaded). The target task of the
federation — digits 5–9, split over the hospitals — never touches it.

Pretraining is deterministic (fixed seed, one CPU thread, full ordering fixed
by a seeded generator) and takes well under a second, so the server and every
node rebuild the same weights instead of shipping them: only what the chosen
fine-tuning mode trains ever travels. :func:`base_digest` fingerprints the
weights; the server sends its digest with every task and a node whose base
differs (another torch build, say) refuses to train rather than mix adapters
trained on different bases. Run ``python -m lora_app.pretrain`` from the
example folder to pretrain, print the source accuracy and the digest.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Iterator

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

#: the source task's classes (pretraining) and the target task's (the federation)
SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
HIDDEN = 256
PRETRAIN_SEED = 0
PRETRAIN_EPOCHS = 30
PRETRAIN_LR = 0.05
PRETRAIN_BATCH = 32


class DigitsMLP(nn.Module):
    """64 pixels → 256 → 256 → 10 logits. ``fc1``/``fc2`` are what LoRA adapts."""

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)  # pixel intensities 0..16


def split(classes: tuple[int, ...], seed: int) -> tuple[np.ndarray, ...]:
    """x_train, x_test, y_train, y_test of the rows of ``classes`` (75/25, stratified)."""
    x, y = _digits()
    keep = np.isin(y, classes)
    parts = train_test_split(x[keep], y[keep], test_size=0.25, stratify=y[keep], random_state=seed)
    return tuple(parts)


def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        predicted = net(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float(np.mean(predicted == y))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the setting.

    For pretraining it fixes the reduction order (the same bits on every
    party). For this small model it is also the fast setting: the matmuls are
    tiny, and on a busy machine OpenMP's hand-offs between threads cost far
    more than they save (LoRA's extra small matmuls made a round 10× slower).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.cache
def _pretrained_state() -> dict[str, torch.Tensor]:
    x_train, _, y_train, _ = split(SOURCE_CLASSES, PRETRAIN_SEED)
    with one_thread():
        torch.manual_seed(PRETRAIN_SEED)
        net = DigitsMLP()
        order = torch.Generator().manual_seed(PRETRAIN_SEED)
        optimizer = torch.optim.SGD(net.parameters(), lr=PRETRAIN_LR, momentum=0.9)
        xs, ys = torch.from_numpy(x_train), torch.from_numpy(y_train)
        for _ in range(PRETRAIN_EPOCHS):
            for batch in torch.randperm(len(xs), generator=order).split(PRETRAIN_BATCH):
                optimizer.zero_grad()
                nn.functional.cross_entropy(net(xs[batch]), ys[batch]).backward()
                optimizer.step()
    return {name: t.detach().clone() for name, t in net.state_dict().items()}


def pretrained() -> DigitsMLP:
    """A fresh copy of the pretrained base (pretrained once per process, then cached)."""
    net = DigitsMLP()
    net.load_state_dict(_pretrained_state())
    return net


@functools.cache
def base_digest() -> str:
    """SHA-256 over the pretrained weights' names, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in _pretrained_state().items():
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


if __name__ == "__main__":
    _, x_test, _, y_test = split(SOURCE_CLASSES, PRETRAIN_SEED)
    print(f"source accuracy (digits 0-4, held out): {accuracy(pretrained(), x_test, y_test):.3f}")
    print(f"base sha256: {base_digest()}")
