"""The dataset layer: each dataset's images, labels and class names, and every preset training on every dataset."""

import numpy as np
import pytest
import torch
from PIL import Image

import mnistgan
from mnistgan import datasets
from mnistgan.config import preset_names
from mnistgan.data import FASHION_MNIST, MNIST, find_data_dir
from mnistgan.errors import UserError

from conftest import TINY

FASHION_FILES = FASHION_MNIST.shipped[0]
needs_fashion = pytest.mark.skipif(not FASHION_FILES.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")


def make_folder(root, classes=("circle", "square"), per_class=40, colour=False):
    """A labelled folder of small drawings: one subfolder per class, shapes that differ by class."""
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.zeros((36, 36, 3) if colour else (36, 36), dtype=np.uint8)
            offset = i % 5
            if index == 0:
                pixels[10 + offset : 26 - offset, 10:26] = 255
            else:
                pixels[4:32, 16 + offset // 2 : 20 + offset // 2] = 200
            if colour:
                pixels[..., 1] //= 2
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


@needs_fashion
def test_fashion_mnist_is_found_in_debians_package_and_checked():
    train, test = datasets.load_dataset("fashion-mnist"), datasets.load_dataset("fashion-mnist", "test")
    assert train.images.shape == (60_000, 1, 28, 28) and test.images.shape == (10_000, 1, 28, 28)
    assert train.class_names[0] == "T-shirt/top" and train.num_classes == 10 and train.evaluator == "fashion-mnist"
    assert not torch.equal(train.images[:100], datasets.load_dataset("mnist").images[:100])


def test_a_fashion_folder_named_by_its_variable_must_hold_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("MNISTGAN_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(UserError, match=r"\$MNISTGAN_FASHION_MNIST_DIR .* lacks the Fashion-MNIST file"):
        find_data_dir(source=FASHION_MNIST)
    assert find_data_dir(source=MNIST).is_dir()  # MNIST's own search is untouched by it


def test_stacked_mnist_stacks_three_training_digits_per_image_from_a_seed():
    stacked = datasets.load_dataset("stacked-mnist")
    assert stacked.images.shape == (datasets.STACKED_TRAIN_IMAGES, 3, 28, 28) and stacked.num_classes == 1000
    digits = datasets.load_dataset("mnist")
    again, labels = datasets.stack_digits(digits.images, digits.labels, 5, datasets.STACKED_SEEDS["train"])
    assert torch.equal(again, stacked.images[:5]) and torch.equal(labels, stacked.labels[:5])
    assert stacked.evaluator is None  # scored by its modes, not an evaluator of its own


def test_own_images_become_a_labelled_dataset(tmp_path):
    folder = make_folder(tmp_path / "shapes")
    dataset = datasets.load_dataset(f"folder:{folder}")
    assert dataset.images.shape == (80, 1, 28, 28) and dataset.class_names == ("circle", "square")
    assert dataset.labels.tolist() == [0] * 40 + [1] * 40 and dataset.evaluator is None
    with pytest.raises(UserError, match="no test split"):
        datasets.load_dataset(f"folder:{folder}", "test")


@pytest.mark.parametrize("name", ["", "cifar10", "folder:", "folder:   "])
def test_unknown_dataset_names_are_one_line_listing_them(name):
    with pytest.raises(UserError, match="unknown dataset .*fashion-mnist.*folder:PATH"):
        datasets.check_name(name)


def tiny_for(preset: str) -> dict:
    """The preset at a fraction of its width (conv presets keep their number of layers)."""
    widths = {"tf-dcgan-tutorial": ([16, 8, 4], [8, 16]), "keras-dcgan": ([16, 8, 4], [8, 16]), "compact-dcgan": ([16, 8], [8, 16]),
              "stacked-dcgan": ([16, 8, 8, 4], [4, 8, 8, 16]), "stacked-pacgan": ([16, 8, 8, 4], [4, 8, 8, 16])}.get(preset)
    shapes = ({"model.generator_widths": widths[0], "model.discriminator_widths": widths[1]} if widths
              else {"model.generator_widths": [32, 64], "model.discriminator_widths": [64, 32]})
    return {**TINY, **shapes, "train.subset": 64}


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["fashion-mnist", "stacked-mnist", "folder"])
def test_every_preset_trains_on_every_dataset(tmp_path, dataset):
    if dataset == "fashion-mnist" and not FASHION_FILES.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    name = f"folder:{make_folder(tmp_path / 'shapes', colour=True)}" if dataset == "folder" else dataset
    channels = 1 if dataset == "fashion-mnist" else 3
    for preset in preset_names():
        run = mnistgan.train(preset, overrides={**tiny_for(preset), "data.dataset": name}, out=tmp_path / preset)
        assert run.config.data.dataset == name and run.config.model.channels == channels
        if run.config.model.conditional:
            assert run.config.model.num_classes == {"fashion-mnist": 10, "stacked-mnist": 1000, "folder": 2}[dataset]
        images = mnistgan.load(run.dir).sample(4)
        assert images.shape == (4, channels, 28, 28)
        grid = Image.open(sorted((run.dir / "samples").glob("*.png"))[-1])
        assert grid.mode == ("L" if channels == 1 else "RGB")


def test_a_run_on_own_images_without_an_evaluator_says_how_to_make_one(tmp_path):
    folder = make_folder(tmp_path / "shapes")
    run = mnistgan.train("vanilla-gan", overrides={**tiny_for("vanilla-gan"), "data.dataset": f"folder:{folder}"},
                         out=tmp_path / "run")
    with pytest.raises(UserError, match=f"folder:{folder} has no evaluator yet; make one with `mnistgan train-evaluator --dataset"):
        run.evaluate(n=100, device="cpu")


def test_an_evaluator_trained_on_own_images_scores_runs_on_them(tmp_path, monkeypatch):
    from mnistgan.metrics import evaluator

    monkeypatch.setenv("MNISTGAN_CACHE_DIR", str(tmp_path / "cache" / "mnist"))
    monkeypatch.setattr(evaluator, "WARMUP_STEPS", 1)  # the recipe's warm-up is longer than this whole small run
    folder = make_folder(tmp_path / "shapes")
    name = f"folder:{folder}"
    result = evaluator.train_evaluator(epochs=15, out_path=datasets.user_evaluator_path(name), log=None, dataset=name)
    assert result["accuracy"] > 0.9  # two easy shapes, eight held-out images
    evaluator._evaluator_of.cache_clear()
    run = mnistgan.train("vanilla-gan", overrides={**tiny_for("vanilla-gan"), "data.dataset": name, "train.subset": 0},
                         out=tmp_path / "run")
    scores = run.evaluate(n=50, device="cpu", save=False)
    assert scores["dataset"] == name and scores["n"] == 50 and len(scores["class_histogram"]) == 2


def test_a_conditional_run_needs_labelled_images(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "unlabelled.npy", array)
    with pytest.raises(UserError, match="no labels .*conditional"):
        mnistgan.train("vanilla-gan", overrides={**tiny_for("vanilla-gan"), "data.dataset": f"folder:{tmp_path / 'unlabelled.npy'}"},
                       conditional=True, out=tmp_path / "run")


def test_stacked_samples_from_another_tool_are_scored_by_their_modes(tmp_path):
    real = datasets.load_dataset("stacked-mnist", "test")
    np.save(tmp_path / "stacks.npy", real.images[:300].numpy())
    scores = mnistgan.evaluate_samples(tmp_path / "stacks.npy", device="cpu", dataset="stacked-mnist")
    assert scores["n"] == 300 and scores["channel_confidence"] > 0.98
    true_modes = len(set(real.labels[:300].tolist()))  # real stacks: their own triples, but for a misread digit or two
    assert abs(scores["modes_covered"] - true_modes) <= 3
    one_mode = real.images[:1].repeat(300, 1, 1, 1)
    np.save(tmp_path / "collapsed.npy", one_mode.numpy())
    collapsed = mnistgan.evaluate_samples(tmp_path / "collapsed.npy", device="cpu", dataset="stacked-mnist")
    assert collapsed["modes_covered"] == 1 and abs(collapsed["reverse_kl"] - np.log(1000)) < 1e-9
