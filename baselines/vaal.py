"""VAAL — Variational Adversarial Active Learning (Sinha, Ebrahimi & Darrell, ICCV 2019). Task-agnostic.

A β-VAE learns a latent space of the *whole* pool (labeled and unlabeled images), while a discriminator on
the latent means learns to tell labeled from unlabeled; the VAE is also trained adversarially to make the
two indistinguishable. After training, the unlabeled images that the discriminator is most confident are
unlabeled (lowest probability of "labeled") are the least represented by the labeled set: they are picked.

As in the reference implementation (github.com/sinhasam/vaal): every selection trains a fresh VAE and
discriminator (Adam, lr 5e-4); each iteration takes ``vae_steps`` (2) VAE steps, each on a new labeled and
unlabeled batch, with loss ``ELBO(labeled) + ELBO(unlabeled) + adversary_weight · [BCE(D(μ_l), 1) +
BCE(D(μ_u), 1)]``, then ``disc_steps`` (1) discriminator steps with ``BCE(D(μ_l), 1) + BCE(D(μ_u), 0)``.
The discriminator is an MLP on μ (latent 32 → 512 → 512 → 1). One deliberate difference: the β-VAE loss
is the standard per-image ELBO (squared error summed over pixels + β·KL summed over the latent, both
averaged over the batch); the reference adds a per-pixel *mean* squared error to a *batch-summed* KL,
which weighs the prior thousands of times more than the reconstruction and lets small-image VAEs collapse
to the prior (every μ ≈ 0), leaving the discriminator nothing to separate.

The encoder/decoder are configurable (``channels``: stride-2 4×4 conv blocks with BatchNorm and ReLU);
the defaults are sized for 32×32 images on a CPU — the reference uses (128, 256, 512, 1024) at 32×32.
Images are read once per pool through its loader (RGB, or grey with ``in_chans=1``), resized to
``image_size`` and kept in memory as uint8 ``(N, C, S, S)``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from geal.api.pool import ImagePool
from geal.api.selector import Selection, SelectionContext, SelectionError, Selector

log = logging.getLogger(__name__)


class VAE(nn.Module):
    """β-VAE over (B, C, S, S) images in [0, 1]. ``encode`` → (μ, log σ²) each (B, latent_dim);
    ``forward`` → (reconstruction (B, C, S, S) in [0, 1], μ, log σ²). S must be divisible by 2^len(channels).
    """

    def __init__(self, in_chans: int, image_size: int, latent_dim: int, channels: Sequence[int]) -> None:
        super().__init__()
        depth = len(channels)
        if depth == 0 or image_size % (2**depth) != 0:
            raise ValueError(
                f"selector.image_size={image_size} must be divisible by 2^{depth} (one halving per entry of "
                f"selector.channels={list(channels)})"
            )
        self.bottom = image_size // (2**depth)
        self.top_channels = int(channels[-1])
        enc: list[nn.Module] = []
        cin = in_chans
        for cout in channels:
            enc += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        flat = self.top_channels * self.bottom * self.bottom
        self.fc_mu = nn.Linear(flat, latent_dim)
        self.fc_logvar = nn.Linear(flat, latent_dim)
        self.fc_dec = nn.Linear(latent_dim, flat)
        dec: list[nn.Module] = []
        rev = list(channels)[::-1]
        for cin_, cout in zip(rev, [*rev[1:], rev[-1]], strict=True):
            dec += [nn.ConvTranspose2d(cin_, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        self.decoder = nn.Sequential(*dec, nn.Conv2d(rev[-1], in_chans, 3, 1, 1), nn.Sigmoid())

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h).clamp(-20.0, 20.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        h = self.fc_dec(z).view(-1, self.top_channels, self.bottom, self.bottom)
        return self.decoder(h), mu, logvar


class LatentDiscriminator(nn.Module):
    """(B, latent_dim) → (B,) logit of "labeled" (an MLP, as in the reference)."""

    def __init__(self, latent_dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(1)


def elbo_loss(
    x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float
) -> torch.Tensor:
    """Negative β-ELBO per image, batch mean: Σ_pixels (x̂ - x)² + β · KL(N(μ, σ²) ‖ N(0, I))."""
    rec = (recon - x).pow(2).flatten(1).sum(1)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    return (rec + beta * kl).mean()


class _ResizedImages(Dataset):
    """Image ``i`` of a pool as a (C, S, S) uint8 tensor (RGB or grey), for the in-memory cache."""

    def __init__(self, pool: ImagePool, size: int, in_chans: int) -> None:
        self.pool, self.size, self.mode = pool, size, "L" if in_chans == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, index: int) -> torch.Tensor:
        img = self.pool.load(index).convert(self.mode)
        img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)


class VAALSelector(Selector):
    """VAAL (see the module docstring). Needs a labeled set: in cycles its initial set is drawn at random.

    image_size / in_chans: the VAE's input (images resized; 1 = grey). latent_dim, beta: the β-VAE.
    channels: encoder conv widths (decoder mirrors them). disc_hidden: discriminator width.
    iterations: training iterations per selection (each = ``vae_steps`` VAE steps + ``disc_steps``
    discriminator steps on fresh batches of ``batch_size`` labeled and ``batch_size`` unlabeled images).
    adversary_weight: weight of the VAE's adversarial term. lr_vae / lr_disc: Adam learning rates.
    """

    nested: ClassVar[bool] = False
    cold_start: ClassVar[bool] = False

    def __init__(
        self,
        name: str = "vaal",
        image_size: int = 32,
        in_chans: int = 3,
        latent_dim: int = 32,
        beta: float = 1.0,
        channels: Sequence[int] = (32, 64, 128),
        disc_hidden: int = 512,
        iterations: int = 1000,
        batch_size: int = 64,
        vae_steps: int = 2,
        disc_steps: int = 1,
        adversary_weight: float = 1.0,
        lr_vae: float = 5e-4,
        lr_disc: float = 5e-4,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        progress: bool = True,
    ) -> None:
        if in_chans not in (1, 3):
            raise ValueError(f"selector.in_chans must be 1 (grey) or 3 (RGB), got {in_chans}")
        if min(iterations, batch_size, vae_steps, disc_steps, latent_dim, eval_batch_size) < 1:
            raise ValueError(
                "selector: iterations, batch_size, vae_steps, disc_steps, latent_dim, eval_batch_size "
                "must be >= 1"
            )
        self.name = name
        self.image_size, self.in_chans, self.latent_dim = int(image_size), int(in_chans), int(latent_dim)
        self.beta, self.channels, self.disc_hidden = float(beta), [int(c) for c in channels], int(disc_hidden)
        VAE(self.in_chans, self.image_size, self.latent_dim, self.channels)  # validates the geometry now
        self.iterations, self.batch_size = int(iterations), int(batch_size)
        self.vae_steps, self.disc_steps = int(vae_steps), int(disc_steps)
        self.adversary_weight = float(adversary_weight)
        self.lr_vae, self.lr_disc = float(lr_vae), float(lr_disc)
        self.eval_batch_size, self.num_workers, self.progress = int(eval_batch_size), num_workers, progress
        self._cache: tuple[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------------------------- images

    def images(self, pool: ImagePool) -> torch.Tensor:
        """(N, C, S, S) uint8 images of the pool, read once and kept for later cycles."""
        key = pool.identity()["ids_sha256"]
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        loader = DataLoader(
            _ResizedImages(pool, self.image_size, self.in_chans),
            batch_size=256,
            num_workers=self.num_workers,
        )
        chunks = [
            b
            for b in tqdm(loader, desc=f"{self.name}: reading images", disable=not self.progress, leave=False)
        ]
        images = torch.cat(chunks)
        self._cache = (key, images)
        return images

    # ------------------------------------------------------------------------------------- training

    def _select(self, pool: ImagePool, budget: int, ctx: SelectionContext) -> Selection:
        labeled = sorted({int(i) for i in ctx.labeled})
        if not labeled:
            raise SelectionError(
                f"selector {self.name} needs labeled images to tell them from the unlabeled ones: run it in "
                "cycles (geal-run cycles=demo draws a random initial set) or pass labeled=FILE"
            )
        blocked = set(labeled) | {int(i) for i in ctx.excluded}
        unlabeled = torch.tensor([i for i in range(len(pool)) if i not in blocked], dtype=torch.long)
        labeled_t = torch.tensor(labeled, dtype=torch.long)
        images = self.images(pool)
        device = ctx.device
        gen = ctx.generator()
        t0 = time.perf_counter()
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # module init and VAE noise: seeded, nothing leaks out
            torch.manual_seed(int(ctx.seed))
            vae = VAE(self.in_chans, self.image_size, self.latent_dim, self.channels).to(device)
            disc = LatentDiscriminator(self.latent_dim, self.disc_hidden).to(device)
            stats = self._train(vae, disc, images, labeled_t, unlabeled, gen, device)
            vae.eval()
            disc.eval()
            p_unlabeled = self._p_labeled(vae, disc, images, unlabeled, device)
            p_labeled_set = self._p_labeled(vae, disc, images, labeled_t, device)
        train_s = time.perf_counter() - t0
        # most confidently unlabeled first = lowest P(labeled); ties → smaller global id (ids ascending)
        order = torch.sort(p_unlabeled, stable=True).indices[:budget]
        picks = unlabeled[order]
        return Selection(
            [int(i) for i in picks],
            [float(1.0 - p) for p in p_unlabeled[order]],  # the discriminator's P(unlabeled)
            {
                **stats,
                "train_s": train_s,
                "mean_p_labeled_on_labeled": float(p_labeled_set.mean()),
                "mean_p_labeled_on_unlabeled": float(p_unlabeled.mean()),
                "n_labeled": len(labeled),
                "n_unlabeled": len(unlabeled),
            },
        )

    def _batch(
        self, images: torch.Tensor, ids: torch.Tensor, gen: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        pick = ids[torch.randint(len(ids), (self.batch_size,), generator=gen)]
        return images[pick].to(device, torch.float32) / 255.0

    def _train(
        self,
        vae: VAE,
        disc: LatentDiscriminator,
        images: torch.Tensor,
        labeled: torch.Tensor,
        unlabeled: torch.Tensor,
        gen: torch.Generator,
        device: torch.device,
    ) -> dict[str, Any]:
        opt_vae = torch.optim.Adam(vae.parameters(), lr=self.lr_vae)
        opt_disc = torch.optim.Adam(disc.parameters(), lr=self.lr_disc)
        vae.train()
        disc.train()
        last: dict[str, float] = {}
        for it in tqdm(
            range(self.iterations),
            desc=f"{self.name}: VAE + discriminator",
            disable=not self.progress,
            leave=False,
        ):
            for _ in range(self.vae_steps):
                xl, xu = (
                    self._batch(images, labeled, gen, device),
                    self._batch(images, unlabeled, gen, device),
                )
                recon_l, mu_l, logvar_l = vae(xl)
                recon_u, mu_u, logvar_u = vae(xu)
                vae_loss = elbo_loss(xl, recon_l, mu_l, logvar_l, self.beta) + elbo_loss(
                    xu, recon_u, mu_u, logvar_u, self.beta
                )
                ones = torch.ones(len(xl), device=device)
                # the VAE tries to make the discriminator call every image "labeled"
                adversarial = F.binary_cross_entropy_with_logits(
                    disc(mu_l), ones
                ) + F.binary_cross_entropy_with_logits(disc(mu_u), ones)
                loss = vae_loss + self.adversary_weight * adversarial
                opt_vae.zero_grad(set_to_none=True)
                loss.backward()
                opt_vae.step()
            for _ in range(self.disc_steps):
                xl, xu = (
                    self._batch(images, labeled, gen, device),
                    self._batch(images, unlabeled, gen, device),
                )
                with torch.no_grad():
                    mu_l, _ = vae.encode(xl)
                    mu_u, _ = vae.encode(xu)
                logit_l, logit_u = disc(mu_l), disc(mu_u)
                disc_loss = F.binary_cross_entropy_with_logits(
                    logit_l, torch.ones_like(logit_l)
                ) + F.binary_cross_entropy_with_logits(logit_u, torch.zeros_like(logit_u))
                opt_disc.zero_grad(set_to_none=True)
                disc_loss.backward()
                opt_disc.step()
            if (it + 1) % 50 and it + 1 < self.iterations:
                continue  # reading the losses syncs the device: only now and then
            last = {
                "vae_loss": float(vae_loss.detach()),
                "adversarial_loss": float(adversarial.detach()),
                "disc_loss": float(disc_loss.detach()),
            }
            if not all(math.isfinite(v) for v in last.values()):
                raise FloatingPointError(
                    f"{self.name}: training diverged ({last}): lower selector.lr_vae / selector.lr_disc"
                )
        return {"iterations": self.iterations, **{f"final_{k}": v for k, v in last.items()}}

    @torch.no_grad()
    def _p_labeled(
        self,
        vae: VAE,
        disc: LatentDiscriminator,
        images: torch.Tensor,
        ids: torch.Tensor,
        device: torch.device,
    ) -> torch.Tensor:
        """(len(ids),) the discriminator's probability that each image is labeled (on μ, eval mode)."""
        out = []
        for chunk in ids.split(self.eval_batch_size):
            x = images[chunk].to(device, torch.float32) / 255.0
            out.append(torch.sigmoid(disc(vae.encode(x)[0])).double().cpu())
        return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)
