"""Stacked MNIST: the stacks, the mode statistics against hand-worked cases, the channel classifier
on real stacks, and the real floor against a simulated perfect generator."""

import math

import pytest
import torch

from mnistgan.data import load_mnist, to_unit_range
from mnistgan.errors import UserError
from mnistgan.metrics import modes
from mnistgan.metrics.evaluator import features_and_probabilities, load_evaluator
from mnistgan.metrics.modes import (
    STACKED_MODES,
    STACKED_SAMPLES,
    classify_channels,
    evaluate_stacked,
    mode_statistics,
    stack_digits,
    stacked_floor,
)

FLOOR_N = 5_000  # real stacks in the floor test: a fifth of STACKED_SAMPLES, about 10 s of evaluator on 2 cores
FLOOR_SEED = 1
SIMULATIONS = 200  # seeded draws of a perfect generator, for the expected floor and its spread


def test_constants():
    assert STACKED_MODES == 10**3
    assert STACKED_SAMPLES == 26_000


# ----------------------------------------------------------------------------------------------
# mode_statistics against values worked out by hand


def test_one_triple_only_covers_one_mode_and_has_kl_ln_1000():
    statistics = mode_statistics(torch.full((26_000,), 457, dtype=torch.int64))
    assert statistics == {"modes_covered": 1, "reverse_kl": pytest.approx(math.log(1000), abs=1e-12), "n": 26_000}


def test_uniform_histogram_covers_every_mode_with_kl_zero():
    triples = torch.arange(1000).repeat(7)[torch.randperm(7000, generator=torch.Generator().manual_seed(0))]
    statistics = mode_statistics(triples)
    assert statistics["modes_covered"] == 1000
    assert statistics["reverse_kl"] == pytest.approx(0.0, abs=1e-12)
    assert statistics["n"] == 7000


def test_two_equally_frequent_triples_give_ln_500():
    triples = torch.tensor([12, 998] * 150)
    statistics = mode_statistics(triples)
    assert statistics["modes_covered"] == 2
    assert statistics["reverse_kl"] == pytest.approx(math.log(500), rel=1e-12)


def test_unequal_histogram_and_modes_argument():
    # p = (3/4, 1/4) over 4 modes: KL = 3/4 ln(3/4 * 4) + 1/4 ln(1/4 * 4) = 3/4 ln 3.
    statistics = mode_statistics(torch.tensor([2, 2, 0, 2], dtype=torch.int32), modes=4)
    assert statistics == {"modes_covered": 2, "reverse_kl": pytest.approx(0.75 * math.log(3), rel=1e-12), "n": 4}


@pytest.mark.parametrize(
    "triples, message",
    [
        (torch.tensor([1.0, 2.0]), "integer tensor"),
        (torch.tensor([True, False]), "integer tensor"),
        (torch.zeros(2, 3, dtype=torch.int64), r"shape \(n,\)"),
        ([1, 2, 3], "integer tensor"),
        (torch.zeros(0, dtype=torch.int64), "empty"),
        (torch.tensor([0, 1000]), r"0\.\.999"),
        (torch.tensor([-1, 5]), r"0\.\.999"),
    ],
)
def test_mode_statistics_refuses_bad_triples(triples, message):
    with pytest.raises(UserError, match=message):
        mode_statistics(triples)


# ----------------------------------------------------------------------------------------------
# stack_digits


@pytest.fixture(scope="module")
def train_digits():
    """The first 2,000 training digits, each image distinct, so a stacked channel names its source."""
    train = load_mnist("train")
    images, labels = train.images[:2000], train.labels[:2000]
    index_of = {image.numpy().tobytes(): i for i, image in enumerate(images)}
    assert len(index_of) == len(images)
    return images, labels, index_of


def test_stack_digits_channels_are_training_digits_and_labels_match_them(train_digits):
    images, labels, index_of = train_digits
    stacks, triples = stack_digits(images, labels, 400, seed=3)
    assert stacks.dtype == torch.uint8 and stacks.shape == (400, 3, 28, 28)
    assert triples.dtype == torch.int64 and triples.shape == (400,)
    sources = torch.tensor([[index_of[stack[k].numpy().tobytes()] for k in range(3)] for stack in stacks])
    digits = labels[sources]  # (400, 3): the label of the image each channel holds
    assert torch.equal(triples, 100 * digits[:, 0] + 10 * digits[:, 1] + digits[:, 2])
    # The channels are drawn independently, not one image repeated.
    assert (sources[:, 0] == sources[:, 1]).sum() <= 2 and (sources[:, 1] == sources[:, 2]).sum() <= 2
    assert len(triples.unique()) > 200


def test_stack_digits_is_deterministic_for_a_seed(train_digits):
    images, labels, _ = train_digits
    first, first_triples = stack_digits(images, labels, 300, seed=7)
    again, again_triples = stack_digits(images, labels, 300, seed=7)
    other, other_triples = stack_digits(images, labels, 300, seed=8)
    assert torch.equal(first, again) and torch.equal(first_triples, again_triples)
    assert not torch.equal(first, other) and not torch.equal(first_triples, other_triples)


def test_stack_digits_draws_uniformly_with_replacement():
    # Four images, each filled with its own index: every channel should pick each a quarter of the time.
    images = torch.arange(4, dtype=torch.uint8)[:, None, None, None].expand(4, 1, 28, 28).contiguous()
    labels = torch.tensor([0, 1, 2, 3])
    n = 40_000
    stacks, triples = stack_digits(images, labels, n, seed=0)
    for channel in range(3):
        counts = torch.bincount(stacks[:, channel, 0, 0].long(), minlength=4)
        # binomial sd = sqrt(n * 1/4 * 3/4) = 87; allow 5 sd
        assert (counts - n // 4).abs().max() <= 5 * 87, (channel, counts)
    assert torch.equal(triples, (stacks[:, :, 0, 0].long() * torch.tensor([100, 10, 1])).sum(1))
    # with replacement: more stacks than images is fine, and all 4^3 triples occur
    assert len(triples.unique()) == 64


@pytest.mark.parametrize(
    "images, labels, n, message",
    [
        (torch.zeros(5, 1, 28, 28), torch.zeros(5, dtype=torch.int64), 3, "uint8"),
        (torch.zeros(5, 3, 28, 28, dtype=torch.uint8), torch.zeros(5, dtype=torch.int64), 3, r"\(M, 1, 28, 28\)"),
        (torch.zeros(5, 1, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), 3, r"shape \(5,\)"),
        (torch.zeros(5, 1, 28, 28, dtype=torch.uint8), torch.zeros(5), 3, "integers"),
        (torch.zeros(5, 1, 28, 28, dtype=torch.uint8), torch.full((5,), 10), 3, r"digits 0\.\.9"),
        (torch.zeros(0, 1, 28, 28, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), 3, "empty"),
        (torch.zeros(5, 1, 28, 28, dtype=torch.uint8), torch.zeros(5, dtype=torch.int64), 0, "at least 1"),
        (torch.zeros(5, 1, 28, 28, dtype=torch.uint8), torch.zeros(5, dtype=torch.int64), 2.5, "whole number"),
    ],
)
def test_stack_digits_refuses_bad_inputs(images, labels, n, message):
    with pytest.raises(UserError, match=message):
        stack_digits(images, labels, n, seed=0)


# ----------------------------------------------------------------------------------------------
# classify_channels and evaluate_stacked


@pytest.fixture(scope="module")
def test_split():
    return load_mnist("test")


@pytest.fixture(scope="module")
def real_stacks(test_split):
    """FLOOR_N real stacks from the test images, exactly as stacked_floor(FLOOR_N, FLOOR_SEED) makes
    them, with their true triples and the evaluator's."""
    stacks, labels = stack_digits(test_split.images, test_split.labels, FLOOR_N, FLOOR_SEED)
    images = to_unit_range(stacks)
    return images, labels, classify_channels(images)


def test_classify_channels_reads_channel_zero_as_hundreds(test_split):
    # The first test digit of each kind that the evaluator reads right on its own (the first 3 it reads as a 5).
    images, labels = to_unit_range(test_split.images[:200]), test_split.labels[:200]
    _, probabilities = features_and_probabilities(load_evaluator("cpu"), images)
    right = probabilities.argmax(1) == labels
    one, two, three = (images[((labels == digit) & right).nonzero()[0, 0], 0] for digit in (1, 2, 3))
    stacks = torch.stack([torch.stack([one, two, three]), torch.stack([three, two, one]), torch.stack([two, two, two])])
    assert classify_channels(stacks).tolist() == [123, 321, 222]


def test_classify_channels_recovers_the_labels_of_real_stacks(real_stacks):
    images, labels, triples = real_stacks
    assert triples.dtype == torch.int64 and triples.shape == (FLOOR_N,)
    # The evaluator is right on 99.6% of test digits, so on about 0.996^3 = 98.8% of triples.
    assert (triples == labels).double().mean() >= 0.98


def test_classify_channels_does_not_depend_on_the_batch_size(real_stacks):
    images, _, triples = real_stacks
    assert torch.equal(classify_channels(images[:50], batch_size=7), triples[:50])


def test_evaluate_stacked_is_mode_statistics_plus_channel_confidence(real_stacks):
    images, _, triples = real_stacks
    subset = images[:200]
    result = evaluate_stacked(subset)
    _, probabilities = features_and_probabilities(load_evaluator("cpu"), subset.reshape(600, 1, 28, 28))
    confidence = probabilities.max(1).values.double().mean().item()
    assert result == {**mode_statistics(triples[:200]), "channel_confidence": pytest.approx(confidence, abs=1e-6)}
    assert 0.95 < result["channel_confidence"] <= 1.0


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.zeros(4, 1, 28, 28), r"\(N, 3, 28, 28\)"),
        (torch.zeros(4, 28, 28, 3), r"\(N, 3, 28, 28\)"),
        (torch.zeros(4, 3, 28, 28, dtype=torch.uint8), "to_unit_range"),
        (torch.zeros(0, 3, 28, 28), "at least 1"),
        (torch.full((4, 3, 28, 28), float("nan")), "NaN"),
        (torch.full((4, 3, 28, 28), 2.0), r"\[-1, 1\]"),
        ("samples.npy", r"\(N, 3, 28, 28\)"),
    ],
)
def test_stacked_images_are_checked(images, message):
    for function in (evaluate_stacked, classify_channels):
        with pytest.raises(UserError, match=message) as caught:
            function(images)
        assert "\n" not in str(caught.value)


# ----------------------------------------------------------------------------------------------
# The real floor


def simulated_floor(frequencies: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """modes_covered and reverse_kl of SIMULATIONS seeded draws of n triples whose three digits are
    independent with the given digit frequencies (uniform: a perfect generator)."""
    triple_frequencies = (frequencies[:, None, None] * frequencies[None, :, None] * frequencies[None, None, :]).reshape(-1)
    generator = torch.Generator().manual_seed(seed)
    covered, kl = [], []
    for _ in range(SIMULATIONS):
        statistics = mode_statistics(torch.multinomial(triple_frequencies, n, replacement=True, generator=generator))
        covered.append(statistics["modes_covered"])
        kl.append(statistics["reverse_kl"])
    return torch.tensor(covered, dtype=torch.float64), torch.tensor(kl, dtype=torch.float64)


def test_simulated_uniform_floor_matches_the_chi_square_limit():
    # KL(empirical || uniform) ~ chi^2 / (2 n), E chi^2 = modes - 1: at n = 26,000 about 0.0192 nats.
    # (This pins the simulation the floor test leans on, and the "about 0.02" quoted for 26,000 samples.)
    _, kl = simulated_floor(torch.full((10,), 0.1, dtype=torch.float64), STACKED_SAMPLES, seed=0)
    assert kl.mean().item() == pytest.approx(999 / (2 * STACKED_SAMPLES), rel=0.03)


def test_real_floor_matches_a_simulated_perfect_generator(real_stacks, test_split):
    images, labels, triples = real_stacks
    measured = mode_statistics(triples)
    assert measured["n"] == FLOOR_N

    # A perfect uniform generator at this n: KL about 0.105 +- 0.005 nats, about 993 modes.
    uniform_covered, uniform_kl = simulated_floor(torch.full((10,), 0.1, dtype=torch.float64), FLOOR_N, seed=0)
    # Real stacks are not uniform: MNIST's test digits are 8.9% (5s) to 11.4% (1s), adding
    # 3 KL(digit frequencies || uniform) = 0.0052 nats to the floor. Simulate that generator too.
    frequencies = torch.bincount(test_split.labels, minlength=10).double() / len(test_split.labels)
    imbalance = 3 * (frequencies * torch.log(frequencies * 10)).sum().item()
    assert imbalance == pytest.approx(0.0052, abs=1e-4)
    real_covered, real_kl = simulated_floor(frequencies, FLOOR_N, seed=1)

    # Within 4 simulated sd of the expected floor for real stacks, allowing 0.005 nats for the
    # evaluator's 0.4% misread digits; and near the uniform floor up to the imbalance.
    assert abs(measured["reverse_kl"] - real_kl.mean().item()) <= 4 * real_kl.std().item() + 0.005
    above_uniform = measured["reverse_kl"] - uniform_kl.mean().item()
    assert -4 * uniform_kl.std().item() <= above_uniform <= imbalance + 4 * uniform_kl.std().item() + 0.005
    # Modes: at n = 5,000 even a perfect generator misses about 1000 e^-5 = 7 of them.
    assert measured["modes_covered"] >= real_covered.mean().item() - 4 * real_covered.std().item()
    assert measured["modes_covered"] >= 980
    # The evaluator's reading changes the statistics little from the stacks' true triples.
    truth = mode_statistics(labels)
    assert abs(measured["reverse_kl"] - truth["reverse_kl"]) <= 0.005
    assert abs(measured["modes_covered"] - truth["modes_covered"]) <= 3


def test_stacked_floor_evaluates_real_stacks_from_the_test_images(monkeypatch, real_stacks):
    # stacked_floor must stack the *test* digits with its seed and evaluate them like samples; the
    # evaluation itself is checked above, so catch what it is handed.
    handed = {}

    def fake_evaluate(images, device="cpu"):
        handed["images"], handed["device"] = images, device
        return {"sentinel": True}

    monkeypatch.setattr(modes, "evaluate_stacked", fake_evaluate)
    assert stacked_floor(FLOOR_N, seed=FLOOR_SEED, device="cpu") == {"sentinel": True}
    assert torch.equal(handed["images"], real_stacks[0]) and handed["device"] == "cpu"
    stacked_floor(FLOOR_N, seed=FLOOR_SEED + 1)
    assert not torch.equal(handed["images"], real_stacks[0])
