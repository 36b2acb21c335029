"""What trains and how fast: frozen parts, unfrozen encoder blocks, the optimizer and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from captioner.pipeline import Captioner
from captioner.training.config import TrainConfig

_NO_PARAMS_OR_NORM = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Identity, nn.MaxPool2d)


def encoder_units(encoder: nn.Module) -> list[nn.Module]:
    """The encoder trunk as a list of blocks, input side first (a stem, each residual block, a head).

    Nested ``nn.Sequential`` containers are flattened; normalisation, activation and pooling layers are grouped with
    the layer before them, so "the last N blocks" means N blocks with weights.
    """
    flat: list[nn.Module] = []

    def walk(module: nn.Module) -> None:
        for child in module.children():
            walk(child) if isinstance(child, nn.Sequential) else flat.append(child)

    walk(encoder.trunk)
    units: list[list[nn.Module]] = []
    for module in flat:
        if units and isinstance(module, _NO_PARAMS_OR_NORM):
            units[-1].append(module)
        else:
            units.append([module])
    return [nn.ModuleList(group) for group in units]


def set_trainable(model: Captioner, cfg: TrainConfig) -> list[nn.Module]:
    """Freeze what ``cfg`` asks, unfreeze the last ``cfg.unfreeze_encoder`` encoder blocks.

    Returns:
        The unfrozen encoder blocks (empty when the encoder stays frozen).
    """
    decoder = model.decoder
    groups = {"embedding": [decoder.embed], "head": [decoder.head],
              "decoder": [m for m in (decoder.rnn, getattr(decoder, "image_proj", None),
                                      getattr(decoder, "init_state", None)) if m is not None]}
    for name in cfg.freeze:
        for module in groups[name]:
            module.requires_grad_(False)
    if not cfg.unfreeze_encoder:
        return []
    units = encoder_units(model.encoder)
    if cfg.unfreeze_encoder > len(units):
        raise ValueError(f"--unfreeze-encoder {cfg.unfreeze_encoder}: {model.config.encoder} has {len(units)} blocks")
    model.encoder.requires_grad_(False)
    trainable = units[-cfg.unfreeze_encoder :]
    for unit in trainable:
        unit.requires_grad_(True)
    return trainable


def encoder_train_mode(model: Captioner, trainable: list[nn.Module], train_bn: bool) -> None:
    """Put the unfrozen encoder blocks in training mode; BatchNorm stays in eval mode unless ``train_bn``."""
    model.encoder.eval()
    for unit in trainable:
        unit.train()
        if not train_bn:
            for module in unit.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()


def build_optimizer(model: Captioner, trainable_encoder: list[nn.Module], cfg: TrainConfig) -> torch.optim.Adam:
    """Adam over the trainable decoder parameters (``lr``) and unfrozen encoder blocks (``encoder_lr``); PyTorch's
    fused implementation on the CPU and CUDA (one kernel for all parameters: 4 ms instead of 20 ms per step for the
    default decoder's 6 M parameters on 2 CPU cores)."""
    groups = [{"params": [p for p in model.decoder.parameters() if p.requires_grad], "lr": cfg.lr}]
    encoder_params = [p for unit in trainable_encoder for p in unit.parameters() if p.requires_grad]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": cfg.encoder_lr if cfg.encoder_lr is not None else cfg.lr / 10})
    if not groups[0]["params"] and not encoder_params:
        raise ValueError("nothing to train: every part is frozen")
    groups = [g for g in groups if g["params"]]
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.Adam(groups, weight_decay=cfg.weight_decay, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """The learning-rate schedule: stepped per batch (constant/cosine, with warm-up) or per epoch (plateau)."""
    if cfg.schedule == "plateau":
        mode = "min" if cfg.select_by == "loss" else "max"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.5, patience=1)
    warmup, total = max(cfg.warmup_steps, 0), max(total_steps, 1)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(total - warmup, 1))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
