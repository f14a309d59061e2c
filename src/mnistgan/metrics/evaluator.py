"""The evaluator: a small MNIST classifier whose features and probabilities every metric reads.

Fréchet distance, KID, precision/recall and density/coverage compare 128-d features from the
penultimate layer; the classifier score and the class statistics use its softmax probabilities.
The weights ship with the package (``evaluator.safetensors``) and are checked against
``WEIGHTS_SHA256`` on every load, so two people quoting an FD quote it with the same network.

``train_evaluator()`` reproduces them: the recipe is the block of constants below, nothing else.
Training is seeded and deterministic on CPU for a given torch version and thread count (the
float sums inside a convolution may be ordered differently elsewhere, which changes the last
bits of the weights and so their SHA-256, not their accuracy).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..data import NUM_CLASSES, Split, to_unit_range
from ..datasets import load_dataset, user_evaluator_path
from ..devices import resolve_device
from ..errors import UserError
from ..files import write_bytes_atomically

WEIGHTS_PATH = Path(__file__).with_name("evaluator.safetensors")
# SHA-256 of the shipped weights file, written by `mnistgan train-evaluator` with the
# recipe below (torch 2.13 CPU, 2 threads): 99.61% accuracy on the 10,000 test images (docs/metrics.md).
WEIGHTS_SHA256 = "7a95ae17ff3eba647b38663f13526d64a17a41f07f01c2ff12083f22d725a929"
# The evaluators that ship, by dataset: the weights file and its SHA-256, checked at every load.
SHIPPED = {
    "mnist": (WEIGHTS_PATH, WEIGHTS_SHA256),
    # `mnistgan train-evaluator --dataset fashion-mnist` with the recipe below (torch 2.13 CPU, 2 threads):
    # 93.41% accuracy on the 10,000 Fashion-MNIST test images (docs/metrics.md).
    "fashion-mnist": (WEIGHTS_PATH.with_name("evaluator-fashion-mnist.safetensors"),
                      "85dd3ad7af32c01f6de3f1e46f7863f8c9b30dd21d04fcf5ab0c5c8dbb08bf40"),
}
FEATURE_DIM = 128  # width of the penultimate layer the distance metrics compare

# The training recipe. Changing any value (or the Evaluator network) changes the weights: retrain
# and update WEIGHTS_SHA256.
SEED = 0  # seeds initialisation, shuffling, augmentation and dropout
EPOCHS = 10  # passes over the 60,000 training images
BATCH_SIZE = 128  # images per optimizer step
LEARNING_RATE = 2e-3  # peak AdamW learning rate, reached after the warmup
WARMUP_STEPS = 300  # linear warmup from 0, then cosine decay to 0 at the last step
WEIGHT_DECAY = 5e-4  # AdamW decoupled weight decay
MAX_SHIFT = 2  # augmentation: each image moved by a random -2..+2 pixels in x and in y
DROPOUT = 0.3  # before the 10-way head, training only


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),  # the BN supplies the bias
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Evaluator(nn.Module):
    """Conv-BN-ReLU blocks with pooling, a 128-d feature layer, dropout, a linear head over the classes.

    Input: images as float (N, C, 28, 28) in [-1, 1], the range generators produce.
    """

    def __init__(self, dropout: float = DROPOUT, in_channels: int = 1, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.trunk = nn.Sequential(
            conv_block(in_channels, 32),  # (N, 32, 28, 28)
            nn.MaxPool2d(2),  # (N, 32, 14, 14)
            conv_block(32, 64),
            conv_block(64, 64),  # (N, 64, 14, 14)
            nn.MaxPool2d(2),  # (N, 64, 7, 7)
            nn.Flatten(),  # (N, 3136)
            nn.Linear(64 * 7 * 7, FEATURE_DIM, bias=False),
            nn.BatchNorm1d(FEATURE_DIM),
            nn.ReLU(inplace=True),  # (N, 128): the features
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    @property
    def in_channels(self) -> int:
        return self.trunk[0][0].in_channels

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, 28, 28) in [-1, 1] -> (N, 128) penultimate activations."""
        return self.trunk(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, 28, 28) in [-1, 1] -> (N, classes) logits."""
        return self.head(self.dropout(self.features(images)))


@torch.inference_mode()
def features_and_probabilities(
    model: Evaluator, images: torch.Tensor, batch_size: int = 500, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the evaluator over ``images`` in batches: float32 features (N, 128) and probabilities (N, 10), on CPU."""
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    features, probabilities = [], []
    for start in range(0, len(images), batch_size):
        # channels_last (as load_evaluator sets the weights) runs CPU convolutions about 1.7x faster.
        batch = images[start : start + batch_size].to(device, torch.float32, memory_format=torch.channels_last)
        batch_features = model.features(batch)
        features.append(batch_features.float().cpu())
        probabilities.append(model.head(batch_features).float().softmax(dim=1).cpu())
    if not features:
        return torch.empty(0, FEATURE_DIM), torch.empty(0, model.head.out_features)
    return torch.cat(features), torch.cat(probabilities)


# ----------------------------------------------------------------------------------------------
# Loading the shipped weights


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_evaluator(
    device: str | torch.device = "cpu",
    path: str | os.PathLike | None = None,
    expected_sha256: str | None = WEIGHTS_SHA256,
    dataset: str = "mnist",
) -> Evaluator:
    """The evaluator of ``dataset`` (the shipped MNIST one by default), in eval mode and without gradients.

    ``path`` and ``expected_sha256`` exist for reproductions: load a retrained file with
    ``expected_sha256=None`` to skip the check. A dataset that ships no evaluator uses the one
    ``mnistgan train-evaluator --dataset NAME`` made. Each network is built once per device and
    shared, so do not modify it.
    """
    if path is None:
        return _evaluator_of(dataset, str(device))
    return _load(Path(path), expected_sha256, device)


@functools.lru_cache(maxsize=8)
def _evaluator_of(dataset: str, device: str) -> Evaluator:
    if dataset in SHIPPED:
        return _load(*SHIPPED[dataset], device)
    path = user_evaluator_path(dataset)
    if not path.is_file():
        raise UserError(f"{dataset} has no evaluator yet; make one with `mnistgan train-evaluator --dataset {dataset}`")
    return _load(path, None, device)


def _load(path: Path, expected_sha256: str | None, device: str | torch.device) -> Evaluator:
    if not path.is_file():
        raise UserError(f"evaluator weights {path} not found; reinstall mnistgan or run `mnistgan train-evaluator`")
    if expected_sha256 is not None:
        actual = sha256_of(path)
        if actual != expected_sha256:
            raise UserError(
                f"evaluator weights {path} have SHA-256 {actual[:16]}..., expected {expected_sha256[:16]}...; "
                "the file is damaged or was replaced: restore it from the mnistgan distribution"
            )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise UserError(f"evaluator weights {path} cannot be read ({error}); restore the file") from None
    if "trunk.0.0.weight" not in state or "head.weight" not in state:
        raise UserError(f"evaluator weights {path} do not fit the evaluator network; restore the file")
    # Its initial weights are overwritten below, so they must not be drawn from the caller's random
    # stream: training draws its noise from it, and an evaluation would otherwise change the run.
    with torch.random.fork_rng(devices=[]):
        model = Evaluator(in_channels=state["trunk.0.0.weight"].shape[1], num_classes=state["head.weight"].shape[0])
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise UserError(f"evaluator weights {path} do not fit the evaluator network ({first_line})") from None
    return model.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------
# Training (reproduces the shipped weights)


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Move each image by its own random (dy, dx) in [-max_shift, max_shift], filling with background.

    Batched: pad every image once, then gather a 28x28 window at a per-image offset.
    """
    n, _, height, width = images.shape
    padded = F.pad(images, (max_shift,) * 4, value=-1.0)  # (N, C, 28+2s, 28+2s); -1 is the black background
    offsets = torch.randint(0, 2 * max_shift + 1, (2, n, 1), generator=generator).to(images.device)  # (2, N, 1)
    rows = offsets[0] + torch.arange(height, device=images.device)  # (N, 28)
    columns = offsets[1] + torch.arange(width, device=images.device)  # (N, 28)
    batch_index = torch.arange(n, device=images.device)[:, None, None]
    windows = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], columns[:, None, :]]  # (N, 28, 28, C)
    return windows.permute(0, 3, 1, 2).contiguous()  # (N, C, 28, 28)


def learning_rate(step: int, total_steps: int) -> float:
    """Linear warmup for WARMUP_STEPS, then cosine decay from LEARNING_RATE to 0 at total_steps."""
    if step < WARMUP_STEPS:
        return LEARNING_RATE * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, total_steps - WARMUP_STEPS)
    return LEARNING_RATE * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.inference_mode()
def accuracy(model: Evaluator, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Share of ``images`` (float, [-1, 1], on the model's device) whose argmax class equals ``labels``."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size])
        correct += (logits.argmax(dim=1) == labels[start : start + batch_size]).sum().item()
    model.train(was_training)
    return correct / max(1, len(images))


def _require_writable(out_path: Path) -> None:
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        probe = out_path.with_name(f".{out_path.name}.write-test")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write {out_path} ({error.strerror}); choose another output path") from None


def _fit(train_images: torch.Tensor, train_labels: torch.Tensor, seed: int, epochs: int, device: torch.device, log,
         num_classes: int = NUM_CLASSES) -> Evaluator:
    """The recipe's training loop, on a private RNG stream (the caller's global torch RNG state is left as it was)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # initialisation and dropout
        generator = torch.Generator().manual_seed(seed)  # shuffling and augmentation, drawn on CPU
        model = Evaluator(in_channels=train_images.shape[1], num_classes=num_classes).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        total_steps = epochs * math.ceil(len(train_images) / BATCH_SIZE)
        step = 0
        for epoch in range(epochs):
            model.train()
            epoch_started = time.perf_counter()
            loss_sum, correct = 0.0, 0
            order = torch.randperm(len(train_images), generator=generator).to(device)
            for start in range(0, len(train_images), BATCH_SIZE):
                index = order[start : start + BATCH_SIZE]
                images = random_shift(train_images[index], MAX_SHIFT, generator)
                labels = train_labels[index]
                # learning-rate schedule
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step, total_steps)
                # forward, backward, step
                logits = model(images)
                loss = F.cross_entropy(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                loss_sum += loss.item() * len(index)
                correct += (logits.argmax(dim=1) == labels).sum().item()
            if log is not None:
                log(
                    f"epoch {epoch + 1}/{epochs}  loss {loss_sum / len(train_images):.4f}  "
                    f"train accuracy {correct / len(train_images):.4f}  {time.perf_counter() - epoch_started:.1f} s"
                )
    return model


def train_evaluator(
    seed: int = SEED,
    epochs: int = EPOCHS,
    out_path: str | os.PathLike = Path("runs") / "evaluator" / "evaluator.safetensors",
    device: str | torch.device = "cpu",
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,  # use only the first `limit` training and test images (smoke tests)
    log=print,  # called with one status line per epoch; None for silence
    dataset: str = "mnist",  # any labelled dataset (datasets.NAMES)
) -> dict:
    """Train the evaluator of ``dataset`` with the recipe above, write its weights to ``out_path``, report on them.

    Returns ``accuracy`` (on the test images: the dataset's test split, or every tenth of your own
    images, held out), ``seconds``, ``seed``, ``epochs``, ``sha256`` of the written file, ``path``
    and ``matches_shipped`` (whether the bytes equal the shipped file of that dataset).
    """
    if epochs < 1:
        raise UserError(f"epochs must be at least 1, got {epochs}")
    device = resolve_device(str(device))
    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise UserError(f"the evaluator's weights are a safetensors file: {out_path} must end in .safetensors")
    _require_writable(out_path)  # before training, not after: a bad --out should not cost ten minutes
    train, test, class_names = evaluator_splits(dataset, data_dir)
    train_images = to_unit_range(train.images[:limit]).to(device)  # (60000, C, 28, 28) in [-1, 1]
    train_labels = train.labels[:limit].to(device)
    test_images = to_unit_range(test.images[:limit]).to(device)
    test_labels = test.labels[:limit].to(device)

    started = time.perf_counter()
    model = _fit(train_images, train_labels, seed, epochs, device, log, len(class_names))
    seconds = time.perf_counter() - started
    test_accuracy = accuracy(model, test_images, test_labels)

    # Save atomically. The metadata holds only what the recipe determines (no times, no paths), in
    # one JSON string with sorted keys (safetensors stores several entries in arbitrary order), so
    # the same recipe on the same machine writes byte-identical files.
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    recipe = {"seed": seed, "epochs": epochs, "test_accuracy": round(test_accuracy, 4)}
    if dataset != "mnist":  # the shipped MNIST file predates these keys; its bytes stay reproducible
        recipe.update(dataset=dataset, class_names=list(class_names))

    serialised = safetensors_bytes(state, metadata={"mnistgan_evaluator": json.dumps(recipe, sort_keys=True)})
    try:
        write_bytes_atomically(out_path, serialised, durable=True)
    except OSError as error:
        raise UserError(f"cannot write the evaluator weights to {out_path} ({error}); choose another output path") from None
    sha256 = sha256_of(out_path)
    return {
        "accuracy": test_accuracy,
        "seconds": seconds,
        "seed": seed,
        "epochs": epochs,
        "sha256": sha256,
        "path": str(out_path),
        "matches_shipped": dataset in SHIPPED and sha256 == SHIPPED[dataset][1],
    }


def evaluator_splits(dataset: str, data_dir=None) -> tuple[Split, Split, tuple[str, ...]]:
    """The images an evaluator of ``dataset`` learns from and is tested on, and its class names."""
    train = load_dataset(dataset, "train", data_dir)
    if train.labels is None or train.num_classes < 2:
        raise UserError(f"{dataset} has no labels (no class subfolders): an evaluator learns to tell classes apart; "
                        "sort the images into one subfolder per class")
    if dataset.startswith("folder:"):  # one set of images: every tenth is held out for the test
        held_out = torch.arange(len(train)) % 10 == 0
        return (Split(train.images[~held_out], train.labels[~held_out]), Split(train.images[held_out], train.labels[held_out]),
                train.class_names)
    return train.split(), load_dataset(dataset, "test", data_dir).split(), train.class_names
