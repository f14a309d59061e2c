"""Small pieces shared by both architectures."""

from __future__ import annotations

import torch
from torch import nn

NUM_CLASSES = 10


def hidden_block(layer: nn.Module, features: int, batchnorm: bool, dims: int, config, dropout: float) -> list[nn.Module]:
    """layer -> [BatchNorm] -> LeakyReLU -> [Dropout], the unit both architectures stack."""
    modules = [layer]
    if batchnorm:
        norm = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        modules.append(norm(features, momentum=config.batchnorm_momentum, eps=config.batchnorm_eps))
    modules.append(nn.LeakyReLU(config.leaky_slope))
    if dropout > 0:
        modules.append(Dropout(dropout))
    return modules


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper mask on the CPU; on CUDA the native fused kernel is faster.

    The CPU's random generator costs per draw, and one 64-bit draw serves four units here: each
    unit keeps with probability 1 - round(p * 2^15) / 2^15 (0.3 -> 0.700012) and is scaled by that
    probability's inverse, so the expectation is exact. The mask follows the input's memory layout
    (channels-last included). Forward and backward of a 256 x 64 x 14 x 14 activation on 2 cores:
    8.9 ms in fp32 and 10.3 ms in bf16, against 17.6 and 22.8 ms with one uniform draw per unit
    (the native Bernoulli draw alone takes 36 ms). Compiled networks keep the native dropout:
    TorchInductor generates its own mask inside the fused kernel around it.
    """

    LEVELS = 1 << 15  # the 15 low bits of each 16-bit lane (the top lane of a draw has only 15)

    def __init__(self, p: float = 0.5):
        super().__init__(p)
        self.threshold = round(p * self.LEVELS)
        self.scale = self.LEVELS / (self.LEVELS - self.threshold) if self.threshold < self.LEVELS else 0.0

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or input.device.type != "cpu" or torch.compiler.is_compiling():
            return super().forward(input)
        count = input.numel()
        bits = torch.empty((count + 3) // 4, dtype=torch.int64).random_().view(torch.int16)[:count]
        dense = input.is_contiguous() or input.is_contiguous(memory_format=torch.channels_last)
        bits = bits.as_strided(input.shape, input.stride()) if dense else bits.view(input.shape)
        keep = bits.bitwise_and_(self.LEVELS - 1) >= self.threshold
        # Through uint8: the same 0/1 values, but converting bool to a float type takes a slow path
        # (a 128 x 512 bf16 mask: 157 us through bool, 71 us through uint8, all steps included).
        return input * keep.view(torch.uint8).to(input.dtype).mul_(self.scale)


class LabelInput(nn.Module):
    """Concatenates a learned label embedding to a flat input: the conditional input of G and MLP D."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(NUM_CLASSES, embedding_dim)

    def forward(self, flat: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise ValueError("a conditional network needs labels")
        return torch.cat([flat, self.embedding(labels).to(flat.dtype)], dim=1)
