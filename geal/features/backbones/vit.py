"""Any timm Vision Transformer as a GEAL backbone: dense tokens, CLS attention and CLS feature in one pass."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_model_data_config
from timm.layers import resample_abs_pos_embed
from torch import nn

from geal.features.backbones.base import Backbone, DenseOutput, Preprocessing
from geal.util.checkpoints import load_weights_file

log = logging.getLogger(__name__)

#: keys under which training checkpoints (DINO, DeiT, MAE, ...) keep the model weights, tried in this order
_WRAPPER_KEYS = ("teacher", "model", "state_dict", "student", "model_ema", "module")
#: key prefixes added by DistributedDataParallel / DINO's MultiCropWrapper, stripped repeatedly
_PREFIXES = ("module.", "backbone.", "_orig_mod.")
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


class CheckpointMismatchError(ValueError):
    """A local checkpoint does not fit the architecture it was asked to load into."""


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` / ``.pth`` / ``.pt`` file into a flat CPU state dict (no code execution)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Backbone checkpoint {path} does not exist.")
    # full training checkpoints (DINO's *_full_checkpoint.pth) also pickle their argparse.Namespace
    obj = load_weights_file(path, "backbone checkpoint", safe_globals=[argparse.Namespace])
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(
            f"Backbone checkpoint {path} holds a {type(obj).__name__}, not a state dict."
        )
    return dict(obj)


def unwrap_state_dict(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Official DINO / DDP checkpoint layout → plain timm ViT keys.

    Descends into a ``teacher`` / ``model`` / ``state_dict`` / ``student`` wrapper, strips ``module.`` and
    ``backbone.`` prefixes and drops the projection head (``head.*``: DINO's head, or a classifier, which a
    feature backbone never uses) and non-tensor entries.
    """
    while not any(isinstance(v, torch.Tensor) for v in sd.values()):
        inner = next((sd[k] for k in _WRAPPER_KEYS if isinstance(sd.get(k), Mapping)), None)
        if inner is None:
            break
        sd = inner
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            continue
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        if key.startswith("head.") or key == "head":
            continue
        out[key] = value
    return out


def _abbrev(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", … ({len(keys) - n} more)" if len(keys) > n else "")


def _rgb(values: Iterable[float]) -> tuple[float, float, float]:
    """A per-channel mean/std of timm's data config as :class:`Preprocessing`'s (R, G, B) triple."""
    r, g, b = (float(v) for v in values)
    return r, g, b


def load_checkpoint_into(model: nn.Module, path: str | os.PathLike[str], model_name: str) -> None:
    """Load a local checkpoint into ``model`` strictly; :class:`CheckpointMismatchError` if it does not fit.

    A position table made for another grid (same width) is resampled to the model's grid (bicubic); any other
    missing, unexpected or differently shaped key is an error naming the file, the model and a few keys.
    """
    sd = unwrap_state_dict(load_state_dict_file(path))
    own = model.state_dict()
    pos = sd.get("pos_embed")
    own_pos = own.get("pos_embed")
    if (
        pos is not None
        and own_pos is not None
        and pos.ndim == 3
        and pos.shape != own_pos.shape
        and pos.shape[-1] == own_pos.shape[-1]
    ):
        n_prefix = (
            0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
        )
        old = round((pos.shape[1] - n_prefix) ** 0.5)
        if old * old == pos.shape[1] - n_prefix:
            log.warning(
                "resampling pos_embed of %s from %dx%d to %s (bicubic)",
                path,
                old,
                old,
                tuple(model.patch_embed.grid_size),
            )
            sd["pos_embed"] = resample_abs_pos_embed(
                pos.float(),
                new_size=list(model.patch_embed.grid_size),
                old_size=[old, old],
                num_prefix_tokens=n_prefix,
            ).to(own_pos.dtype)
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong_shape = sorted(
        f"{k} {tuple(sd[k].shape)}≠{tuple(own[k].shape)}"
        for k in set(own) & set(sd)
        if sd[k].shape != own[k].shape
    )
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_abbrev(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_abbrev(unexpected)}")
        if wrong_shape:
            parts.append(
                f"{len(wrong_shape)} key(s) of another shape (checkpoint≠model): {_abbrev(wrong_shape)}"
            )
        raise CheckpointMismatchError(
            f"Checkpoint {path} does not fit timm model '{model_name}': " + "; ".join(parts) + ". "
            "Pass the checkpoint made for this architecture, or set backbone.model_name (and model_kwargs) "
            "to the architecture the checkpoint was trained with (e.g. vit_small_patch16_224 for "
            "dino_deitsmall16_pretrain.pth)."
        )
    model.load_state_dict(sd, strict=True)


class TimmViT(Backbone):
    """A frozen timm ViT (CLS token required; register tokens allowed).

    ``extract`` runs one forward pass and returns
      tokens:         (B, N, D) patch tokens of block ``feature_layer`` through the model's final norm,
      attention:      (B, H, N) CLS→patch softmax attention of block ``attention_layer`` per head, prefix
                      tokens (CLS, registers) removed and **not** rescaled: each row holds the mass its head
                      gives the patches (≤ 1). The importance map averages these raw rows over heads and
                      then renormalises over patches (:func:`geal.method.knowledge.reduce_heads`), as the
                      released GEAL code does; rescaling each head first would weigh a head that mostly
                      attends to CLS as much as one that attends to the patches,
      global_feature: (B, D) the model's pre-logits feature of the final block (the final-normed CLS token
                      for ``global_pool='token'`` models such as DINO).
    """

    def __init__(
        self,
        name: str,
        model_name: str,
        pretrained: bool = False,
        checkpoint: str | None = None,
        resolution: int = 224,
        model_kwargs: dict[str, Any] | None = None,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        self.name = name
        self.model_name = model_name
        self.checkpoint = str(Path(checkpoint).expanduser()) if checkpoint else None
        kwargs: dict[str, Any] = {**dict(model_kwargs or {}), "img_size": int(resolution), "num_classes": 0}
        self.model = self._create(model_name, pretrained and self.checkpoint is None, kwargs, init_seed)
        if self.checkpoint is not None:
            load_checkpoint_into(self.model, self.checkpoint, model_name)
            log.info("loaded %s weights from %s", model_name, self.checkpoint)
        for attr in ("blocks", "patch_embed", "forward_intermediates", "num_prefix_tokens"):
            if not hasattr(self.model, attr):
                raise TypeError(
                    f"timm model '{model_name}' is not a ViT with blocks/patch_embed ({attr} missing)."
                )
        if getattr(self.model, "cls_token", None) is None:
            raise TypeError(
                f"timm model '{model_name}' has no CLS token: the CLS attention map is undefined."
            )
        attn0 = self.model.blocks[0].attn
        if not (hasattr(attn0, "attn_drop") and hasattr(attn0, "num_heads")):
            raise TypeError(f"timm model '{model_name}': block attention lacks attn_drop/num_heads.")

        cfg = resolve_model_data_config(self.model)
        interp = str(cfg.get("interpolation", "bicubic"))
        self.preprocessing = Preprocessing(
            resolution=int(resolution),
            mean=_rgb(cfg["mean"]),
            std=_rgb(cfg["std"]),
            interpolation=interp if interp in _INTERPOLATIONS else "bicubic",
        )
        self.embed_dim = int(self.model.embed_dim)
        self.num_heads = int(attn0.num_heads)
        self.depth = len(self.model.blocks)
        self.eval()
        self.requires_grad_(False)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _create(model_name: str, pretrained: bool, kwargs: dict[str, Any], seed: int) -> nn.Module:
        """Build the timm model; random init is seeded (without touching the global RNG)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if not pretrained:
                return timm.create_model(model_name, pretrained=False, **kwargs)
            try:
                return timm.create_model(model_name, pretrained=True, **kwargs)
            except Exception as err:  # hub/network/offline errors come in many types
                raise RuntimeError(
                    f"Could not fetch pretrained weights for timm model '{model_name}' from the model hub "
                    f"({type(err).__name__}: {err}). Without network access pass a local file instead: "
                    f"backbone.checkpoint=PATH (for DINO ViT-S/16 the official "
                    f"dino_deitsmall16_pretrain.pth; "
                    f".pth/.pt/.safetensors are accepted), or backbone.pretrained=false for random weights."
                ) from err

    def train(self, mode: bool = True) -> TimmViT:
        """A frozen backbone: always stays in eval mode."""
        return super().train(False)

    # ------------------------------------------------------------------ contract
    def grid_size(self) -> tuple[int, int]:
        rows, cols = self.model.patch_embed.grid_size
        return int(rows), int(cols)

    def _block_index(self, layer: int, what: str) -> int:
        idx = layer + self.depth if layer < 0 else layer
        if not 0 <= idx < self.depth:
            raise IndexError(f"{what}={layer} is out of range for {self.name} with {self.depth} blocks")
        return idx

    def extract(
        self, images: torch.Tensor, feature_layer: int = -2, attention_layer: int = -1
    ) -> DenseOutput:
        """images: (B, 3, R, R) normalised → tokens (B, N, D), attention (B, H, N), global_feature (B, D)."""
        f_idx = self._block_index(feature_layer, "feature_layer")
        a_idx = self._block_index(attention_layer, "attention_layer")
        attn_mod = self.model.blocks[a_idx].attn
        captured: list[torch.Tensor] = []

        def _hook(_mod: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            captured.append(out[:, :, 0, :])  # (B, H, 1+P+N): the CLS query row of the softmax

        fused_before = getattr(attn_mod, "fused_attn", False)
        handle = attn_mod.attn_drop.register_forward_hook(_hook)
        attn_mod.fused_attn = False  # materialise the softmax in this one block only
        try:
            with torch.inference_mode():
                final, inters = self.model.forward_intermediates(
                    images, indices=[f_idx], norm=True, output_fmt="NLC", return_prefix_tokens=True
                )
                tokens = inters[0][0]
                global_feature = self.model.forward_head(final, pre_logits=True)
        finally:
            handle.remove()
            attn_mod.fused_attn = fused_before
        if len(captured) != 1:
            raise RuntimeError(
                f"{self.name}: expected one attention map from block {a_idx}, got {len(captured)}"
            )
        n_prefix = int(self.model.num_prefix_tokens)
        attention = captured[0][:, :, n_prefix:].float()  # raw rows: heads are averaged before renormalising
        return DenseOutput(tokens=tokens.float(), attention=attention, global_feature=global_feature.float())
