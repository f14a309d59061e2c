import json
import struct

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mnistgan.checkpoint import (CHECKPOINT_DIGEST_KEY, FORMAT_VERSION, content_digest, load_checkpoint,
                                 read_generator_file, save_checkpoint, save_generator)
from mnistgan.errors import UserError

MARKER = 0.123456789  # every weight of the tiny network: its bytes repeat in the file, easy to find


def tiny_network():
    network = nn.Linear(8, 4)
    nn.init.constant_(network.weight, MARKER)
    nn.init.zeros_(network.bias)
    return network


def training_state():
    """A checkpoint state shaped like training's: weights, optimizer state (int keys), RNG bytes, plain values."""
    torch.manual_seed(0)
    network = tiny_network()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    network(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    with torch.no_grad():
        nn.init.constant_(network.weight, MARKER)  # the step moved them; put the marker back
    stats = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        "config": {"model": {"widths": [4, 8]}, "train": {"seed": 0}},
        "epoch": 3, "step_in_epoch": 0,
        "generator": network.state_dict(), "ema": None,
        "g_optimizer": optimizer.state_dict(),
        "partial_stats": stats.t(),  # non-contiguous
        "half": torch.linspace(-1, 1, 5, dtype=torch.bfloat16),  # no numpy dtype
        "rng": {"cpu": torch.get_rng_state(), "cuda": None},
        "best_quality": 12.5, "trained_seconds": 0.25,
    }


def assert_same(first, second):
    if isinstance(first, torch.Tensor):
        assert isinstance(second, torch.Tensor) and first.dtype == second.dtype and torch.equal(first, second)
    elif isinstance(first, dict):
        assert first.keys() == second.keys()
        for key in first:
            assert_same(first[key], second[key])
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second)
        for one, other in zip(first, second):
            assert_same(one, other)
    else:
        assert first == second


def damage_marker(path, count=4):
    """Change a few bytes in the middle of the marker weights, where neither file format looks."""
    data = bytearray(path.read_bytes())
    run = struct.pack("<f", MARKER) * 8
    start = data.find(run)
    assert start >= 0, "marker weights not found in the file"
    middle = start + len(run) // 2
    data[middle:middle + count] = bytes(byte ^ 0xFF for byte in data[middle:middle + count])
    path.write_bytes(bytes(data))


def test_a_checkpoint_round_trip_carries_a_digest_and_returns_the_same_contents(tmp_path):
    state = training_state()
    save_checkpoint(state, tmp_path / "last.pt")
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    assert raw[CHECKPOINT_DIGEST_KEY] == content_digest({"format": FORMAT_VERSION, **state})
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert CHECKPOINT_DIGEST_KEY not in loaded
    assert_same({"format": FORMAT_VERSION, **state}, loaded)


def test_the_digest_sees_dtype_shape_and_bytes_but_not_layout_or_key_order():
    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert content_digest(tensor.t()) == content_digest(tensor.t().contiguous())
    assert content_digest({"a": 1, "b": tensor}) == content_digest({"b": tensor, "a": 1})
    assert content_digest(tensor) != content_digest(tensor.reshape(4, 3))
    assert content_digest(tensor) != content_digest(tensor.double())
    changed = tensor.clone()
    changed[1, 2] = 100
    assert content_digest(tensor) != content_digest(changed)


def refusal_of_damaged(load, path):
    """Damage the marker bytes in ``path``; return the one-line error ``load(path)`` then raises."""
    damage_marker(path)
    with pytest.raises(UserError) as caught:
        load(path)
    message = str(caught.value)
    assert str(path) in message and "damaged" in message and "\n" not in message
    return message


def test_a_checkpoint_damaged_inside_a_tensor_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(training_state(), path)
    assert "restore it from a copy or start a new run" in refusal_of_damaged(load_checkpoint, path)


def test_a_generator_file_damaged_inside_a_tensor_is_refused(tmp_path):
    path = tmp_path / "generator.safetensors"
    save_generator(tiny_network(), {"model": {}}, path, "raw")
    config, weights, _ = read_generator_file(path)
    assert config == {"model": {}} and torch.equal(weights["weight"], torch.full((4, 8), MARKER))
    assert "writes it again" in refusal_of_damaged(read_generator_file, path)


def test_a_generator_file_says_how_many_epochs_its_weights_trained(tmp_path):
    save_generator(tiny_network(), {"model": {}}, tmp_path / "at-7.safetensors", "raw", epoch=7)
    save_generator(tiny_network(), {"model": {}}, tmp_path / "unknown.safetensors", "raw")
    assert read_generator_file(tmp_path / "at-7.safetensors").epoch == 7
    assert read_generator_file(tmp_path / "unknown.safetensors").epoch is None  # as files written before it said


def test_files_written_before_the_digest_still_load(tmp_path):
    state = training_state()
    torch.save({"format": FORMAT_VERSION, **state}, tmp_path / "old.pt")  # as save_checkpoint wrote them before
    save_checkpoint(state, tmp_path / "new.pt")
    assert CHECKPOINT_DIGEST_KEY not in torch.load(tmp_path / "old.pt", weights_only=True)
    assert CHECKPOINT_DIGEST_KEY in torch.load(tmp_path / "new.pt", weights_only=True)
    assert_same(load_checkpoint(tmp_path / "old.pt"), load_checkpoint(tmp_path / "new.pt"))

    tensors = {name: tensor.detach() for name, tensor in tiny_network().state_dict().items()}
    metadata = {"format": "mnistgan-generator", "config": json.dumps({"model": {}}), "weights": "raw"}
    save_file(tensors, tmp_path / "old.safetensors", metadata=metadata)
    save_generator(tiny_network(), {"model": {}}, tmp_path / "new.safetensors", "raw")
    old_config, old_weights, _ = read_generator_file(tmp_path / "old.safetensors")
    new_config, new_weights, _ = read_generator_file(tmp_path / "new.safetensors")
    assert old_config == new_config
    assert_same(old_weights, new_weights)


def test_an_unreadable_checkpoint_says_damaged_and_why(tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(UserError) as caught:
        load_checkpoint(bogus)
    message = str(caught.value)
    assert str(bogus) in message and "damaged or not a readable mnistgan checkpoint" in message
    assert "restore it from a copy or give another file" in message and "pick another file" not in message
    detail = message[message.index("(") + 1:message.rindex(")")]
    assert detail and len(detail) <= 120 and "\n" not in message


def test_a_directory_is_named_as_one(tmp_path):
    for read in (load_checkpoint, read_generator_file):
        with pytest.raises(UserError, match="is a directory; give a checkpoint file"):
            read(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


# -- an unreadable checkpoint is described in our words, not PyTorch's ---------------------------

def unreadable_files(tmp_path):
    """(file, the words its error must hold) for each way a checkpoint can be unreadable."""
    import fractions
    import zipfile

    save_checkpoint(training_state(), tmp_path / "good.pt")
    good = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04not a checkpoint")
    (tmp_path / "text.pt").write_bytes(b"hello world\n" * 10)
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"config": {}, "ratio": fractions.Fraction(1, 3)}, tmp_path / "objects.pt")
    with zipfile.ZipFile(tmp_path / "other-zip.pt", "w") as archive:
        archive.writestr("notes/readme.txt", "a zip, but not PyTorch's")
    index = bytearray(good)
    start = index.find(b"data.pkl") + 40  # inside the pickled index of the archive's first entry
    index[start:start + 8] = b"\xff" * 8
    (tmp_path / "damaged-index.pt").write_bytes(bytes(index))
    return {
        "truncated.pt": "truncated or damaged zip archive",
        "pickle.pt": "not a zip file",
        "text.pt": "not a zip file",
        "empty.pt": "empty",
        "objects.pt": "objects other than tensors (fractions.Fraction)",
        "other-zip.pt": "zip archive but not a PyTorch checkpoint",
        "damaged-index.pt": "damaged inside its zip archive",
    }


def test_an_unreadable_checkpoint_says_why_in_a_few_words_of_ours(tmp_path):
    for name, words in unreadable_files(tmp_path).items():
        path = tmp_path / name
        with pytest.raises(UserError) as caught:
            load_checkpoint(path)
        message = str(caught.value)
        prefix = f"{path} is damaged or not a readable mnistgan checkpoint ("
        assert message.startswith(prefix) and message.endswith("); restore it from a copy or give another file"), message
        detail = message[len(prefix):message.rindex(")")]
        assert words in detail and "\n" not in message, message
        assert len(detail) <= 80 and not any(text in detail for text in ("Weights only", "weights_only", "torch.load",
                                                                            "PytorchStreamReader", "miniz", "operand")), message


# -- nothing non-finite is ever written over a file ------------------------------------------------

@pytest.mark.parametrize("poison", ["nan-weight", "inf-optimizer-moment", "nan-bf16-ema"])
def test_a_checkpoint_with_non_finite_weights_is_not_written(tmp_path, poison):
    from mnistgan.checkpoint import NonFiniteError

    path = tmp_path / "last.pt"
    save_checkpoint(training_state(), path)
    good = path.read_bytes()
    state = training_state()
    if poison == "nan-weight":
        state["generator"]["weight"][1, 2] = float("nan")
        location = "generator.weight"
    elif poison == "inf-optimizer-moment":
        state["g_optimizer"]["state"][0]["exp_avg_sq"][0, 0] = float("inf")
        location = "g_optimizer.state.0.exp_avg_sq"
    else:
        state["ema"] = {"bias": torch.tensor([0.0, float("nan"), float("-inf"), 1.0], dtype=torch.bfloat16)}
        location = "ema.bias"
    with pytest.raises(NonFiniteError) as caught:
        save_checkpoint(state, path)
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and caught.value.location == location
    assert str(path) in message and location in message and "NaN or infinite" in message and "\n" not in message
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left


def test_plain_infinities_and_statistics_outside_the_networks_are_written(tmp_path):
    """best_quality starts at infinity, a step's statistics may be NaN: neither is a network's weight."""
    state = training_state()
    state.update(best_quality=float("inf"), partial_stats=torch.full((2, 6), float("nan")))
    save_checkpoint(state, tmp_path / "last.pt")
    assert load_checkpoint(tmp_path / "last.pt")["best_quality"] == float("inf")


def test_a_generator_with_non_finite_weights_is_not_written(tmp_path):
    from mnistgan.checkpoint import NonFiniteError

    network = tiny_network()
    path = tmp_path / "generator.safetensors"
    with torch.no_grad():
        network.bias[3] = float("inf")
    with pytest.raises(NonFiniteError) as caught:
        save_generator(network, {"model": {}}, path, "raw")
    assert caught.value.location == "bias" and str(path) in str(caught.value) and not path.exists()


def test_require_finite_looks_only_at_floating_tensors():
    from mnistgan.checkpoint import NonFiniteError, require_finite

    require_finite({"steps": torch.tensor([2**62]), "rng": torch.arange(256, dtype=torch.uint8), "lr": float("inf"),
                    "layers": [torch.ones(3), None]}, "state")
    with pytest.raises(NonFiniteError, match="state: layers.1 holds 1 NaN or infinite value"):
        require_finite({"layers": [torch.ones(3), torch.tensor([1.0, float("nan")])]}, "state")
    with pytest.raises(NonFiniteError, match="weights: the tensor holds 2 NaN"):
        require_finite(torch.full((2,), float("-inf"), dtype=torch.float16), "weights")


# -- a file that reads but is not what mnistgan writes is one line, not a traceback where it is used ---

MALFORMED_CHECKPOINTS = {  # entry replaced (REMOVE: taken out) -> the words its error names
    "config-not-a-table": ("config", 5, "its config is not a table"),
    "no-generator": ("generator", "REMOVE", "no generator weights"),
    "ema-a-list": ("ema", [1], "its ema entry is not a network's weights"),
    "generator-not-tensors": ("generator", {"weight": 5}, "its generator entry is not a network's weights"),
    "optimizer-empty": ("g_optimizer", {}, "its g_optimizer entry is not an optimizer's state"),
    "rng-without-cpu": ("rng", {"cuda": None}, "its rng entry holds no CPU random state"),
    "epoch-a-string": ("epoch", "3", "its epoch entry is not a count"),
}


@pytest.mark.parametrize("problem", sorted(MALFORMED_CHECKPOINTS))
def test_a_malformed_checkpoint_is_one_line_naming_it(tmp_path, problem):
    key, value, words = MALFORMED_CHECKPOINTS[problem]
    state = training_state()
    if value == "REMOVE":
        del state[key]
    else:
        state[key] = value
    path = tmp_path / "last.pt"
    save_checkpoint(state, path)  # with a digest that matches: the contents are as written, just not mnistgan's
    with pytest.raises(UserError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message and "damaged or not a complete mnistgan checkpoint" in message, message
    assert words in message and "\n" not in message, message


@pytest.mark.parametrize("config", [None, "{not json", "[1, 2]", '"model"'])
def test_a_generator_file_without_a_config_object_is_one_line_naming_it(tmp_path, config):
    path = tmp_path / "generator.safetensors"
    tensors = {name: tensor.detach() for name, tensor in tiny_network().state_dict().items()}
    save_file(tensors, path, metadata={"format": "mnistgan-generator", **({} if config is None else {"config": config})})
    with pytest.raises(UserError) as caught:
        read_generator_file(path)
    message = str(caught.value)
    assert str(path) in message and "not a valid mnistgan generator file" in message and "\n" not in message, message
