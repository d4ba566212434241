"""The paper's "instance number" analysis: annotated objects and class histogram of a selection vs random.

For a detection pool, a selector that favours images with many objects gives the detector more training
signal per labelled image. The random reference is the *exact expectation* of a uniform random subset of
the same size (size × the pool's mean per image), so it needs no sampling and no extra runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def class_count_matrix(labels_per_image: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """(n_images, num_classes) int64 object counts from each image's (N_i,) 0-based object labels."""
    out = np.zeros((len(labels_per_image), num_classes), dtype=np.int64)
    for i, labels in enumerate(labels_per_image):
        if len(labels):
            out[i] = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]
    return out


def instance_statistics(
    counts: np.ndarray, selected: Sequence[int], class_names: Sequence[str]
) -> dict[str, float]:
    """Instances of the ``selected`` global ids vs the expectation for as many random pool images.

    counts: (n_images, C) object counts per pool image (:func:`class_count_matrix`). Keys:
    ``selection/instances``, ``random/instances`` (expected), ``selection/instances_ratio`` (selection /
    random), ``selection/instances_per_image``, ``selection/empty_images`` and ``random/empty_images``,
    ``selection/classes_covered``, and per class ``selection/class/<name>`` and ``random/class/<name>``.
    """
    if counts.ndim != 2 or counts.shape[1] != len(class_names):
        raise ValueError(f"counts must be (n_images, {len(class_names)}), got {counts.shape}")
    ids = np.asarray(selected, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= len(counts)):
        raise ValueError(f"selected global ids must be in [0, {len(counts)})")
    n = len(ids)
    chosen = counts[ids]
    per_class = chosen.sum(0)
    expected = counts.mean(0) * n if len(counts) else np.zeros(len(class_names))
    total, total_random = float(per_class.sum()), float(expected.sum())
    per_image = counts.sum(1)
    out = {
        "selection/images": float(n),
        "selection/instances": total,
        "random/instances": total_random,
        "selection/instances_ratio": total / total_random if total_random > 0 else float("nan"),
        "selection/instances_per_image": total / n if n else 0.0,
        "selection/empty_images": float((chosen.sum(1) == 0).sum()),
        "random/empty_images": float((per_image == 0).mean() * n) if len(counts) else 0.0,
        "selection/classes_covered": float((per_class > 0).sum()),
    }
    for k, name in enumerate(class_names):
        out[f"selection/class/{name}"] = float(per_class[k])
        out[f"random/class/{name}"] = float(expected[k])
    return out
