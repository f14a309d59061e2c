"""Residual networks without normalisation, after R3GAN's design rules (Huang et al. 2024).

The rules, each for a reason:
  * no BatchNorm or other normalisation: a well-posed loss (relativistic + R1 + R2) does not need
    it, and D's output for one image then never depends on the rest of the batch;
  * residual blocks whose last convolution starts at zero (fix-up initialisation): every block is
    the identity at the start, so depth does not blow up the signal and no normaliser is needed;
  * bilinear resampling instead of transposed or strided convolutions: no checkerboard artefacts;
  * leaky ReLU (the config's slope).
Widths are per resolution, coarse to fine for G (``generator_widths``, e.g. [256, 128, 64] for
7x7, 14x14, 28x28) and fine to coarse for D (``discriminator_widths``); ``blocks_per_resolution``
residual blocks each. Conditioning: a label embedding concatenated to z in G, a projection in D.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LabelInput, projected_logits

SIDE = 28


def start_side(stages: int) -> int:
    """The coarsest resolution of ``stages`` resolutions that double up to 28: 28, 14 or 7."""
    return SIDE >> (stages - 1)


class ResidualBlock(nn.Module):
    """x + conv(act(conv(act(x)))), the last conv zero at the start: the block begins as the identity."""

    def __init__(self, channels: int, slope: float):
        super().__init__()
        self.first = nn.Conv2d(channels, channels, 3, padding=1)
        self.last = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.first(F.leaky_relu(x, self.slope))
        return x + self.last(F.leaky_relu(hidden, self.slope))


def _stage(channels: int, blocks: int, slope: float) -> nn.Sequential:
    return nn.Sequential(*(ResidualBlock(channels, slope) for _ in range(blocks)))


class ResNetGenerator(nn.Module):
    """z [+ label embedding] -> linear -> (W0, S, S) -> residual stages, bilinear x2 between them -> (N, C, 28, 28),
    linear output (clamped to [-1, 1] in eval mode).

    With widths [256, 128, 64]: (N, 100) -> (N, 256, 7, 7) -> (N, 128, 14, 14) -> (N, 64, 28, 28) -> (N, C, 28, 28).
    """

    def __init__(self, config):
        super().__init__()
        widths, slope = config.generator_widths, config.leaky_slope
        self.label_input = LabelInput(config.num_classes, config.embedding_dim) if config.conditional else None
        in_features = config.latent_dim + (config.embedding_dim if config.conditional else 0)
        self.side, self.start_channels = start_side(len(widths)), widths[0]
        self.project = nn.Linear(in_features, widths[0] * self.side**2)
        self.stages = nn.ModuleList(_stage(width, config.blocks_per_resolution, slope) for width in widths)
        self.transitions = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(widths, widths[1:]))  # channels between stages
        self.output = nn.Conv2d(widths[-1], config.channels, 1)
        self.slope = slope

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.label_input is not None:
            z = self.label_input(z, labels)
        x = self.project(z).view(-1, self.start_channels, self.side, self.side)
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index < len(self.transitions):
                x = self.transitions[index](F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        images = self.output(F.leaky_relu(x, self.slope))
        # A linear output, as R3GAN's: a tanh here saturated at black within ~50 steps on MNIST (most
        # pixels are background) and then passed G no gradient. D sees the raw values while training;
        # sampling (eval mode) clamps them to the image range.
        return images if self.training else images.clamp(-1.0, 1.0)


class ResNetDiscriminator(nn.Module):
    """(N, C, 28, 28) -> 1x1 conv -> residual stages, bilinear /2 between them -> flatten -> 1 logit per image.

    Conditional: a projection discriminator, as the DCGAN one (the logit gains <embedding(label), features>).
    """

    def __init__(self, config):
        super().__init__()
        widths, slope = config.discriminator_widths, config.leaky_slope
        self.input = nn.Conv2d(config.channels, widths[0], 1)
        self.stages = nn.ModuleList(_stage(width, config.blocks_per_resolution, slope) for width in widths)
        self.transitions = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(widths, widths[1:]))
        features = widths[-1] * start_side(len(widths)) ** 2
        self.head = nn.Linear(features, 1)
        self.label_projection = nn.Embedding(config.num_classes, features) if config.conditional else None
        self.slope = slope

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.input(images)
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index < len(self.transitions):
                x = self.transitions[index](F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False))
        features = F.leaky_relu(x, self.slope).flatten(1)
        return projected_logits(self.head(features).squeeze(1), features, self.label_projection, labels)
