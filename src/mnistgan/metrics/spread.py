"""Sample spread: how far apart a generator's samples lie, against as many training images.

A collapsed generator draws nearly the same image whatever the noise (within each class, when it is
conditional). Recall measures lost variety properly, but it needs the evaluator and thousands of
samples; the mean distance between a few dozen samples needs neither, so training checks it at every
grid, on any dataset. It catches only the blatant case: a generator collapsed onto a few different
images keeps most of the spread, and only recall (``train.eval_every``) shows that.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..data import to_unit_range
from ..sampling import generate, grid_classes, sample_latent

SPREAD_SAMPLES = 32  # per class checked (or in all, unconditional): 496 pairs
MIN_REAL = 8  # a class with fewer training images is not checked: its spread says little
# Below this share of the training images' spread, samples count as alike. Measured on MNIST (docs/
# reliability.md, "Collapse"): trained generators 0.75-1.04 per class, ones that draw a single image
# (per class) 0.12-0.41.
ALIKE = 0.5
# What alike samples say, wherever a run reports them (epoch line, end of training, report).
VERDICT = "G has collapsed, or not yet learned variety"


def pixel_spread(images: torch.Tensor) -> float:
    """The mean distance between two different images of ``images`` (N >= 2, any shape per image),
    as a root-mean-square difference per pixel: 0 for identical images, 2 at most in [-1, 1]."""
    if images.shape[0] < 2:
        raise ValueError(f"the spread of {images.shape[0]} image(s) is undefined: it needs at least 2")
    flat = images.flatten(1).double()
    # Pairwise differences, not the matrix-product shortcut: identical images must measure exactly 0.
    distances = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist") / flat.shape[1] ** 0.5
    count = flat.shape[0]
    return float(distances.sum() / (count * (count - 1)))  # the diagonal is 0


class SpreadCheck:
    """Training's collapse check: the spread of fixed samples of each class the grid shows (all samples,
    unconditional), as a share of the spread of as many training images of that class.

    Its noise comes from a generator of its own, so checking never touches training's random stream, and
    every check of a run compares the same inputs.
    """

    def __init__(self, config: Config, images: torch.Tensor, labels: torch.Tensor, device: torch.device):
        model = config.model
        random = torch.Generator().manual_seed(config.train.seed)
        labels = labels.cpu()
        classes = grid_classes(model).tolist() if model.conditional else [None]
        self.real: dict[int | None, float] = {}
        for label in classes:
            pool = torch.arange(len(labels)) if label is None else (labels == label).nonzero().flatten()
            if len(pool) < MIN_REAL:
                continue
            chosen = pool[torch.randperm(len(pool), generator=random)[:SPREAD_SAMPLES]]
            spread = pixel_spread(to_unit_range(images[chosen.to(images.device)].cpu()))
            if spread > 0:  # identical training images: nothing to compare with
                self.real[label] = spread
        self.z = sample_latent(model, SPREAD_SAMPLES * len(self.real), "cpu", random).to(device)
        self.labels = (torch.tensor(list(self.real), dtype=torch.long).repeat_interleave(SPREAD_SAMPLES).to(device)
                       if model.conditional else None)

    def ratios(self, generator: nn.Module) -> dict[int | None, float]:
        """Each checked class's sample spread as a share of its training images' (key None: unconditional)."""
        if not self.real:
            return {}
        samples = generate(generator, self.z, self.labels).split(SPREAD_SAMPLES)
        return {label: pixel_spread(part) / real for (label, real), part in zip(self.real.items(), samples)}

    @staticmethod
    def describe(ratios: dict[int | None, float]) -> str | None:
        """What ``ratios`` show, where they show samples alike: which classes, and how far below the real spread."""
        alike = {label: ratio for label, ratio in ratios.items() if ratio < ALIKE}
        if not alike:
            return None
        low, high = min(alike.values()), max(alike.values())
        shares = f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}"
        if None in alike:
            whose = "the samples are"
        elif len(alike) == len(ratios):
            whose = "within every class, the samples are"
        else:
            whose = f"within class{'es' if len(alike) > 1 else ''} {', '.join(map(str, alike))}, the samples are"
        return f"{whose} nearly alike ({shares} of the training images' spread)"
