"""Linear probe: logistic regression (or a linear SVM) on frozen backbone features from the feature store.

With ``predict_proba`` and warm starts it is also the classifier of the "self-supervised features + linear
classifier" active-learning cycle (Bengar et al., ICCVW 2021): retrained every cycle in seconds on CPU.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from geal.api.task import Task, TaskContext, TaskError

log = logging.getLogger(__name__)


class LinearProbeTask(Task):
    """Multinomial logistic regression (scikit-learn, lbfgs) or a linear SVM on fixed features.

    Settings: ``C`` (inverse L2 strength), ``max_iter``, ``standardize``, ``classifier`` (``logistic`` |
    ``linear_svm``: scikit-learn ``LinearSVC``, one-vs-rest, squared hinge). :meth:`setup` reads the
    backbone's global features of the whole train pool (global id = row) and of the test split from the
    context's feature sources, and the labels of both pools; :meth:`from_arrays` builds a probe on given
    arrays instead.

    ``predict_proba(ids)`` gives ``(n, n_classes)`` class probabilities of train-pool images (logistic: the
    model's; linear SVM: a softmax over its decision values, a monotone score for acquisition functions, not
    a calibrated probability); classes the fit never saw get 0. ``fit(ids, warm_start=True)`` (logistic
    only) starts lbfgs from the previous fit's weights when the two fits saw the same classes.

    Features are standardised with a scaler fitted on the **whole pool** (labels unused; the pool is what
    an annotator sees), not on the few labeled images: on L2-normalised ViT features an unscaled C=1 probe
    hardly leaves its intercept and predicts the majority class (docs/design.md §6.6).
    ``evaluate`` reports ``top1``, ``mean_class_acc`` (mean per-class recall over the test classes) and
    ``n_test``. A fit on a single class predicts that class everywhere.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"labels", "test_split", "features"})
    provides: ClassVar[frozenset[str]] = frozenset({"embed", "predict_proba", "warm_start"})

    def __init__(
        self,
        name: str = "linear_probe",
        C: float = 1.0,
        max_iter: int = 1000,
        standardize: bool = True,
        classifier: str = "logistic",
    ) -> None:
        if classifier not in ("logistic", "linear_svm"):
            raise TaskError(f"task.classifier must be 'logistic' or 'linear_svm', got {classifier!r}")
        self.name = name
        self.classifier = classifier
        if classifier == "linear_svm":  # LinearSVC (liblinear) cannot start from earlier weights
            self.provides = frozenset(self.provides - {"warm_start"})
        self.C, self.max_iter, self.standardize = float(C), int(max_iter), bool(standardize)
        self.seed = 0
        self._model: LogisticRegression | LinearSVC | None = None
        self._constant: int | None = None

    @classmethod
    def from_arrays(
        cls,
        train_features: np.ndarray,
        train_labels: np.ndarray | Sequence[int] | None,
        test_features: np.ndarray,
        test_labels: np.ndarray | Sequence[int] | None,
        seed: int = 0,
        **settings: Any,
    ) -> LinearProbeTask:
        """A probe on given features (N, D) / (M, D) and labels (N,) / (M,), ready to fit (no setup)."""
        probe = cls(**settings)
        probe.seed = int(seed)
        probe.use_features(train_features, train_labels, test_features, test_labels)
        return probe

    def setup(self, ctx: TaskContext) -> None:
        """The global features of both pools (from the feature sources) and their labels."""
        super().setup(ctx)
        assert ctx.features is not None and ctx.test_features is not None and ctx.test_pool is not None
        self.seed = int(ctx.seed)
        self.use_features(
            ctx.features.global_features().features,
            ctx.pool.labels,
            ctx.test_features.global_features().features,
            ctx.test_pool.labels,
        )

    def use_features(
        self,
        train_features: np.ndarray,
        train_labels: np.ndarray | Sequence[int] | None,
        test_features: np.ndarray,
        test_labels: np.ndarray | Sequence[int] | None,
    ) -> None:
        """Take the (N, D) train-pool and (M, D) test features and their labels (standardised if set)."""
        name = self.name
        if train_labels is None or test_labels is None:
            raise TaskError(
                f"{name}: the {'train' if train_labels is None else 'test'} pool has no labels; a linear "
                "probe needs a labeled dataset (class folders, MNIST-5k, Fashion-MNIST, Pets)"
            )
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
        if self.standardize:
            scaler = StandardScaler().fit(x)
            x, xt = scaler.transform(x), scaler.transform(xt)
        self.x, self.x_test = x.astype(np.float32), xt.astype(np.float32)
        self.raw = np.asarray(train_features, dtype=np.float32)
        self.n_classes = int(max(self.y.max(initial=0), self.y_test.max(initial=0))) + 1

    def fit(self, train_ids: Sequence[int], warm_start: bool = False) -> dict[str, float]:
        ids = np.asarray(train_ids, dtype=np.int64)
        if ids.size == 0:
            raise TaskError(f"{self.name}: nothing to train on (0 ids)")
        if warm_start and "warm_start" not in self.provides:
            raise TaskError(f"{self.name}: classifier={self.classifier} cannot warm-start")
        y = self.y[ids]
        classes = np.unique(y)
        previous = self._model
        self._model, self._constant = None, None
        if classes.size == 1:
            self._constant = int(classes[0])
            return {"train_acc": 1.0, "n_train": float(ids.size), "n_classes": 1.0}
        model: LogisticRegression | LinearSVC
        if self.classifier == "linear_svm":
            model = LinearSVC(C=self.C, max_iter=self.max_iter, random_state=self.seed)
        elif (
            warm_start
            and isinstance(previous, LogisticRegression)
            and np.array_equal(previous.classes_, classes)
        ):
            model = previous
            model.set_params(warm_start=True)
        else:
            model = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(self.x[ids], y)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            log.warning(
                "%s: %s did not converge in %d iterations (raise task.max_iter)",
                self.name,
                self.classifier,
                self.max_iter,
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
        return self._scores(pred)

    def predict_proba(self, ids: Sequence[int], mc_samples: int = 0) -> torch.Tensor:
        """(len(ids), n_classes) class probabilities of train-pool images under the last fit."""
        if mc_samples:
            raise TaskError(f"{self.name}: a linear probe has no dropout to sample (BALD needs a CNN task)")
        x = self.x[np.asarray(ids, dtype=np.int64)]
        out = np.zeros((len(x), self.n_classes), dtype=np.float64)
        if self._constant is not None:
            out[:, self._constant] = 1.0
        elif self._model is None:
            raise RuntimeError(f"{self.name}: call fit() before predict_proba()")
        elif isinstance(self._model, LogisticRegression):
            out[:, self._model.classes_] = self._model.predict_proba(x)
        else:
            scores = self._model.decision_function(x)
            if scores.ndim == 1:  # two classes: the score of classes_[1] against classes_[0]
                scores = np.stack([np.zeros_like(scores), scores], axis=1)
            out[:, self._model.classes_] = torch.from_numpy(scores).softmax(1).numpy()
        return torch.from_numpy(out).float()

    def _scores(self, pred: np.ndarray) -> dict[str, float]:
        correct = pred == self.y_test
        per_class = [correct[self.y_test == c].mean() for c in np.unique(self.y_test)]
        return {
            "top1": float(correct.mean()),
            "mean_class_acc": float(np.mean(per_class)),
        }

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.from_numpy(self.raw[np.asarray(ids, dtype=np.int64)])
