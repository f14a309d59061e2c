"""Scoring a generator: seeded samples, conditional accuracy from the same pass, the real floor where there is one."""

import dataclasses

import pytest
import torch

from mnistgan.config import load_preset
from mnistgan.data import to_unit_range
from mnistgan.datasets import load_dataset
from mnistgan.errors import UserError
from mnistgan.metrics.generators import STACKED, default_samples, evaluation_seed, metrics_record, real_floor, score_generator
from mnistgan.models import build_generator

from conftest import TINY_MLP


def tiny_generator(conditional: bool):
    config = load_preset("mlp-gan").replace({**TINY_MLP, "model.conditional": conditional})
    torch.manual_seed(0)
    return build_generator(config.model).eval(), config


def test_the_same_seed_scores_the_same_samples_and_another_seed_others():
    generator, config = tiny_generator(conditional=False)
    first = score_generator(generator, config.model, "mnist", 100, seed=3, device=torch.device("cpu"))
    again = score_generator(generator, config.model, "mnist", 100, seed=3, device=torch.device("cpu"))
    other = score_generator(generator, config.model, "mnist", 100, seed=4, device=torch.device("cpu"))
    assert first["n"] == 100 and first["fd"] == again["fd"] and other["fd"] != first["fd"]
    assert "conditional_accuracy" not in first  # nothing was asked for


class DrawsRealDigits(torch.nn.Module):
    """A "generator" that answers each requested class with a real test digit of class (asked + shift) % 10."""

    def __init__(self, shift: int, per_class: int = 20):
        super().__init__()
        test = load_dataset("mnist", "test")
        examples = torch.stack([test.images[test.labels == digit][:per_class] for digit in range(10)])
        self.register_buffer("examples", to_unit_range(examples))  # (class, example, 1, 28, 28)
        self.shift = shift

    def forward(self, z, labels):
        return self.examples[(labels + self.shift) % 10, torch.arange(len(labels)) % self.examples.shape[1]]


def test_a_conditional_generator_is_scored_on_what_it_was_asked_for():
    _, config = tiny_generator(conditional=True)
    score = {shift: score_generator(DrawsRealDigits(shift), config.model, "mnist", 200, seed=3, device=torch.device("cpu"))
             for shift in (0, 1)}
    assert score[0]["conditional_accuracy"] >= 0.9  # each asked-for digit drawn: read as asked (the evaluator errs too)
    assert score[1]["conditional_accuracy"] <= 0.1  # every digit drawn, each one class off


def test_the_record_says_what_the_numbers_were_measured_from():
    _, config = tiny_generator(conditional=False)
    record = metrics_record({"fd": 1.5}, config, evaluation_seed(config), "weights.safetensors", epoch=3)
    assert record == {"fd": 1.5, "seed": config.train.seed + 1, "reference": "test", "weights": "weights.safetensors",
                      "preset": "mlp-gan", "dataset": "mnist", "epoch": 3}
    assert evaluation_seed(dataclasses.replace(config, train=dataclasses.replace(config.train, seed=7))) == 8


def test_the_real_floor_only_at_a_count_the_real_images_reach():
    assert real_floor("mnist", 60_001, torch.device("cpu")) is None
    assert real_floor("mnist", 100, torch.device("cpu"))["n"] == 100
    assert (default_samples("mnist"), default_samples(STACKED)) == (10_000, 26_000)
    with pytest.raises(UserError, match="between 10 and 60000"):  # strict: why, not None
        real_floor("mnist", 60_001, torch.device("cpu"), strict=True)
