"""Frozen settings dataclasses built from config nodes, with the typo check of a struct schema."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def settings_from_node(cls: type[T], node: T | Mapping[str, Any] | None, key: str) -> T:
    """``node`` as a ``cls`` (a dataclass): an instance as is, a mapping (a config node) checked key by key,
    None: the defaults. An unknown key is a ValueError naming it, the node (``key``) and the valid keys."""
    assert is_dataclass(cls), f"{cls} is not a dataclass"
    if node is None:
        return cls()
    if isinstance(node, cls):
        return node
    assert isinstance(node, Mapping), f"{key} must be a mapping, got {type(node).__name__}"
    valid = [f.name for f in fields(cls)]
    unknown = sorted(str(k) for k in node if k not in valid)
    if unknown:
        raise ValueError(f"{key} has unknown key(s) {unknown}; valid keys: {valid}")
    return cls(**{str(k): v for k, v in node.items()})
