"""The model zoo: the pretrained generators that ship with mnistgan, a registry of named files.

    import mnistgan
    gan = mnistgan.pretrained("NAME")   # a Run: sample, sample_digits, grid, interpolate, evaluate
    gan.grid(16)

Each file in ``zoo/`` is a generator file as a run writes it (``generator.safetensors``: the
weights, the run's full config in the metadata), its weights stored in float16 to stay small and
loaded back into float32. The registry records the SHA-256 of each file, checked at every load.
``export`` writes such a file from a run (``mnistgan pretrained --export RUN_DIR --out FILE``);
``api.pretrained`` opens one as a ``Run`` after ``verified_path`` has checked it.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from .checkpoint import first_non_finite, save_generator
from .errors import UserError, option
from .metrics.evaluator import sha256_of

FOLDER = Path(__file__).with_name("zoo")


@dataclasses.dataclass(frozen=True)
class Pretrained:
    file: str  # the weights, a file in FOLDER
    sha256: str  # of the whole file, checked at every load
    description: str  # one line, listed by `mnistgan pretrained`
    card: str  # its card in docs/: how it was trained, how good it is

    @property
    def path(self) -> Path:
        return FOLDER / self.file


# The generators that ship, by name. `mnistgan pretrained --export RUN_DIR --out FILE` prints an entry
# to paste here; the file goes into FOLDER.
REGISTRY: dict[str, Pretrained] = {
    "recommended": Pretrained(
        file="recommended.safetensors", sha256="2018f3d7dae405dc4bb8c712bd286fafa37d5f7b20d3a996a194c4446759e93e",
        description="recommended (class-conditional MLP, EMA), its full 200 epochs, trained on a CPU",
        card="docs/pretrained/recommended.md"),
    "unconditional": Pretrained(
        file="unconditional.safetensors", sha256="03fa6d58efc33515933c48b98bb8acbf1c506300a1a3ed1664b0487506690152",
        description="recommended's recipe without labels (MLP, EMA), its full 200 epochs, trained on a CPU",
        card="docs/pretrained/unconditional.md"),
}


def entry(name: str) -> Pretrained:
    """The registry's entry for ``name``, or an error that lists the names there are."""
    if name not in REGISTRY:
        known = f"choose one of: {', '.join(REGISTRY)}" if REGISTRY else "this version of mnistgan ships none"
        raise UserError(f"unknown pretrained generator {name!r}; {known} (see `mnistgan pretrained`)")
    return REGISTRY[name]


def verified_path(name: str) -> Path:
    """The file of pretrained generator ``name``, present and with the SHA-256 the registry records."""
    chosen = entry(name)
    if not chosen.path.is_file():
        raise UserError(f"pretrained generator {name!r} is not installed ({chosen.path} is missing); reinstall mnistgan")
    actual = sha256_of(chosen.path)
    if actual != chosen.sha256:
        raise UserError(f"{chosen.path} has SHA-256 {actual[:16]}..., expected {chosen.sha256[:16]}...; "
                        "the file is damaged or was replaced: reinstall mnistgan")
    return chosen.path


def export(run, out: str | Path, half: bool = True) -> Pretrained:
    """Write the generator of ``run`` (an ``api.Run``: the weights ``mnistgan sample --run`` draws from) as
    a pretrained file at ``out``, in float16 with ``half``; returns its registry entry, SHA-256 included."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"{option('out')} {out} must end in .safetensors")
    if not out.parent.is_dir():
        raise UserError(f"{option('out')}: the folder {out.parent} does not exist")
    network = run.generator
    if half:
        network = copy.deepcopy(network).half()  # floating tensors only: BatchNorm's batch count stays an integer
        too_large = first_non_finite(network.state_dict())
        if too_large is not None:
            raise UserError(f"{too_large[0]} holds values beyond float16's range; store it in float32 (turn {option('half')} off)")
    config = run.config
    epochs = run.trained_epochs  # what the weights trained for, not the schedule's length (None: the file does not say)
    save_generator(network, config.to_dict(), out, "ema" if config.train.ema_decay > 0 else "raw", epochs)  # as training chooses
    trained = f"{epochs} epoch{'s' if epochs != 1 else ''} on " if epochs is not None else "trained on "
    description = (f"{config.preset}{', conditional' if config.model.conditional else ''}, "
                   f"{trained}{config.data.dataset}")  # a start: the card says the rest
    return Pretrained(out.name, sha256_of(out), description, f"docs/pretrained/{out.stem}.md")
