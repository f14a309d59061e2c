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
        modules.append(nn.Dropout(dropout))
    return modules


class LabelInput(nn.Module):
    """Concatenates a learned label embedding to a flat input: the conditional input of G and MLP D."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(NUM_CLASSES, embedding_dim)

    def forward(self, flat: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise ValueError("a conditional network needs labels")
        return torch.cat([flat, self.embedding(labels).to(flat.dtype)], dim=1)
