"""Convolutional generator and discriminator (the keras-dcgan and tf-dcgan-tutorial presets)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import LabelInput, generator_slope, hidden_block, projected_logits


def generator_sizes(strides: list[int], size: int = 28) -> list[int]:
    """The side of G's feature maps from the projection to the image, as TensorFlow's 'same' padding
    gives them: each transposed conv of stride s turns ceil(n / s) into n (4 -> 7 for a 2x2 start)."""
    sizes = [size]
    for stride in reversed(strides):
        sizes.insert(0, math.ceil(sizes[0] / stride))
    return sizes


def discriminator_size(kernel: int, convs: int, size: int = 28) -> int:
    """The side of D's last feature map after ``convs`` stride-2 convs of ``kernel`` ('same' padding)."""
    padding = (kernel - 1) // 2
    for _ in range(convs):
        size = (size + 2 * padding - kernel) // 2 + 1
    return size


def transposed_padding(kernel: int, stride: int, size_in: int, size_out: int) -> tuple[int, int] | None:
    """(padding, output_padding) of a transposed conv that turns ``size_in`` into ``size_out``; None
    where this kernel cannot (an even kernel makes only even sizes at stride 2)."""
    padding = math.ceil((kernel - stride) / 2)
    output_padding = size_out - ((size_in - 1) * stride - 2 * padding + kernel)
    return (padding, output_padding) if 0 <= output_padding < stride else None


class DCGANGenerator(nn.Module):
    """z [+ label embedding] -> Dense -> BN -> LeakyReLU -> (C0, S, S) -> transposed convs -> tanh (N, C, 28, 28).

    ``feature_order`` says how the projection's features map to (channel, row, column): "hwc"
    (Keras' Reshape, channels-last: no layout copy before the first conv) or "chw".

    With the tf-dcgan-tutorial widths [256, 128, 64] and strides [1, 2, 2]:
    (N, 100) -> (N, 12544) -> (N, 256, 7, 7) -> (N, 128, 7, 7) -> (N, 64, 14, 14) -> (N, 1, 28, 28).
    With four stride-2 layers the projection is 2x2, then 4x4, 7x7, 14x14, 28x28 (the VEEGAN setup's G).
    """

    def __init__(self, config):
        super().__init__()
        self.label_input = LabelInput(config.num_classes, config.embedding_dim) if config.conditional else None
        in_features = config.latent_dim + (config.embedding_dim if config.conditional else 0)
        widths, strides, kernel = config.generator_widths, config.generator_strides, config.kernel_size
        sizes = generator_sizes(strides)
        self.start_size = sizes[0]
        self.start_channels = widths[0]
        self.feature_order = config.feature_order
        projected = widths[0] * self.start_size**2
        # BatchNorm over the flat projection (per feature), as Keras does before the Reshape.
        slope = generator_slope(config)
        self.project = nn.Sequential(
            *hidden_block(nn.Linear(in_features, projected, bias=config.generator_bias), projected,
                          config.generator_batchnorm, 1, config, config.generator_dropout, slope)
        )
        layers: list[nn.Module] = []
        for in_channels, out_channels, stride, size_in, size_out in zip(widths, widths[1:], strides, sizes, sizes[1:]):
            padding, output_padding = transposed_padding(kernel, stride, size_in, size_out)
            conv = nn.ConvTranspose2d(in_channels, out_channels, kernel, stride, padding, output_padding, bias=config.generator_bias)
            layers += hidden_block(conv, out_channels, config.generator_batchnorm, 2, config, config.generator_dropout, slope)
        padding, output_padding = transposed_padding(kernel, strides[-1], sizes[-2], sizes[-1])
        layers += [nn.ConvTranspose2d(widths[-1], config.channels, kernel, strides[-1], padding, output_padding, bias=config.output_bias), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.label_input is not None:
            z = self.label_input(z, labels)
        hidden, size = self.project(z), self.start_size
        if self.feature_order == "hwc":  # Keras' Reshape: memory order (h, w, c), i.e. channels-last
            hidden = hidden.view(-1, size, size, self.start_channels).permute(0, 3, 1, 2)
            if not self.net[0].weight.is_contiguous(memory_format=torch.channels_last):
                hidden = hidden.contiguous()  # the convs run channels-first (channels_last off): hand them that layout
        else:
            hidden = hidden.view(-1, self.start_channels, size, size)
        return self.net(hidden)


class DCGANDiscriminator(nn.Module):
    """(N, C, 28, 28) -> stride-2 convs with LeakyReLU and Dropout -> flatten -> 1 logit per image.

    The flatten follows ``feature_order`` as the generator's projection does.

    Conditional: a projection discriminator (Miyato & Koyama 2018): the logit gains the inner
    product of a learned label embedding with the flattened features.
    """

    def __init__(self, config):
        super().__init__()
        kernel, padding = config.kernel_size, (config.kernel_size - 1) // 2
        layers: list[nn.Module] = []
        in_channels = config.channels
        for index, out_channels in enumerate(config.discriminator_widths):
            conv = nn.Conv2d(in_channels, out_channels, kernel, 2, padding)
            batchnorm = config.discriminator_batchnorm and index > 0
            layers += hidden_block(conv, out_channels, batchnorm, 2, config, config.discriminator_dropout)
            in_channels = out_channels
        self.net = nn.Sequential(*layers)
        self.feature_order = config.feature_order
        features = in_channels * discriminator_size(kernel, len(config.discriminator_widths)) ** 2
        self.head = nn.Linear(features, 1)
        self.label_projection = nn.Embedding(config.num_classes, features) if config.conditional else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        features = self.net(images)  # (N, C, S, S)
        if self.feature_order == "hwc":  # Keras' Flatten order; channels-last memory already is it: no copy
            features = features.permute(0, 2, 3, 1)
        features = features.flatten(1)
        return projected_logits(self.head(features).squeeze(1), features, self.label_projection, labels)
