"""Fully connected generator and discriminator (the mlp-gan, vanilla-gan and mlp-gan-dropout presets)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import LabelInput, generator_slope, hidden_block

SIDE = 28  # images are SIDE x SIDE with config.channels channels


class MLPGenerator(nn.Module):
    """z (N, latent) [+ label embedding] -> hidden widths with LeakyReLU -> 784 C -> tanh -> (N, C, 28, 28)."""

    def __init__(self, config):
        super().__init__()
        self.channels = config.channels
        self.label_input = LabelInput(config.num_classes, config.embedding_dim) if config.conditional else None
        width = config.latent_dim + (config.embedding_dim if config.conditional else 0)
        layers: list[nn.Module] = []
        for hidden in config.generator_widths:
            linear = nn.Linear(width, hidden, bias=config.generator_bias)
            layers += hidden_block(linear, hidden, config.generator_batchnorm, 1, config, config.generator_dropout,
                                   generator_slope(config))
            width = hidden
        layers += [nn.Linear(width, config.channels * SIDE * SIDE, bias=config.output_bias), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.label_input is not None:
            z = self.label_input(z, labels)
        return self.net(z).view(-1, self.channels, SIDE, SIDE)


class MLPDiscriminator(nn.Module):
    """(N, C, 28, 28) -> 784 C [+ label embedding] -> hidden widths with LeakyReLU -> 1 logit per image."""

    def __init__(self, config):
        super().__init__()
        self.label_input = LabelInput(config.num_classes, config.embedding_dim) if config.conditional else None
        width = config.channels * SIDE * SIDE + (config.embedding_dim if config.conditional else 0)
        layers: list[nn.Module] = []
        for index, hidden in enumerate(config.discriminator_widths):
            batchnorm = config.discriminator_batchnorm and index > 0  # never normalise the raw pixels
            layers += hidden_block(nn.Linear(width, hidden), hidden, batchnorm, 1, config, config.discriminator_dropout)
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        flat = images.reshape(images.shape[0], -1)
        if self.label_input is not None:
            flat = self.label_input(flat, labels)
        return self.net(flat).squeeze(1)
