"""The evaluator network: the shipped weights, their checksum, their accuracy, and how they are made."""

import shutil

import pytest
import torch

from mnistgan.data import load_mnist, to_unit_range
from mnistgan.errors import UserError
from mnistgan.metrics import evaluator
from mnistgan.metrics.evaluator import FEATURE_DIM, WEIGHTS_PATH, WEIGHTS_SHA256, load_evaluator


def test_shipped_weights_are_small_and_match_their_checksum():
    assert WEIGHTS_PATH.stat().st_size < 4 * 2**20
    assert evaluator.sha256_of(WEIGHTS_PATH) == WEIGHTS_SHA256


def test_shipped_weights_classify_test_digits():
    test = load_mnist("test")
    images, labels = to_unit_range(test.images[:2000]), test.labels[:2000]
    model = load_evaluator()
    with torch.inference_mode():
        features, logits = model.features(images[:8]), model(images[:8])
        accuracy = evaluator.accuracy(model, images, labels)
    assert features.shape == (8, FEATURE_DIM) and logits.shape == (8, 10)
    assert accuracy >= 0.99


def test_a_corrupted_copy_is_refused(tmp_path):
    copy = tmp_path / "evaluator.safetensors"
    shutil.copy(WEIGHTS_PATH, copy)
    content = bytearray(copy.read_bytes())
    content[-100] ^= 0x01  # one flipped bit in a weight
    copy.write_bytes(bytes(content))
    with pytest.raises(UserError, match="SHA-256"):
        load_evaluator(path=copy)
    load_evaluator(path=WEIGHTS_PATH)  # the original still loads by path


def test_missing_or_foreign_weights_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_evaluator(path=tmp_path / "missing.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(UserError, match="cannot be read|do not fit"):
        load_evaluator(path=foreign, expected_sha256=None)


def test_random_shift_moves_digits_without_changing_them():
    image = torch.full((1, 1, 28, 28), -1.0)
    image[0, 0, 10:14, 12:15] = 1.0  # a 4x3 white block on black
    shifted = evaluator.random_shift(image.repeat(200, 1, 1, 1), 2, torch.Generator().manual_seed(0))
    assert shifted.shape == (200, 1, 28, 28)
    assert (shifted == 1.0).sum(dim=(1, 2, 3)).eq(12).all()  # the block is never cut, only moved
    rows, columns = torch.nonzero(shifted[:, 0] == 1.0)[:, 1], torch.nonzero(shifted[:, 0] == 1.0)[:, 2]
    assert rows.min() == 8 and rows.max() == 15 and columns.min() == 10 and columns.max() == 16  # +-2 px, all used
    assert set(shifted.unique().tolist()) == {-1.0, 1.0}  # the border is filled with background


def test_training_is_seeded_and_reproducible(tmp_path):
    state = torch.get_rng_state()
    runs = [
        evaluator.train_evaluator(seed=3, epochs=1, out_path=tmp_path / f"{i}.safetensors", limit=256, log=None)
        for i in range(2)
    ]
    assert runs[0]["sha256"] == runs[1]["sha256"]  # same seed, same bytes
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    other = evaluator.train_evaluator(seed=4, epochs=1, out_path=tmp_path / "other.safetensors", limit=256, log=None)
    assert other["sha256"] != runs[0]["sha256"]
    assert set(runs[0]) >= {"accuracy", "seconds", "seed", "epochs", "sha256", "path"}
    load_evaluator(path=runs[0]["path"], expected_sha256=runs[0]["sha256"])  # what it writes loads back


def test_learning_rate_schedule_warms_up_then_decays_to_zero():
    total = 4000
    rates = [evaluator.learning_rate(step, total) for step in range(total + 1)]
    peak = rates.index(max(rates))
    assert max(rates) == pytest.approx(evaluator.LEARNING_RATE)
    assert peak == evaluator.WARMUP_STEPS - 1
    assert all(a <= b for a, b in zip(rates[:peak], rates[1 : peak + 1]))
    assert all(a >= b for a, b in zip(rates[peak:], rates[peak + 1 :]))
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)


def test_an_unwritable_output_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(UserError, match="choose another output path"):
        evaluator.train_evaluator(epochs=1, out_path=blocker / "evaluator.safetensors", limit=64, log=None)
