"""One colour and one display name per method, the same in every figure (``geal-report`` plots,
``geal-visualize`` histograms): a method's colour comes from its name, never from its position in a plot.

Defaults: :data:`DEFAULT_NAMES` and :data:`DEFAULT_COLORS` (every shipped selector); a method not listed
gets its config name and a colour derived from a hash of its name (stable across runs and machines). Users
override either with ``--names METHOD=NAME ...`` / ``--colors METHOD=COLOUR ...`` or a YAML file
(``--style FILE``: ``names: {geal: Ours}``, ``colors: {geal: '#d62728'}``); any Matplotlib colour works.
"""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

#: how each shipped selector is named in a figure's legend
DEFAULT_NAMES: dict[str, str] = {
    "geal": "GEAL",
    "random": "Random",
    "coreset_cos": "Core-Set (cos)",
    "coreset_euc": "Core-Set (euc)",
    "typiclust": "TypiClust",
    "probcover": "ProbCover",
    "activeft": "ActiveFT",
    "maxherding": "MaxHerding",
    "usl": "USL",
    "kmeans_nearest": "k-means (nearest)",
    "entropy": "Entropy",
    "margin": "Margin",
    "least_confidence": "Least confidence",
    "bald": "BALD",
    "learn_loss": "Learn-Loss",
    "vaal": "VAAL",
}

#: one fixed colour per shipped selector (GEAL red, Random grey; the rest from Tableau's palettes)
DEFAULT_COLORS: dict[str, str] = {
    "geal": "#d62728",
    "random": "#7f7f7f",
    "coreset_cos": "#1f77b4",
    "coreset_euc": "#aec7e8",
    "typiclust": "#2ca02c",
    "probcover": "#ff7f0e",
    "activeft": "#9467bd",
    "maxherding": "#8c564b",
    "usl": "#e377c2",
    "kmeans_nearest": "#bcbd22",
    "entropy": "#17becf",
    "margin": "#98df8a",
    "least_confidence": "#ffbb78",
    "bald": "#c5b0d5",
    "learn_loss": "#393b79",
    "vaal": "#637939",
}


def hashed_color(name: str) -> str:
    """A mid-saturation colour from ``name`` alone (sha256, so the same in every process)."""
    digest = hashlib.sha256(name.encode()).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536.0
    lightness = 0.38 + 0.2 * digest[2] / 255.0
    r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.65)
    return "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in (r, g, b)))


def _pairs(items: Sequence[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{item!r}: give METHOD={what} (e.g. geal=GEAL)")
        out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class MethodStyle:
    """Display name and colour of each method: the user's ``names`` / ``colors`` over the defaults."""

    names: Mapping[str, str] = field(default_factory=dict)
    colors: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from matplotlib.colors import is_color_like

        bad = {k: v for k, v in self.colors.items() if not is_color_like(v)}
        if bad:
            raise ValueError(f"{bad}: not a colour (a name such as 'tab:red' or a hex code '#d62728')")

    @classmethod
    def from_options(
        cls,
        names: Sequence[str] | None = None,
        colors: Sequence[str] | None = None,
        style_file: Path | None = None,
    ) -> MethodStyle:
        """From ``METHOD=VALUE`` pairs (``--names``, ``--colors``) over a YAML file (``--style``) holding
        ``names:`` and ``colors:`` maps."""
        doc: dict[str, dict[str, str]] = {"names": {}, "colors": {}}
        if style_file is not None:
            try:
                loaded = yaml.safe_load(Path(style_file).expanduser().read_text()) or {}
            except yaml.YAMLError as err:
                raise ValueError(f"{style_file} is not readable YAML: {err}".replace("\n", " ")) from err
            if not isinstance(loaded, dict) or set(loaded) - {"names", "colors"}:
                raise ValueError(f"{style_file}: expected a YAML map with 'names:' and/or 'colors:'")
            for key in ("names", "colors"):
                doc[key] = {str(k): str(v) for k, v in (loaded.get(key) or {}).items()}
        doc["names"].update(_pairs(names, "NAME"))
        doc["colors"].update(_pairs(colors, "COLOUR"))
        return cls(doc["names"], doc["colors"])

    def name(self, method: str) -> str:
        return self.names.get(method) or DEFAULT_NAMES.get(method) or method

    def color(self, method: str) -> str:
        """The method's colour as a hex code."""
        from matplotlib.colors import to_hex

        return to_hex(self.colors.get(method) or DEFAULT_COLORS.get(method) or hashed_color(method))


def shades(color: str, n: int) -> list[str]:
    """``n`` shades of ``color`` from darker to lighter (the settings of one method in an ablation plot);
    ``[color]`` for one."""
    from matplotlib.colors import to_hex, to_rgb

    if n <= 1:
        return [to_hex(color)]
    h, lightness, s = colorsys.rgb_to_hls(*to_rgb(color))
    lo, hi = max(0.2, lightness - 0.2), min(0.8, lightness + 0.25)
    return [to_hex(colorsys.hls_to_rgb(h, lo + (hi - lo) * i / (n - 1), s)) for i in range(n)]
