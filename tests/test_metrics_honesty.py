"""The metrics rank image sets the way a person would: real digits best, broken sets clearly worse.

Reference: 2,000 MNIST test images. Each candidate set holds 1,000 images.
"""

import pytest
import torch
import torch.nn.functional as F

from mnistgan.data import load_mnist, to_unit_range
from mnistgan.metrics import activations_of, as_reference, score

SET_SIZE = 1000
FAST = ["fd", "classifier_score", "precision_recall", "density_coverage", "classes"]  # all but KID, the slowest
BLUR_SIGMAS = (0.5, 1.0, 1.5, 2.5)  # pixels
NOISE_LEVELS = (0.1, 0.2, 0.4, 0.8)  # standard deviation, in the [-1, 1] pixel range


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, 1, 28, 28) images, with the black background beyond the border."""
    radius = int(3 * sigma + 0.5)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    taps /= taps.sum()
    padded = F.pad(images, (radius,) * 4, value=-1.0)
    return F.conv2d(F.conv2d(padded, taps.view(1, 1, 1, -1)), taps.view(1, 1, -1, 1))


def add_noise(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images + std * noise).clamp(-1, 1)


@pytest.fixture(scope="module")
def scores():
    train, test = load_mnist("train"), load_mnist("test")
    real = as_reference(activations_of(to_unit_range(test.images[:2000])))
    digits = to_unit_range(train.images[:SET_SIZE])
    image_sets = {
        "train": digits,
        "single digit": to_unit_range(train.images[train.labels == 7][:SET_SIZE]),
        "uniform noise": torch.rand((SET_SIZE, 1, 28, 28), generator=torch.Generator().manual_seed(0)) * 2 - 1,
        **{f"blur {sigma}": gaussian_blur(digits, sigma) for sigma in BLUR_SIGMAS},
        **{f"noise {std}": add_noise(digits, std) for std in NOISE_LEVELS},
    }
    return {name: score(activations_of(images), real, FAST) for name, images in image_sets.items()}


def test_real_digits_score_best_of_all_sets(scores):
    real = scores["train"]
    assert real["digits_covered"] == 10 and real["class_kl"] < 0.01
    assert real["precision"] > 0.8 and real["recall"] > 0.8 and 0.7 < real["density"] < 1.3
    assert real["classifier_score"] > 9.5 and real["confident_fraction"] > 0.97
    # Better than every set with visible damage, on every metric.
    damaged = [scores[name] for name in ("uniform noise", "blur 1.0", "blur 1.5", "blur 2.5", "noise 0.2", "noise 0.4", "noise 0.8")]
    for key in ("precision", "recall", "density", "coverage", "classifier_score"):
        assert real[key] > max(s[key] for s in damaged), key
    # FD, recall and coverage also rank it above the mildest damage and above a single digit.
    # (Precision and density do not: a barely blurred digit, or a set of real 7s, is as realistic
    # as a real digit; seeing lost variety is the job of recall and coverage.)
    others = [s for name, s in scores.items() if name != "train"]
    assert real["fd"] < min(s["fd"] for s in others)
    for key in ("recall", "classifier_score"):
        assert real[key] > max(s[key] for s in others), key
    assert real["coverage"] > max(s["coverage"] for name, s in scores.items() if name not in ("train", "blur 0.5"))


def test_a_single_digit_is_found_out(scores):
    single = scores["single digit"]
    assert single["digits_covered"] == 1
    assert single["class_histogram"][7] > 0.98
    assert single["class_kl"] > 2.0  # log(10) = 2.3 for one digit
    assert single["recall"] < 0.3 and single["coverage"] < 0.3
    assert single["classifier_score"] < 1.5
    assert single["precision"] > 0.8  # each image is still a real digit


def test_uniform_noise_is_far_from_digits(scores):
    noise, real = scores["uniform noise"], scores["train"]
    assert noise["fd"] > 100 * real["fd"]
    assert noise["precision"] < 0.01 and noise["density"] < 0.01
    assert noise["recall"] < 0.01 and noise["coverage"] < 0.01


def test_fd_grows_with_blur_and_with_noise(scores):
    for ladder in ([f"blur {sigma}" for sigma in BLUR_SIGMAS], [f"noise {std}" for std in NOISE_LEVELS]):
        fd = [scores["train"]["fd"]] + [scores[name]["fd"] for name in ladder]
        assert all(a < b for a, b in zip(fd, fd[1:])), (ladder, fd)
        assert fd[-1] > 20 * fd[0]
        # and the variety the k-NN metrics see never comes back as the damage grows
        for key in ("recall", "coverage"):
            values = [scores[name][key] for name in ladder]
            assert all(a >= b for a, b in zip(values, values[1:])), (key, values)
