"""Linear probe: logistic regression on frozen backbone features read from the feature store."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from geal.task import Task, TaskError

log = logging.getLogger(__name__)


class LinearProbeTask(Task):
    """Multinomial logistic regression (scikit-learn, lbfgs) on fixed features.

    Runtime arguments (given by ``geal-run``): ``train_features`` (N, D) and ``train_labels`` (N,) of the
    whole train pool (global id = row), ``test_features`` (M, D) and ``test_labels`` (M,) of the test split.
    Config: ``C`` (inverse L2 strength), ``max_iter``, ``standardize``.

    Features are standardised with a scaler fitted on the **whole pool** (labels unused; the pool is what
    an annotator sees), not on the few labeled images: on L2-normalised ViT features an unscaled C=1 probe
    hardly leaves its intercept and predicts the majority class (shared/DESIGN.md §4).
    ``evaluate`` reports ``top1``, ``mean_class_acc`` (mean per-class recall over the test classes) and
    ``n_test``. A fit on a single class predicts that class everywhere.
    """

    provides: ClassVar[frozenset[str]] = frozenset({"embed"})

    def __init__(
        self,
        train_features: np.ndarray,
        train_labels: np.ndarray | Sequence[int] | None,
        test_features: np.ndarray,
        test_labels: np.ndarray | Sequence[int] | None,
        name: str = "linear_probe",
        C: float = 1.0,
        max_iter: int = 1000,
        standardize: bool = True,
        seed: int = 0,
    ) -> None:
        if train_labels is None or test_labels is None:
            raise TaskError(
                f"{name}: the {'train' if train_labels is None else 'test'} pool has no labels; a linear "
                "probe needs a labeled dataset (class folders, MNIST-5k, Fashion-MNIST, Pets)"
            )
        self.name = name
        x = np.asarray(train_features, dtype=np.float32)
        xt = np.asarray(test_features, dtype=np.float32)
        if x.ndim != 2 or xt.ndim != 2 or x.shape[1] != xt.shape[1]:
            raise TaskError(f"{name}: features must be (N, D) and (M, D), got {x.shape} and {xt.shape}")
        if len(xt) == 0:
            raise TaskError(f"{name}: the test split is empty: check task.test_data")
        self.y = np.asarray(train_labels, dtype=np.int64)
        self.y_test = np.asarray(test_labels, dtype=np.int64)
        if len(self.y) != len(x) or len(self.y_test) != len(xt):
            raise TaskError(f"{name}: {len(x)} train features but {len(self.y)} labels (or test mismatch)")
        if standardize:
            scaler = StandardScaler().fit(x)
            x, xt = scaler.transform(x), scaler.transform(xt)
        self.x, self.x_test = x.astype(np.float32), xt.astype(np.float32)
        self.raw = np.asarray(train_features, dtype=np.float32)
        self.C, self.max_iter, self.seed = float(C), int(max_iter), int(seed)
        self._model: LogisticRegression | None = None
        self._constant: int | None = None

    def fit(self, train_ids: Sequence[int]) -> dict[str, float]:
        ids = np.asarray(train_ids, dtype=np.int64)
        if ids.size == 0:
            raise TaskError(f"{self.name}: nothing to train on (0 ids)")
        y = self.y[ids]
        classes = np.unique(y)
        self._model, self._constant = None, None
        if classes.size == 1:
            self._constant = int(classes[0])
            return {"train_acc": 1.0, "n_train": float(ids.size), "n_classes": 1.0}
        model = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(self.x[ids], y)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            log.warning(
                "%s: lbfgs did not converge in %d iterations (raise task.max_iter)", self.name, self.max_iter
            )
        self._model = model
        return {
            "train_acc": float(model.score(self.x[ids], y)),
            "n_train": float(ids.size),
            "n_classes": float(classes.size),
        }

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Class predictions for (n, D) already-standardised features."""
        if self._constant is not None:
            return np.full(len(features), self._constant, dtype=np.int64)
        if self._model is None:
            raise RuntimeError(f"{self.name}: call fit() before evaluate()")
        return self._model.predict(features)

    def evaluate(self) -> dict[str, float]:
        pred = self.predict(self.x_test)
        correct = pred == self.y_test
        per_class = [correct[self.y_test == c].mean() for c in np.unique(self.y_test)]
        return {
            "top1": float(correct.mean()),
            "mean_class_acc": float(np.mean(per_class)),
        }

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.from_numpy(self.raw[np.asarray(ids, dtype=np.int64)])
