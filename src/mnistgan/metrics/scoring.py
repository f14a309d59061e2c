"""Scoring images with the shipped evaluator: the metric registry, ``evaluate_images``, the
real-data floor, and the cached reference statistics. (The package docstring says how to read them.)"""


from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..data import IMAGE_SIZE, cache_dir, to_unit_range
from ..errors import UserError
from ..files import write_bytes_atomically
from . import distances
from .evaluator import FEATURE_DIM, SHIPPED, evaluator_splits, features_and_probabilities, load_evaluator

REFERENCE_SIZE = 10_000  # images in a reference set: all of MNIST test, or the first 10,000 of train
REFERENCES = ("test", "train")  # the MNIST split a reference set is taken from
MIN_IMAGES = 10  # fewer samples than this cannot fill the k-NN and covariance estimates
RANGE_TOLERANCE = 1e-3  # images may overshoot [-1, 1] by this much (rounding)


@dataclass(frozen=True)
class MetricKey:
    label: str | None  # the row's name in reports and the CLI's table; None: not a row of its own
    better: str  # "lower", "higher" or "-"
    meaning: str


@dataclass(frozen=True)
class Activations:
    """What the evaluator sees in a set of images: features (N, 128) and probabilities (N, 10)."""

    features: torch.Tensor
    probabilities: torch.Tensor


@dataclass(frozen=True)
class Reference(Activations):
    """A real image set, with what the metrics need of it computed once: its k-NN radii per k."""

    radii: dict[int, torch.Tensor]


# ----------------------------------------------------------------------------------------------
# The registry: each metric reads the samples' and the reference's activations and returns one
# or more named numbers. evaluate_images() runs them all unless told which.

Metric = Callable[[Activations, Reference], dict]


def _fd(fake: Activations, real: Reference) -> dict:
    return {"fd": distances.frechet_distance_of_features(real.features, fake.features)}


def _kid(fake: Activations, real: Reference) -> dict:
    mean, std = distances.kernel_inception_distance(real.features, fake.features)
    return {"kid": mean, "kid_std": std}


def _classifier_score(fake: Activations, real: Reference) -> dict:
    return {"classifier_score": distances.classifier_score(fake.probabilities)}


def _precision_recall(fake: Activations, real: Reference) -> dict:
    k = distances.PRECISION_RECALL_K
    precision, recall = distances.precision_recall(real.features, fake.features, k, real_radii=real.radii[k])
    return {"precision": precision, "recall": recall}


def _density_coverage(fake: Activations, real: Reference) -> dict:
    k = distances.DENSITY_COVERAGE_K
    density, coverage = distances.density_coverage(real.features, fake.features, k, real_radii=real.radii[k])
    return {"density": density, "coverage": coverage}


def _classes(fake: Activations, real: Reference) -> dict:
    histogram = distances.class_histogram(fake.probabilities)
    return {
        "digits_covered": distances.digits_covered(histogram),
        "class_kl": distances.class_kl(histogram, distances.class_histogram(real.probabilities)),
        "class_histogram": [round(share, 6) for share in histogram.tolist()],
        "mean_confidence": distances.mean_confidence(fake.probabilities),
        "confident_fraction": distances.confident_fraction(fake.probabilities),
    }


METRICS: dict[str, Metric] = {
    "fd": _fd,
    "kid": _kid,
    "classifier_score": _classifier_score,
    "precision_recall": _precision_recall,
    "density_coverage": _density_coverage,
    "classes": _classes,
}

# Every number evaluate_images() returns, in the order reports list them: its label in tables (None:
# not shown as a row), which direction is better, and what it measures.
METRIC_KEYS: dict[str, MetricKey] = {
    "fd": MetricKey("Fréchet distance", "lower", "Fréchet distance between Gaussians fitted to evaluator features (FID with the MNIST evaluator)"),
    "fd_train": MetricKey(None, "lower", "Fréchet distance against the first 10,000 training images: what a run chooses best.pt by"),
    "kid": MetricKey("kernel distance (KID)", "lower", "kernel distance: unbiased MMD^2, cubic polynomial kernel, mean over 100 subsets of <= 1,000"),
    "kid_std": MetricKey(None, "-", "standard deviation of the KID over the subsets"),
    "precision": MetricKey("precision (k=3)", "higher", "share of samples inside the real data's k=3 nearest-neighbour manifold: realism"),
    "recall": MetricKey("recall (k=3)", "higher", "share of real images inside the samples' k=3 manifold: variety"),
    "density": MetricKey("density (k=5)", "higher", "real k=5 balls per sample, divided by 5; about 1 for real data, can exceed 1"),
    "coverage": MetricKey("coverage (k=5)", "higher", "share of real images whose k=5 ball holds at least one sample"),
    "digits_covered": MetricKey("digits covered", "higher", f"digits drawn at least {distances.COVERED_SHARE:.0%} of the time, of 10"),
    "class_kl": MetricKey("class KL from real", "lower", "KL(samples' digit mix || real digit mix), nats; 2.3 for a single digit"),
    "classifier_score": MetricKey("classifier score", "higher", "exp(E KL(p(y|x) || p(y))), 1..10 (Inception Score with the MNIST evaluator)"),
    "mean_confidence": MetricKey("mean confidence", "higher", "mean top-class probability the evaluator gives a sample"),
    "confident_fraction": MetricKey("share confidently classified", "higher",
                                    f"share of samples with top-class probability >= {distances.CONFIDENT_PROBABILITY}"),
    "conditional_accuracy": MetricKey("conditional accuracy", "higher",
                                      "conditional generators: share of samples classified as the class asked for"),
    # Stacked MNIST (metrics.modes): each channel classified by the MNIST evaluator
    "modes_covered": MetricKey("modes covered (of 1000)", "higher", "digit triples drawn at least once"),
    "reverse_kl": MetricKey("reverse KL to uniform (nats)", "lower", "KL(generated triples || uniform over the 1000)"),
    "channel_confidence": MetricKey("channel confidence", "higher", "mean top-class probability over the three channels"),
    "class_histogram": MetricKey(None, "-", "share of samples classified as each digit 0..9"),
    "n": MetricKey(None, "-", "number of samples evaluated"),
}


# ----------------------------------------------------------------------------------------------
# Public functions


def evaluate_images(
    images: torch.Tensor,
    reference: str = "test",
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    data_dir: str | os.PathLike | None = None,
    metrics: list[str] | None = None,
    labels: torch.Tensor | None = None,
    dataset: str = "mnist",
    train_fd: bool = False,
) -> dict:
    """Score samples (float (N, C, 28, 28) in [-1, 1]) against a real reference set of ``dataset``,
    through that dataset's evaluator.

    ``reference``: ``"test"`` (the 10,000 test images) or ``"train"`` (the first 10,000
    training images). ``metrics``: names from ``METRICS`` to run (default: all). Returns a dict
    of the keys in ``METRIC_KEYS`` (those of the metrics run) and ``n``; with ``labels`` (the
    classes a conditional generator was asked for) also ``conditional_accuracy``, from the same
    evaluator pass; with ``train_fd`` also ``fd_train``, the FD against the training reference, which
    is what a choice among generators may be made on without touching the test images.
    """
    evaluator = load_evaluator(device, dataset=dataset)
    check_images(images, channels=evaluator.in_channels)
    names = _check_metric_names(metrics)
    if reference not in REFERENCES:
        raise UserError(f"unknown reference {reference!r}; use one of {', '.join(REFERENCES)}")
    if labels is not None:
        _check_labels(labels, len(images), evaluator.head.out_features)
    fake = activations_of(images, batch_size, device, dataset)
    real = reference_activations(reference, REFERENCE_SIZE, batch_size, device, data_dir, dataset)
    result = score(fake, real, names)
    if labels is not None:
        result["conditional_accuracy"] = _accuracy(fake.probabilities, labels)
    if train_fd:
        train = real if reference == "train" else reference_activations("train", REFERENCE_SIZE, batch_size, device,
                                                                        data_dir, dataset)
        result["fd_train"] = _fd(fake, train)["fd"]
    return result


def evaluate_real(
    n: int = 10_000,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    data_dir: str | os.PathLike | None = None,
    dataset: str = "mnist",
) -> dict:
    """The real-data floor: the first ``n`` training images of ``dataset`` scored like samples, against its test set."""
    available = len(evaluator_splits(dataset, data_dir)[0])
    if not MIN_IMAGES <= n <= available:
        raise UserError(f"n must be between {MIN_IMAGES} and {available} (training images), got {n}")
    fake = reference_activations("train", n, batch_size, device, data_dir, dataset)
    real = reference_activations("test", REFERENCE_SIZE, batch_size, device, data_dir, dataset)
    return score(fake, real, list(METRICS))


@torch.inference_mode()
def conditional_accuracy(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500, device: str | torch.device = "cpu",
    dataset: str = "mnist",
) -> float:
    """Share of samples the evaluator classifies as the class they were generated for.

    ``images``: float (N, C, 28, 28) in [-1, 1]; ``labels``: integer (N,), the requested classes.
    """
    evaluator = load_evaluator(device, dataset=dataset)
    check_images(images, min_images=1, channels=evaluator.in_channels)
    _check_labels(labels, len(images), evaluator.head.out_features)
    _, probabilities = features_and_probabilities(evaluator, images, batch_size, device)
    return _accuracy(probabilities, labels)


def _check_labels(labels: torch.Tensor, count: int, classes: int) -> None:
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or tuple(labels.shape) != (count,):
        raise UserError(f"labels must be integers of shape ({count},), got {labels.dtype} {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= classes:
        raise UserError(f"labels must be classes 0..{classes - 1}, found {int(labels.min())}..{int(labels.max())}")


def _accuracy(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    return (probabilities.argmax(dim=1) == labels.cpu()).double().mean().item()


def activations_of(images: torch.Tensor, batch_size: int = 500, device: str | torch.device = "cpu",
                   dataset: str = "mnist") -> Activations:
    """What ``dataset``'s evaluator sees in float (N, C, 28, 28) images in [-1, 1]."""
    return Activations(*features_and_probabilities(load_evaluator(device, dataset=dataset), images, batch_size, device))


def as_reference(activations: Activations) -> Reference:
    """Make any real image set's activations usable as a reference (adds its k-NN radii)."""
    ks = (distances.PRECISION_RECALL_K, distances.DENSITY_COVERAGE_K)
    return Reference(activations.features, activations.probabilities, {k: distances.knn_radii(activations.features, k) for k in ks})


def score(fake: Activations, real: Reference, names: list[str] | None = None) -> dict:
    """Run the named metrics (default: all) on already computed activations."""
    result = {}
    for name in names or list(METRICS):
        result.update(METRICS[name](fake, real))
    result["n"] = len(fake.features)
    return result


def check_images(images: torch.Tensor, min_images: int = MIN_IMAGES, channels: int = 1, convention: int = 10_000) -> None:
    """Raise a UserError unless ``images`` is a float (N, C, 28, 28) tensor in [-1, 1] with N >= min_images
    (``convention``: the number of samples a score is usually given on, named in the message)."""
    expected = (channels, IMAGE_SIZE, IMAGE_SIZE)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != expected:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise UserError(f"images must be a tensor of shape (N, {channels}, 28, 28), got {shape}")
    if not images.dtype.is_floating_point:
        raise UserError(f"images must be float in [-1, 1], got dtype {images.dtype}; convert with mnistgan.data.to_unit_range")
    if len(images) < min_images:
        raise UserError(f"got {len(images)} images; the metrics need at least {min_images} ({convention:,} is the convention)")
    if not torch.isfinite(images).all():
        raise UserError("images contain NaN or infinity; the generator's output is broken (diverged training?)")
    low, high = images.min().item(), images.max().item()
    if low < -1 - RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise UserError(f"images span {low:.3g}..{high:.3g}; they must lie in [-1, 1] (tanh output range)")


def _check_metric_names(metrics: list[str] | None) -> list[str]:
    if metrics is None:
        return list(METRICS)
    unknown = [name for name in metrics if name not in METRICS]
    if unknown or not metrics:
        raise UserError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}")
    return list(metrics)


# ----------------------------------------------------------------------------------------------
# Reference statistics, cached on disk


def reference_dir() -> Path:
    """Where reference statistics are cached: beside the MNIST cache."""
    return cache_dir().parent / "reference"


def reference_path(split: str, n: int, dataset: str = "mnist") -> Path | None:
    """The cache file of a shipped evaluator's reference statistics (None: not cached on disk)."""
    if dataset not in SHIPPED:  # your own images may change under the same name: kept in memory only
        return None
    prefix = "" if dataset == "mnist" else f"{dataset}-"
    return reference_dir() / f"{prefix}{split}-first{n}-evaluator-{SHIPPED[dataset][1][:16]}.safetensors"


_in_memory: dict[tuple[str, str, int], Reference] = {}  # each reference loaded once per process


def reference_activations(
    split: str,
    n: int = REFERENCE_SIZE,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    data_dir: str | os.PathLike | None = None,
    dataset: str = "mnist",
) -> Reference:
    """Features, probabilities and k-NN radii of the first ``n`` images of a split of ``dataset``.

    Read from the cache if there, else computed and written to it (atomically: a crash leaves no
    half-written file). The cache is a pure speed-up: it is rebuilt whenever it is missing,
    unreadable or incomplete, and a cache folder that cannot be written only costs a warning.
    The MNIST files are checksummed on loading, so the statistics depend on the weights alone.
    """
    key = (dataset, split, n)
    if key in _in_memory:
        return _in_memory[key]
    path = reference_path(split, n, dataset)
    classes = load_evaluator(device, dataset=dataset).head.out_features
    stored = _read_reference(path, n, classes, (distances.PRECISION_RECALL_K, distances.DENSITY_COVERAGE_K)) if path else None
    if stored is None:
        train, test, _ = evaluator_splits(dataset, data_dir)
        images = to_unit_range((train if split == "train" else test).images[:n])
        stored = as_reference(activations_of(images, batch_size, device, dataset))
        if path is not None:
            _write_reference(path, stored)
    _in_memory[key] = stored
    return stored


def _read_reference(path: Path, n: int, classes: int, ks: tuple[int, ...]) -> Reference | None:
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))  # safetensors: plain arrays, nothing is unpickled
    except (SafetensorError, OSError):
        return None
    expected = {"features": (n, FEATURE_DIM), "probabilities": (n, classes), **{f"radii_k{k}": (n,) for k in ks}}
    if any(name not in tensors or tuple(tensors[name].shape) != shape for name, shape in expected.items()):
        return None
    return Reference(tensors["features"], tensors["probabilities"], {k: tensors[f"radii_k{k}"] for k in ks})


def _write_reference(path: Path, reference: Reference) -> None:
    tensors = {"features": reference.features.contiguous(), "probabilities": reference.probabilities.contiguous()}
    tensors.update({f"radii_k{k}": radii.contiguous() for k, radii in reference.radii.items()})
    try:  # readers see the old file or the whole new one, never half of it
        write_bytes_atomically(path, safetensors_bytes(tensors))
    except (OSError, SafetensorError) as error:
        warnings.warn(f"could not cache reference statistics in {path.parent} ({error}); they will be recomputed next time")
