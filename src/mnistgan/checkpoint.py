"""Checkpoints: written atomically, loaded without executing pickled code.

A training checkpoint (``checkpoints/last.pt``) holds everything needed to continue bit for bit:
config, network and optimizer states, RNG states, position in the epoch and the partial epoch's
statistics. ``generator.safetensors`` holds only the generator's weights (the EMA copy when
training keeps one) with the config in its metadata, so it can be shared and loaded alone.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import UserError
from .files import write_atomically

FORMAT_VERSION = 1


def save_checkpoint(state: dict, path: Path) -> None:
    """Write a training checkpoint (temp file, fsync, rename)."""
    write_atomically(path, lambda tmp: torch.save({"format": FORMAT_VERSION, **state}, tmp), durable=True)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a training checkpoint with ``weights_only=True``: tensors and plain data only, no code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # a foreign file's pickle protocol warning is noise: it fails cleanly below
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle, not a checkpoint at all
        raise UserError(f"{path} is not a readable mnistgan checkpoint ({type(error).__name__}); pick another file") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or "config" not in state:
        raise UserError(f"{path} is not an mnistgan checkpoint (format {FORMAT_VERSION} expected)")
    return state


def load_weights(network: nn.Module, weights: dict, source: Path | str) -> None:
    """``load_state_dict`` whose mismatch error names the file and the likely cause."""
    try:
        network.load_state_dict(weights)
    except RuntimeError as error:
        first = str(error).splitlines()
        detail = next((line.strip() for line in first[1:] if line.strip()), first[0])
        raise UserError(f"{source} does not fit this architecture ({detail[:160]}); it comes from a different model config") from None


def save_generator(network: nn.Module, config_dict: dict, path: Path, weights_kind: str) -> None:
    """The generator's weights as safetensors, with the config and which weights (raw or EMA) in the metadata."""
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()}
    metadata = {"format": "mnistgan-generator", "config": json.dumps(config_dict), "weights": weights_kind}
    write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), durable=True)


def read_generator_file(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config dict, weights) of a ``generator.safetensors`` file."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        weights = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise UserError(f"{path} is not a readable safetensors file ({error})") from None
    if metadata.get("format") != "mnistgan-generator":
        raise UserError(f"{path} is not an mnistgan generator file (no mnistgan metadata)")
    return json.loads(metadata["config"]), weights
