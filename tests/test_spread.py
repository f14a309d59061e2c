"""The sample spread and training's collapse check: values worked out by hand, real images against a
generator that ignores its noise, and the classes it can and cannot check."""

import pytest
import torch
from torch import nn

import mnistgan
from mnistgan.config import Config, load_preset
from mnistgan.data import load_mnist, to_unit_range
from mnistgan.metrics.spread import ALIKE, SPREAD_SAMPLES, SpreadCheck, pixel_spread
from mnistgan.models import build_generator

CPU = torch.device("cpu")


def config(conditional: bool, seed: int = 0) -> Config:
    return Config().replace({"model.conditional": conditional, "train.seed": seed})


class RealImages(nn.Module):
    """A stand-in generator that ignores its noise and returns distinct training images of each label
    asked for (or of any label): what a generator with all of the data's variety would draw."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, start: int):
        super().__init__()
        self.images, self.labels, self.start = to_unit_range(images), labels, start

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            return self.images[self.start : self.start + len(z)]
        taken = {int(label): self.start for label in labels.unique()}
        rows = []
        for label in labels.tolist():
            index = (self.labels == label).nonzero().flatten()[taken[label]]
            taken[label] += 1
            rows.append(self.images[index])
        return torch.stack(rows)


class OneImage(nn.Module):
    """A collapsed generator: the same image for every noise vector of a class (a different one per class)."""

    def __init__(self, collapsed_classes=range(10), images=None, labels=None):
        super().__init__()
        self.collapsed = set(collapsed_classes)
        self.variety = None if images is None else RealImages(images, labels, start=100)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        keys = torch.zeros(len(z), dtype=torch.long) if labels is None else labels
        out = (keys.float() / 10 - 0.5).view(-1, 1, 1, 1).expand(-1, 1, 28, 28).clone()
        if self.variety is not None:
            varied = torch.tensor([int(key) not in self.collapsed for key in keys])
            out[varied] = self.variety(z, labels)[varied]
        return out


@pytest.fixture(scope="module")
def mnist():
    return load_mnist("train")


def test_pixel_spread_of_known_images():
    black, white = torch.full((1, 1, 2, 2), -1.0), torch.full((1, 1, 2, 2), 1.0)
    assert pixel_spread(torch.cat([black, white])) == pytest.approx(2.0)
    assert pixel_spread(torch.cat([black, black, black])) == 0.0
    # Three images: distances 2 (black-white), 1 and 1 (each to grey): mean over the 3 pairs 4/3.
    grey = torch.zeros(1, 1, 2, 2)
    assert pixel_spread(torch.cat([black, white, grey])) == pytest.approx(4 / 3)
    # Only the per-pixel root mean square counts: the same images at 4x the pixels spread as far.
    assert pixel_spread(torch.cat([black, white]).repeat(1, 1, 2, 2)) == pytest.approx(2.0)


def test_pixel_spread_needs_two_images():
    with pytest.raises(ValueError, match="at least 2"):
        pixel_spread(torch.zeros(1, 1, 28, 28))


@pytest.mark.parametrize("conditional", [False, True])
def test_real_variety_passes_and_a_collapsed_generator_is_named(mnist, conditional):
    check = SpreadCheck(config(conditional), mnist.images, mnist.labels, CPU)
    assert list(check.real) == (list(range(10)) if conditional else [None])
    real = check.ratios(RealImages(mnist.images, mnist.labels, start=1000))
    assert min(real.values()) > 0.8 and check.describe(real) is None  # other images of the same data: about 1
    collapsed = check.ratios(OneImage())
    assert max(collapsed.values()) == 0.0
    words = check.describe(collapsed)
    assert words.startswith("within every class, the samples are" if conditional else "the samples are")
    assert words.endswith("nearly alike (0.00 of the training images' spread)")


def test_only_the_collapsed_classes_are_named(mnist):
    check = SpreadCheck(config(True), mnist.images, mnist.labels, CPU)
    ratios = check.ratios(OneImage([3, 7], mnist.images, mnist.labels))
    assert {label for label, ratio in ratios.items() if ratio < ALIKE} == {3, 7}
    assert check.describe(ratios).startswith("within classes 3, 7, the samples are nearly alike")
    assert check.describe({3: 0.41, 4: 0.9}).startswith("within class 3, the samples are nearly alike (0.41 ")


def test_classes_with_too_few_images_are_not_checked(mnist):
    keep = torch.cat([(mnist.labels == 5).nonzero().flatten()[:3], (mnist.labels != 5).nonzero().flatten()[:2000]])
    check = SpreadCheck(config(True), mnist.images[keep], mnist.labels[keep], CPU)
    assert 5 not in check.real and len(check.real) == 9
    assert len(check.ratios(OneImage())) == 9


def test_the_check_draws_its_own_noise_and_the_same_each_time(mnist):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = SpreadCheck(config(False, seed=3), mnist.images, mnist.labels, CPU)
    assert torch.equal(torch.get_rng_state(), before)  # training's random stream untouched
    assert first.z.shape == (SPREAD_SAMPLES, 100)
    assert torch.equal(first.z, SpreadCheck(config(False, seed=3), mnist.images, mnist.labels, CPU).z)


@pytest.mark.parametrize("name", ["recommended", "unconditional"])
def test_the_shipped_generators_pass(mnist, name):
    run = mnistgan.pretrained(name)
    check = SpreadCheck(run.config, mnist.images, mnist.labels, CPU)
    ratios = check.ratios(run.generator)
    assert min(ratios.values()) > 0.8 and check.describe(ratios) is None


def test_an_untrained_generator_draws_alike_samples(mnist):
    torch.manual_seed(0)
    model = load_preset("vanilla-gan")
    check = SpreadCheck(model, mnist.images, mnist.labels, CPU)
    assert check.describe(check.ratios(build_generator(model.model))).startswith("the samples are nearly alike")
