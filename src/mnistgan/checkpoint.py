"""Checkpoints: written atomically, loaded without executing pickled code.

A training checkpoint (``checkpoints/last.pt``) holds everything needed to continue bit for bit:
config, network and optimizer states, RNG states, position in the epoch and the partial epoch's
statistics. ``generator.safetensors`` holds only the generator's weights (the EMA copy when
training keeps one) with the config in its metadata, so it can be shared and loaded alone.

Neither format checks its own tensor bytes: a few damaged bytes inside a tensor load silently and
surface later as NaN losses or NaN images. So each file carries a SHA-256 digest of its contents,
written with it and checked on load (files from before the digest load unchecked).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .errors import UserError
from .files import write_bytes_atomically

FORMAT_VERSION = 1
CHECKPOINT_DIGEST_KEY = "content_sha256"  # in a training checkpoint's state: digest of everything else in it
GENERATOR_DIGEST_KEY = "weights_sha256"  # in a generator file's metadata: digest of its tensors
# The entries of a training checkpoint that must be finite: the networks' weights and the optimizers'
# state. Plain values (best_quality starts at infinity) and the partial epoch's loss statistics are not checked.
NETWORK_KEYS = ("generator", "discriminator", "ema", "g_optimizer", "d_optimizer")


class NonFiniteError(UserError):
    """Weights holding NaN or infinity were about to be saved; nothing was written.

    ``location`` names the first such tensor (``generator.net.0.weight``, say). Training catches it to
    stop with the last good checkpoint still on disk.
    """

    def __init__(self, message: str, location: str):
        super().__init__(message)
        self.location = location


def require_finite(value, what: str) -> None:
    """Raise ``NonFiniteError`` if a floating (or complex) tensor in ``value`` holds NaN or infinity.

    ``value`` is a tensor or nested dicts, lists and tuples of them (a state dict, a checkpoint
    state); other values, integer tensors included, are not looked at. ``what`` starts the message:
    ``"not writing runs/001/checkpoints/last.pt"``, say.
    """
    found = first_non_finite(value)
    if found is not None:
        where, count = found
        raise NonFiniteError(f"{what}: {where} holds {count} NaN or infinite value(s), the network has diverged; "
                             "nothing was written (a file already there keeps its last good contents)", where)


def first_non_finite(value) -> tuple[str, int] | None:
    """The first floating (or complex) tensor in ``value`` that holds NaN or infinity: its dotted
    location (``generator.net.0.weight``) and how many such values it holds; None if all are finite."""
    for location, tensor in _inexact_tensors(value, ()):
        finite = torch.isfinite(tensor.detach())
        if not bool(finite.all()):
            return ".".join(map(str, location)) or "the tensor", int(finite.numel() - finite.sum())
    return None


def _inexact_tensors(value, location: tuple):
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            yield location, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _inexact_tensors(item, (*location, key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _inexact_tensors(item, (*location, index))


def content_digest(value) -> str:
    """SHA-256 (hex) of a nested state: every tensor's dtype, shape and bytes, every plain value, every key.

    Dict entries are taken in sorted key order, so the digest does not depend on insertion order.
    Tensors are hashed from a contiguous CPU copy (the state itself is left where it is). Values of
    other types (none are expected in a ``weights_only`` checkpoint) count by type name alone.
    """
    hasher = hashlib.sha256()
    _hash_into(hasher, value)
    return hasher.hexdigest()


def _hash_into(hasher, value) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)  # reshape: a 0-d tensor cannot change its dtype
        hasher.update(f"tensor {value.dtype} {tuple(value.shape)}\n".encode())
        hasher.update(tensor.view(torch.uint8).numpy())  # raw bytes; bf16 has no numpy dtype, uint8 does
    elif isinstance(value, dict):
        hasher.update(f"dict {len(value)}\n".encode())
        for key in sorted(value, key=lambda key: (type(key).__name__, repr(key))):  # keys mix str and int (optimizer state)
            hasher.update(f"key {type(key).__name__} {key!r}\n".encode())
            _hash_into(hasher, value[key])
    elif isinstance(value, (list, tuple)):
        hasher.update(f"{type(value).__name__} {len(value)}\n".encode())
        for item in value:
            _hash_into(hasher, item)
    elif value is None or isinstance(value, (bool, int, float, str, bytes, torch.dtype)):
        hasher.update(f"value {type(value).__name__} {value!r}\n".encode())
    else:
        hasher.update(f"other {type(value).__name__}\n".encode())


def _can_read(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
        return True
    except OSError:
        return False


def _why_unreadable(path: Path, error: Exception) -> str:
    """What ``torch.load`` could not read, in a few words of ours (PyTorch's own text is a page long)."""
    unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    holds_objects = f"holds objects other than tensors ({unsupported[1]})" if unsupported else None
    try:
        with open(path, "rb") as handle:
            start = handle.read(4)
        if not start:
            return "the file is empty"
        if start[:2] == b"PK":  # a zip archive, the format torch.save writes
            if not zipfile.is_zipfile(path):
                return "a truncated or damaged zip archive"
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
            if not any(name.endswith("/data.pkl") for name in names):
                return "a zip archive but not a PyTorch checkpoint"
            return holds_objects or "damaged inside its zip archive"
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return "a truncated or damaged zip archive"
    if start[:1] == b"\x80":  # a pickle: PyTorch's format before 1.6, or not PyTorch at all
        return holds_objects or "not a zip file: a pickle, but no PyTorch checkpoint or one cut short"
    return "not a zip file: not a PyTorch checkpoint at all"


def _require_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a checkpoint file (.pt or .safetensors)")
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")


def save_checkpoint(state: dict, path: Path) -> None:
    """Write a training checkpoint (temp file, fsync, rename) with the digest of its contents."""
    require_finite({key: state[key] for key in NETWORK_KEYS if key in state}, f"not writing {path}")
    state = {"format": FORMAT_VERSION, **state}
    state[CHECKPOINT_DIGEST_KEY] = content_digest(state)
    serialised = io.BytesIO()
    torch.save(state, serialised)
    write_bytes_atomically(path, serialised.getbuffer(), durable=True)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a training checkpoint with ``weights_only=True``: tensors and plain data only, no code.

    The contents are checked against the digest written with them (checkpoints written before the
    digest existed have none and load unchecked); the digest is not part of the returned state.
    """
    path = Path(path)
    _require_file(path, "checkpoint")
    try:
        with warnings.catch_warnings():  # a foreign file's pickle protocol warning is noise: it fails cleanly below
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated or damaged zip, foreign pickle, not a checkpoint at all
        if isinstance(error, OSError) and not _can_read(path):  # the file system, not the contents
            raise UserError(f"{path} cannot be read ({error.strerror or error}); check its permissions and try again") from None
        raise UserError(f"{path} is damaged or not a readable mnistgan checkpoint ({_why_unreadable(path, error)}); "
                        "restore it from a copy or give another file") from None
    if isinstance(state, dict) and CHECKPOINT_DIGEST_KEY in state:
        written = state.pop(CHECKPOINT_DIGEST_KEY)
        if written != content_digest(state):
            raise UserError(f"{path} is damaged: its contents do not match the digest written with it; "
                            "restore it from a copy or start a new run")
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or "config" not in state:
        raise UserError(f"{path} is not an mnistgan checkpoint (format {FORMAT_VERSION} expected)")
    problem = _malformed_entry(state)
    if problem:  # a file cut short or put together by hand: one line here, not a traceback wherever it is used
        raise UserError(f"{path} is damaged or not a complete mnistgan checkpoint ({problem}); "
                        "restore it from a copy or give another file")
    return state


def _malformed_entry(state: dict) -> str | None:
    """What is wrong with a checkpoint state's entries, in a few words; None if each one present is as mnistgan writes it.

    Only the generator is needed by every use; the rest is checked where present (None: an EMA copy
    not kept), and training checks on resume that all it needs is there.
    """
    if not isinstance(state["config"], dict):
        return "its config is not a table of values"
    if state.get("generator") is None:
        return "no generator weights"
    for key in ("generator", "discriminator", "ema"):
        weights = state.get(key)
        if weights is not None and not (isinstance(weights, dict) and all(isinstance(value, torch.Tensor) for value in weights.values())):
            return f"its {key} entry is not a network's weights"
    for key in ("g_optimizer", "d_optimizer"):
        if state.get(key) is not None and not (isinstance(state[key], dict) and {"state", "param_groups"} <= state[key].keys()):
            return f"its {key} entry is not an optimizer's state"
    rng = state.get("rng")
    if rng is not None and not (isinstance(rng, dict) and isinstance(rng.get("cpu"), torch.Tensor)):
        return "its rng entry holds no CPU random state"
    for key in ("epoch", "step_in_epoch"):
        if state.get(key) is not None and (type(state[key]) is not int or state[key] < 0):
            return f"its {key} entry is not a count"
    return None


def load_weights(network: nn.Module, weights: dict, source: Path | str) -> None:
    """``load_state_dict`` whose mismatch error names the file and the likely cause."""
    try:
        network.load_state_dict(weights)
    except RuntimeError as error:
        first = str(error).splitlines()
        detail = next((line.strip() for line in first[1:] if line.strip()), first[0])
        raise UserError(f"{source} does not fit this architecture ({detail[:160]}); it comes from a different model config") from None


def save_generator(network: nn.Module, config_dict: dict, path: Path, weights_kind: str, epoch: int | None = None) -> None:
    """The generator's weights as safetensors, with the config, which weights (raw or EMA), their digest
    and (when known) the epochs they trained for in the metadata."""
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()}
    require_finite(tensors, f"not writing {path}")
    metadata = {"format": "mnistgan-generator", "config": json.dumps(config_dict), "weights": weights_kind,
                GENERATOR_DIGEST_KEY: content_digest(tensors)}
    if epoch is not None:
        metadata["epoch"] = str(epoch)
    write_bytes_atomically(path, safetensors_bytes(tensors, metadata=metadata), durable=True)


class GeneratorFile(NamedTuple):
    config: dict  # the run's config, as a dict
    weights: dict[str, torch.Tensor]
    epoch: int | None  # the epochs the weights trained for; files written before they said hold None


def read_generator_file(path: Path) -> GeneratorFile:
    """The contents of a ``generator.safetensors`` file, checked against its digest when it has one."""
    from safetensors import safe_open

    path = Path(path)
    _require_file(path, "generator file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            weights = {name: handle.get_tensor(name) for name in handle.keys()}
    except (OSError, SafetensorError) as error:
        raise UserError(f"{path} is not a readable safetensors file ({error})") from None
    if metadata.get("format") != "mnistgan-generator":
        raise UserError(f"{path} is not an mnistgan generator file (no mnistgan metadata)")
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError):
        config = None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a valid mnistgan generator file (its metadata holds no readable config); "
                        "a finished run's `mnistgan train --resume RUN_DIR` writes it again, or sample from the run's checkpoints/last.pt")
    written = metadata.get(GENERATOR_DIGEST_KEY)
    if written is not None and written != content_digest(weights):
        raise UserError(f"{path} is damaged: its weights do not match the digest written with them; "
                        "a finished run's `mnistgan train --resume RUN_DIR` writes it again, or sample from the run's checkpoints/last.pt")
    epoch = metadata.get("epoch", "")
    return GeneratorFile(config, weights, int(epoch) if epoch.isdigit() else None)
