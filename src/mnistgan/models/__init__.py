"""Generator and discriminator builders, parameterised by ``ModelConfig``.

Every generator maps ``(z, labels)`` to images in [-1, 1] of shape (N, C, 28, 28); every
discriminator maps ``(images, labels)`` to one raw score (a logit) per image, shape (N,).
``labels`` is used only when the config is conditional.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..config import ModelConfig
from .dcgan import DCGANDiscriminator, DCGANGenerator
from .mlp import MLPDiscriminator, MLPGenerator
from .resnet import ResNetDiscriminator, ResNetGenerator


def build_generator(config: ModelConfig) -> nn.Module:
    network = {"mlp": MLPGenerator, "dcgan": DCGANGenerator, "resnet": ResNetGenerator}[config.architecture](config)
    initialise(network, config.init)
    return network


def build_discriminator(config: ModelConfig) -> nn.Module:
    """D for ``config``; with ``pack`` m > 1, D's network sees m images joined along channels."""
    inner = dataclasses.replace(config, channels=config.channels * config.pack)
    network = {"mlp": MLPDiscriminator, "dcgan": DCGANDiscriminator, "resnet": ResNetDiscriminator}[inner.architecture](inner)
    initialise(network, config.init)
    if config.spectral_norm:
        apply_spectral_norm(network)
    return PackedDiscriminator(network, config.pack) if config.pack > 1 else network


class PackedDiscriminator(nn.Module):
    """PacGAN's discriminator (Lin et al. 2018): one score for each ``pack`` consecutive images.

    (N, C, H, W) -> (N / m, m * C, H, W): images i*m .. i*m + m - 1 become the channels of pack i.
    A batch of real images and one of fakes, each a multiple of m, thus never share a pack.
    Packs are unconditional (the config rejects labels with m > 1).
    """

    def __init__(self, network: nn.Module, pack: int):
        super().__init__()
        self.network, self.pack = network, pack

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        count, channels, height, width = images.shape
        if count % self.pack:
            raise ValueError(f"a batch of {count} images does not split into packs of {self.pack}")
        packed = images.reshape(count // self.pack, self.pack * channels, height, width)
        if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
            packed = packed.contiguous(memory_format=torch.channels_last)
        return self.network(packed, None)


def initialise(network: nn.Module, scheme: str) -> None:
    """Weight initialisation: PyTorch's defaults, Keras' Glorot-uniform, or the DCGAN paper's N(0, 0.02)."""
    if scheme == "pytorch":
        return
    for module in network.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            if scheme == "glorot-uniform":
                nn.init.xavier_uniform_(module.weight)
            else:
                nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and scheme == "dcgan-normal":
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)


def apply_spectral_norm(network: nn.Module) -> None:
    """Spectral normalisation (one power iteration per forward pass) on every weight layer."""
    for module in list(network.modules()):
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
            nn.utils.parametrizations.spectral_norm(module)


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())
