"""Small pieces shared by both architectures."""

from __future__ import annotations

import torch
from torch import nn


def hidden_block(layer: nn.Module, features: int, batchnorm: bool, dims: int, config, dropout: float,
                 slope: float | None = None) -> list[nn.Module]:
    """layer -> [BatchNorm] -> LeakyReLU (``slope``, default the config's) -> [Dropout], the unit both
    architectures stack."""
    modules = [layer]
    if batchnorm:
        norm = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        modules.append(norm(features, momentum=config.batchnorm_momentum, eps=config.batchnorm_eps))
    modules.append(nn.LeakyReLU(config.leaky_slope if slope is None else slope))
    if dropout > 0:
        modules.append(Dropout(dropout))
    return modules


def generator_slope(config) -> float:
    """The negative slope of G's hidden activations: the config's LeakyReLU, or 0 for DCGAN's ReLU."""
    return 0.0 if config.generator_activation == "relu" else config.leaky_slope


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper mask on the CPU; on CUDA the native fused kernel is faster.

    The CPU's random generator costs per draw, so one uniform 64-bit draw serves several units,
    each reading its own lane: 8-bit lanes (eight units a draw) when p is a multiple of 1/256, such
    as 0.5, and 16-bit lanes (four) otherwise. A unit keeps with probability 1 - t / 2^bits, t =
    round(p * 2^bits) (0.3 -> 0.699997; 0.5 exactly), and is scaled by that probability's inverse,
    so the expectation is exact. p is thus taken to the nearest 1/65536 (the config allows p up to
    0.95): below 2^-17 nothing is dropped. The mask follows the input's memory layout (channels-last
    included). It costs about half of the native Bernoulli mask's time (docs/speed.md).
    Compiled networks keep the native dropout: TorchInductor generates its own mask inside the
    fused kernel around it.
    """

    def __init__(self, p: float = 0.5):
        super().__init__(p)
        self.lane_dtype = torch.uint8 if float(p * 256).is_integer() else torch.int16
        levels = 1 << (8 * self.lane_dtype.itemsize)
        self.threshold = round(p * levels)
        self.scale = levels / (levels - self.threshold) if self.threshold < levels else 0.0
        # Lanes are uniform over all their values, so a signed lane keeps with the same probability
        # as an unsigned one when the threshold is shifted by the offset of the signed range.
        self.signed_threshold = self.threshold + (0 if self.lane_dtype == torch.uint8 else -levels // 2)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or input.device.type != "cpu" or torch.compiler.is_compiling():
            return super().forward(input)
        count = input.numel()
        per_draw = 8 // self.lane_dtype.itemsize
        # The full signed range: random_() alone would draw 63 bits and leave the top lane short of one.
        draws = torch.empty((count + per_draw - 1) // per_draw, dtype=torch.int64).random_(-(1 << 63), (1 << 63) - 1)
        lanes = draws.view(self.lane_dtype)
        if lanes.numel() != count:
            lanes = lanes[:count]
        dense = input.is_contiguous() or input.is_contiguous(memory_format=torch.channels_last)
        lanes = lanes.as_strided(input.shape, input.stride()) if dense else lanes.view(input.shape)
        keep = lanes >= self.signed_threshold
        # Through uint8: the same 0/1 values, but converting bool to a float type takes a slow path.
        return input * keep.view(torch.uint8).to(input.dtype).mul_(self.scale)


class LabelInput(nn.Module):
    """Concatenates a learned label embedding to a flat input: the conditional input of G and MLP D.

    ``labels`` are class indices (N,), or embeddings already looked up (N, embedding_dim): points
    between two classes' embeddings, for morphing one digit into another.
    """

    def __init__(self, num_classes: int, embedding_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num_classes, embedding_dim)

    def forward(self, flat: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise ValueError("a conditional network needs labels")
        embedded = labels if labels.is_floating_point() else self.embedding(labels)
        return torch.cat([flat, embedded.to(flat.dtype)], dim=1)


def projected_logits(logits: torch.Tensor, features: torch.Tensor, projection: nn.Embedding | None,
                     labels: torch.Tensor | None) -> torch.Tensor:
    """A projection discriminator's logits (Miyato & Koyama 2018): plus <embedding(label), features> when conditional."""
    if projection is None:
        return logits
    if labels is None:
        raise ValueError("a conditional network needs labels")
    return logits + (projection(labels).to(features.dtype) * features).sum(dim=1)
