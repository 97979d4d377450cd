"""Models and metrics in plain numpy, plus adapters for scikit-learn and PyTorch.

``consortium.ml.logistic`` (binary logistic regression) and
``consortium.ml.mlp`` (a small multiclass perceptron) train with seeded,
torch-like minibatches and return a :class:`TrainResult`. The adapters
``consortium.ml.sklearn`` and ``consortium.ml.torch`` are imported on their own
by the code that needs them; importing this package never loads
scikit-learn or PyTorch.
"""

from consortium.ml import logistic, metrics, mlp
from consortium.ml._training import TrainResult
from consortium.ml.metrics import accuracy, log_loss, multiclass_accuracy, roc_auc

__all__ = [
    "TrainResult",
    "accuracy",
    "log_loss",
    "logistic",
    "metrics",
    "mlp",
    "multiclass_accuracy",
    "roc_auc",
]
