"""Stacked MNIST: the mode-collapse benchmark of VEEGAN, PacGAN and R3GAN.

Each sample stacks three MNIST digits as the three channels of one 28x28 image, so the data has
10^3 = 1000 modes, one per digit triple (a, b, c), numbered 100*a + 10*b + c (channel 0 gives the
hundreds). A generator is scored on ``STACKED_SAMPLES`` samples: the shipped MNIST evaluator
classifies each channel, and two numbers summarise the triples it finds:

  * ``modes_covered``: how many of the 1000 triples occur at least once (higher is better);
  * ``reverse_kl``: KL(p_generated || uniform) in nats (lower is better; ln 1000 = 6.91 for a
    generator that draws one triple only).

Neither is 1000 / 0 for real data: a perfect generator drawing 26,000 samples still measures a KL of
about 0.02 (sampling noise alone: about (1000 - 1) / (2 n) nats), and MNIST's digits are not
exactly equally frequent (3 KL(test digit frequencies || uniform) adds 0.005 nats).
``stacked_floor()`` gives the real floor: real stacks from the MNIST test
images, evaluated like samples. Compare numbers only at equal n.

    from mnistgan.data import to_unit_range
    from mnistgan.metrics.modes import evaluate_stacked, stacked_floor, stack_digits
    scores = evaluate_stacked(samples)   # samples: float (26000, 3, 28, 28) in [-1, 1]
    floor = stacked_floor()              # the same numbers for 26,000 real stacks
"""

from __future__ import annotations

import os

import torch

from ..data import IMAGE_SIZE, NUM_CLASSES, load_mnist, to_unit_range
from ..datasets import STACKED_CHANNELS, place_values, stack_digits, whole_number
from ..errors import UserError
from .evaluator import features_and_probabilities, load_evaluator
from .scoring import check_images

STACKED_MODES = 1000  # digit triples: 10 ** STACKED_CHANNELS
STACKED_SAMPLES = 26_000  # samples per evaluation, as in PacGAN


@torch.no_grad()
def classify_channels(images: torch.Tensor, device: str | torch.device = "cpu", batch_size: int = 500) -> torch.Tensor:
    """images float (N, 3, 28, 28) in [-1, 1] -> int64 (N,) triples 100*a + 10*b + c, each channel
    classified by the shipped MNIST evaluator (argmax of its probabilities).

    ``batch_size``: stacked images per evaluator batch (3 x batch_size digits)."""
    check_images(images, min_images=1, channels=STACKED_CHANNELS, convention=STACKED_SAMPLES)
    return _triples(_channel_probabilities(images, device, batch_size))


def mode_statistics(triples: torch.Tensor, modes: int = STACKED_MODES) -> dict:
    """{"modes_covered": number of distinct triples seen (of `modes`), "reverse_kl": KL(p_generated || uniform)
    in nats, "n": len(triples)}; KL = sum_m p_m log(p_m * modes) over modes with p_m > 0.

    ``triples``: integers in 0..modes-1, shape (n,), n >= 1."""
    modes = whole_number(modes, "modes", minimum=1)
    if (not isinstance(triples, torch.Tensor) or triples.dtype.is_floating_point or triples.dtype.is_complex
            or triples.dtype == torch.bool or triples.ndim != 1):
        kind = f"{triples.dtype} {tuple(triples.shape)}" if isinstance(triples, torch.Tensor) else type(triples).__name__
        raise UserError(f"triples must be an integer tensor of shape (n,), got {kind}")
    if len(triples) == 0:
        raise UserError("triples is empty; mode statistics need at least one sample")
    low, high = int(triples.min()), int(triples.max())
    if low < 0 or high >= modes:
        raise UserError(f"triples span {low}..{high}; they must lie in 0..{modes - 1} (one number per mode)")
    n = len(triples)
    counts = torch.bincount(triples.long().cpu(), minlength=modes).double()
    seen = counts[counts > 0]
    # p_m * modes = count_m * modes / n, exact for the integer counts: a uniform histogram gives log(1) = 0.
    kl = float((seen / n * torch.log(seen * modes / n)).sum())
    return {"modes_covered": int(len(seen)), "reverse_kl": max(kl, 0.0), "n": n}


@torch.no_grad()
def evaluate_stacked(images: torch.Tensor, device: str | torch.device = "cpu") -> dict:
    """mode_statistics(classify_channels(images)) plus "channel_confidence": mean top probability.

    ``images``: float (N, 3, 28, 28) in [-1, 1], N = STACKED_SAMPLES by convention; the confidence is
    averaged over all 3 N digits."""
    check_images(images, min_images=1, channels=STACKED_CHANNELS, convention=STACKED_SAMPLES)
    probabilities = _channel_probabilities(images, device, 500)
    statistics = mode_statistics(_triples(probabilities))
    statistics["channel_confidence"] = float(probabilities.max(dim=2).values.double().mean())
    return statistics


def stacked_floor(
    n: int = STACKED_SAMPLES, seed: int = 1, device: str | torch.device = "cpu", data_dir: str | os.PathLike | None = None
) -> dict:
    """The real floor: n real stacks made from the MNIST *test* images (seed `seed`), evaluated like samples."""
    test = load_mnist("test", data_dir)
    stacks, _ = stack_digits(test.images, test.labels, n, seed)
    return evaluate_stacked(to_unit_range(stacks), device)


# ----------------------------------------------------------------------------------------------
# Helpers


def _channel_probabilities(images: torch.Tensor, device, batch_size: int) -> torch.Tensor:
    """The evaluator's probabilities for every channel: (N, 3, 10)."""
    batch_size = whole_number(batch_size, "batch_size", minimum=1)
    digits = images.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)  # row 3 i + k: channel k of sample i
    _, probabilities = features_and_probabilities(load_evaluator(device), digits, STACKED_CHANNELS * batch_size, device)
    return probabilities.reshape(len(images), STACKED_CHANNELS, NUM_CLASSES)


def _triples(probabilities: torch.Tensor) -> torch.Tensor:
    return (probabilities.argmax(dim=2) * place_values()).sum(dim=1)

