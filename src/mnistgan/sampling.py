"""Drawing from a generator: noise and labels, ``generate``, the fixed-noise grid's inputs, latent
walks, and the BatchNorm refresh an EMA generator needs before it is sampled.

Every sampler draws the noise first and the labels second, from one random stream: training's
(on the device), or a seeded ``torch.Generator`` of its own (on the CPU, then moved), so that sampling
for grids, evaluation and the API never touches training's stream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config, ModelConfig
from .data import IMAGE_SIZE

GRID_SIZE = 16  # fixed-noise samples in an unconditional run's 4x4 grid
CONDITIONAL_GRID_COLUMNS = 8  # a conditional run's grid: one row per class, this many columns
GRID_ROWS = 10  # at most this many classes get a row (evenly spread over more, e.g. Stacked MNIST's 1000)


def sample_latent(model: ModelConfig, n: int, device: torch.device | str = "cpu",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` noise vectors z of the config's distribution, shape (n, latent_dim)."""
    if model.latent_distribution == "uniform":
        return torch.rand(n, model.latent_dim, device=device, generator=generator).mul_(2).sub_(1)
    return torch.randn(n, model.latent_dim, device=device, generator=generator)


def draw_inputs(model: ModelConfig, n: int, device: torch.device | str = "cpu",
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` noise vectors and, for a conditional model, ``n`` uniformly drawn class labels, on ``device``.

    With ``generator`` (a CPU generator) both are drawn from it on the CPU, then moved.
    """
    source = "cpu" if generator is not None else device
    z = sample_latent(model, n, source, generator)
    labels = torch.randint(0, model.num_classes, (n,), device=source, generator=generator) if model.conditional else None
    return z.to(device), (None if labels is None else labels.to(device))


def grid_classes(model: ModelConfig) -> torch.Tensor:
    """The classes a conditional grid shows, one per row: all of them, or ``GRID_ROWS`` spread evenly."""
    if model.num_classes <= GRID_ROWS:
        return torch.arange(model.num_classes)
    return torch.linspace(0, model.num_classes - 1, GRID_ROWS).round().long()


def class_rows_inputs(model: ModelConfig, per_class: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One row per class (``grid_classes``), ``per_class`` columns, the same noise down each column."""
    classes = grid_classes(model)
    z = sample_latent(model, per_class, "cpu", generator).repeat(len(classes), 1)
    return z, classes.repeat_interleave(per_class)


def fixed_inputs(config: Config, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fixed noise (and labels) of a run's sample grids, from their own generator (the seed's)."""
    generator = torch.Generator().manual_seed(config.train.seed)
    if config.model.conditional:
        z, labels = class_rows_inputs(config.model, CONDITIONAL_GRID_COLUMNS, generator)
        return z.to(device), labels.to(device)
    return sample_latent(config.model, GRID_SIZE, "cpu", generator).to(device), None


def grid_columns(config: Config) -> int:
    return CONDITIONAL_GRID_COLUMNS if config.model.conditional else 4


@torch.no_grad()
def generate(network: nn.Module, z: torch.Tensor, labels: torch.Tensor | None, batch_size: int = 1000) -> torch.Tensor:
    """Images from a generator in eval mode (BatchNorm running statistics, no dropout), float32 on CPU."""
    was_training = network.training
    network.eval()
    chunks = []
    for start in range(0, z.shape[0], batch_size):
        part_labels = None if labels is None else labels[start : start + batch_size]
        chunks.append(network(z[start : start + batch_size], part_labels).float().cpu())
    network.train(was_training)
    return torch.cat(chunks) if chunks else torch.zeros(0, 1, IMAGE_SIZE, IMAGE_SIZE)


@torch.no_grad()
def refresh_batchnorm_statistics(network: nn.Module, config: Config, device: torch.device,
                                 batches: int = 16, batch_size: int = 256) -> None:
    """Recompute a generator's BatchNorm running statistics from its own outputs ("standing statistics").

    The EMA generator's weights are an average of G's, its BatchNorm statistics are not: they must be
    measured again before it is sampled. Uses its own seeded RNG and keeps dropout off, so the
    training RNG stream is untouched.
    """
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = network.training
    network.eval()
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average over the batches below
        module.train()
    generator = torch.Generator().manual_seed(config.train.seed + 2)
    for _ in range(batches):
        network(*draw_inputs(config.model, batch_size, device, generator))
    for module, momentum in zip(norms, momenta):
        module.momentum = momentum
    network.train(was_training)


# ----------------------------------------------------------------------------------------------
# Latent walks: a path of inputs from one image to another


PARALLEL_SINE = 1e-3  # below this sine of the angle between two vectors, slerp is lerp to float32 precision


def slerp(start: torch.Tensor, end: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985) along the last dimension: the great-circle arc from
    ``start`` (t = 0) to ``end`` (t = 1), so unit vectors stay unit vectors all the way.

    Gaussian noise lives on a thin shell of radius about sqrt(latent_dim): the straight line between
    two draws cuts through its inside, where the generator never saw an input; the arc stays near
    the shell (White 2016). Nearly parallel or opposite vectors leave the arc undefined: lerp then.
    """
    start_unit, end_unit = F.normalize(start, dim=-1), F.normalize(end, dim=-1)
    # Kahan's form of the angle: accurate near 0 and pi too, where acos of the dot product is not.
    angle = 2 * torch.atan2((start_unit - end_unit).norm(dim=-1, keepdim=True),
                            (start_unit + end_unit).norm(dim=-1, keepdim=True))
    sine = torch.sin(angle)
    parallel = sine.abs() < PARALLEL_SINE
    sine = torch.where(parallel, torch.ones_like(sine), sine)  # no division by ~0 on the lerp side
    arc = (torch.sin((1 - t) * angle) * start + torch.sin(t * angle) * end) / sine
    return torch.where(parallel, torch.lerp(start, end, t), arc)


def walk_inputs(model: ModelConfig, rows: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """Noise for ``rows`` walks of ``steps`` points each, ends included: (rows * steps, latent_dim), row by row.

    Each row goes from one noise draw to another: by slerp for Gaussian noise, by lerp for uniform
    noise (the cube [-1, 1]^d is convex, so the straight line stays inside what training drew).
    """
    start, end = sample_latent(model, 2 * rows, "cpu", generator).split(rows)  # all the starts, then all the ends
    t = torch.linspace(0, 1, steps).unsqueeze(1)  # (steps, 1)
    blend = slerp if model.latent_distribution == "normal" else torch.lerp
    return blend(start.unsqueeze(1), end.unsqueeze(1), t).reshape(rows * steps, model.latent_dim)  # (rows, steps, latent)


def morph_inputs(network: nn.Module, model: ModelConfig, rows: int, steps: int, classes: tuple[int, int],
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A conditional generator's inputs that morph class ``classes[0]`` into ``classes[1]``, row by row:
    noise fixed along each row (rows * steps, latent_dim), and label embeddings (rows * steps, embedding_dim)
    on the straight line between the two classes' embeddings (learned points, not draws from a shell).
    """
    z = sample_latent(model, rows, "cpu", generator).repeat_interleave(steps, dim=0)
    table = network.label_input.embedding.weight.detach().float().cpu()  # (num_classes, embedding_dim)
    t = torch.linspace(0, 1, steps).unsqueeze(1)  # (steps, 1)
    return z, torch.lerp(table[classes[0]], table[classes[1]], t).repeat(rows, 1)
