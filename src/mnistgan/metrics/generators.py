"""Scoring a generator, the one way training's evaluations and ``mnistgan evaluate`` both use.

``score_generator`` draws its own seeded noise (and, for a conditional model, uniformly drawn
classes), generates, and scores the images with the evaluator of the run's dataset: FD and the
rest for digit-like datasets (with ``conditional_accuracy`` from the same pass when the model is
conditional), the modes metric for Stacked MNIST. ``real_floor`` gives the same numbers for real
images; ``metrics_record`` is what ``metrics.json`` holds.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config, ModelConfig
from ..sampling import draw_inputs, generate
from .evaluator import evaluator_splits
from .modes import STACKED_SAMPLES, evaluate_stacked, stacked_floor
from .scoring import evaluate_images, evaluate_real

STACKED = "stacked-mnist"


def default_samples(dataset: str) -> int:
    """The conventional sample count: 10,000 (26,000 for Stacked MNIST's modes, as PacGAN counts)."""
    return STACKED_SAMPLES if dataset == STACKED else 10_000


def evaluation_seed(config: Config) -> int:
    """The seed of a run's evaluations: a stream of its own, never training's (``train.seed``)."""
    return config.train.seed + 1


def score_generator(generator: nn.Module, model: ModelConfig, dataset: str, n: int, seed: int,
                    device: torch.device, reference: str = "test", train_fd: bool = False) -> dict:
    """Score ``n`` samples of ``generator`` (in eval mode, on ``device``) drawn from a CPU generator
    seeded with ``seed``: the same weights, count and seed always score the same images. ``train_fd``:
    see ``evaluate_images`` (Stacked MNIST's modes need no real images to choose by)."""
    z, labels = draw_inputs(model, n, device, torch.Generator().manual_seed(seed))
    images = generate(generator, z, labels)
    if dataset == STACKED:
        return evaluate_stacked(images, device=device)
    return evaluate_images(images, reference=reference, device=device, dataset=dataset,
                           labels=None if labels is None else labels.cpu(), train_fd=train_fd)


def real_floor(dataset: str, n: int, device: torch.device, strict: bool = False) -> dict | None:
    """The same numbers for ``n`` real images, the best a generator can hope for; None where the
    dataset has fewer than ``n`` training images (own images: compare only at equal counts), or with
    ``strict`` an error that says how many it has."""
    if dataset == STACKED:
        return stacked_floor(n, device=device)
    if not strict and n > len(evaluator_splits(dataset)[0]):
        return None
    return evaluate_real(n, device=device, dataset=dataset)


def metrics_record(result: dict, config: Config, seed: int, weights: str, reference: str = "test", **extra) -> dict:
    """A score as ``metrics.json`` keeps it: the numbers, and what they were measured from."""
    return {**result, "seed": seed, "reference": reference, "weights": weights, "preset": config.preset,
            "dataset": config.data.dataset, **extra}
