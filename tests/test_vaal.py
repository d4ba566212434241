"""VAAL: the discriminator separates labeled from unlabeled, and the picks come from the uncovered region."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pytest
import torch
from PIL import Image

from baselines.vaal import VAE, VAALSelector, elbo_loss
from geal.api.pool import ImagePool
from geal.api.selector import SelectionContext, SelectionError


class TwoRegions(ImagePool):
    """Grey noise images with one bright square: top-left for ids < n_a (region A), bottom-right after."""

    name = "two_regions"

    def __init__(self, n_a: int, n_b: int, size: int = 16) -> None:
        self.n_a, self.n_b, self.size = n_a, n_b, size

    @property
    def ids(self) -> Sequence[str]:
        return [f"img_{i:03d}" for i in range(self.n_a + self.n_b)]

    def load(self, index: int) -> Image.Image:
        rng = np.random.default_rng(index)
        img = rng.integers(0, 50, (self.size, self.size), dtype=np.uint8)
        s = self.size // 2
        region = (slice(0, s), slice(0, s)) if index < self.n_a else (slice(s, None), slice(s, None))
        img[region] = 200 + rng.integers(0, 50)
        return Image.fromarray(img).convert("RGB")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny convolutions: one intra-op thread is faster, and immune to a busy shared CPU (measured ~80x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_vaal(**kw) -> VAALSelector:
    args = dict(
        image_size=16,
        in_chans=1,
        channels=(8, 16),
        disc_hidden=64,
        iterations=100,
        batch_size=16,
        progress=False,
    )
    return VAALSelector(**{**args, **kw})


def test_vaal_picks_the_region_the_labeled_set_does_not_cover() -> None:
    pool = TwoRegions(40, 40)
    labeled = list(range(12))  # only region A is labeled; 28 A and 40 B images are unlabeled
    selector = small_vaal()
    out = selector.select(pool, 20, SelectionContext(labeled=labeled, seed=0))
    from_b = sum(i >= 40 for i in out.global_ids)
    assert from_b >= 18, f"only {from_b}/20 picks from the uncovered region (random: ~12)"
    # the discriminator learned to separate: labeled images score high, the picks low
    assert out.info["mean_p_labeled_on_labeled"] > out.info["mean_p_labeled_on_unlabeled"] + 0.2
    assert all(0.5 < s <= 1.0 for s in out.scores)  # P(unlabeled) of every pick
    assert out.scores == sorted(out.scores, reverse=True)
    # same seed → same picks (the image cache is reused); another seed trains another model
    again = selector.select(pool, 20, SelectionContext(labeled=labeled, seed=0))
    assert again.global_ids == out.global_ids and again.scores == out.scores


def test_vaal_needs_labeled_images_and_valid_geometry() -> None:
    with pytest.raises(SelectionError, match="needs labeled images"):
        small_vaal().select(TwoRegions(4, 4), 2, SelectionContext(seed=0))
    with pytest.raises(ValueError, match="divisible by 2\\^3"):
        VAALSelector(image_size=20, channels=(8, 16, 32))


def test_elbo_is_reconstruction_plus_kl() -> None:
    x = torch.zeros(2, 1, 4, 4)
    recon = torch.full((2, 1, 4, 4), 0.5)
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    assert float(elbo_loss(x, recon, mu, logvar, beta=1.0)) == pytest.approx(16 * 0.25)
    mu = torch.ones(2, 3)  # KL of N(1, 1) to N(0, 1) is 0.5 per dimension
    assert float(elbo_loss(x, recon, mu, logvar, beta=2.0)) == pytest.approx(4.0 + 2.0 * 1.5)
    vae = VAE(3, 32, 32, (8, 16, 32))
    with torch.no_grad():
        r, m, lv = vae(torch.rand(2, 3, 32, 32))
    assert r.shape == (2, 3, 32, 32) and m.shape == lv.shape == (2, 32)
    assert float(r.min()) >= 0.0 and float(r.max()) <= 1.0
