"""Train, load, sample and evaluate as plain functions; the CLI and notebooks both call these.

    import mnistgan
    run = mnistgan.train("tf-dcgan-tutorial", epochs=5, out="runs/tf5")
    run.grid(16)                 # a PIL image; shown inline in Jupyter
    images = run.sample(1000)    # tensor (1000, 1, 28, 28) in [-1, 1]
    run.losses["g_loss"]         # numpy columns of losses.csv
    run.evaluate()               # FD, KID, precision/recall, density/coverage, digits covered...
    run.interpolate(rows=8)      # latent walks, (8 * 10, 1, 28, 28)
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .checkpoint import first_non_finite, load_checkpoint, load_weights, read_generator_file
from .config import (DEFAULT_PRESET, RESUMABLE_SHORTCUTS, SHORTCUTS, Config, load_preset, load_preset_file, load_toml,
                     parse_overrides, resumable, shortcut_overrides, stored_config_from_dict)
from .data import to_unit_range
from .datasets import check_name, load_dataset
from .devices import resolve_device
from .distributed import is_main_process
from .errors import UserError, option
from .metrics import evaluate_images
from .metrics.generators import STACKED, default_samples, evaluation_seed, metrics_record, real_floor, score_generator
from .metrics.modes import evaluate_stacked
from .folder import read_own_images
from .imagefiles import available_memory, load_samples
from .models import build_generator
from .plots import image_grid
from .report import refresh_report
from .rundir import RunDirClaim, lock_for_resume, read_csv_columns, read_metrics, require_run_dir, write_metrics
from .sampling import (CONDITIONAL_GRID_COLUMNS, class_rows_inputs, generate, grid_classes, morph_inputs,
                       refresh_batchnorm_statistics, sample_latent, walk_inputs)
from .training import train as run_training
from . import zoo


def resolve_config(preset: str | None = None, overrides: dict[str, Any] | list[str] | None = None, *,
                   preset_file: str | Path | None = None, **shortcuts) -> Config:
    """A preset's config with overrides applied: ``{"section.key": value}`` or ``["section.key=value"]``.

    ``preset`` names a shipped preset; ``preset_file`` is a TOML file of the user's own instead.
    ``shortcuts`` are the common settings of ``config.SHORTCUTS`` (epochs, batch_size, lr for both
    networks, seed, ...; ``mnistgan train --help`` lists them).
    """
    if preset_file is not None:
        if preset is not None:
            raise UserError(f"give {option('preset')} or {option('preset_file')}, not both")
        config = load_preset_file(preset_file)
    else:
        config = load_preset(DEFAULT_PRESET if preset is None else preset)
    return config.replace(_merged_overrides(shortcuts, overrides))


def _merged_overrides(shortcuts: dict[str, Any], overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    """The shortcuts' keys and the overrides in one dict; a key given both ways with two values is an error."""
    if isinstance(overrides, (list, tuple)):
        overrides = parse_overrides(list(overrides))
    overrides, merged = overrides or {}, shortcut_overrides(shortcuts)
    for key, value in merged.items():
        if key in overrides and overrides[key] != value:
            name = next(name for name in shortcuts if key in SHORTCUTS[name][0] and shortcuts[name] is not None)
            raise UserError(f"{key} is given twice, with different values: {option(name)} {value!r} and "
                            f"{key}={overrides[key]!r}; give it once")
    return {**merged, **overrides}


def fit_to_dataset(config: Config, data_dir=None) -> Config:
    """The config with the networks' channels and classes taken from its dataset (``data.dataset``)."""
    dataset = load_dataset(check_name(config.data.dataset), "train", data_dir, config.data.channels)
    return config.replace({"model.channels": dataset.channels, "model.num_classes": max(1, dataset.num_classes)})


def train(preset: str | None = None, *, preset_file: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None,
          out: str | Path | None = None, data_dir: str | Path | None = None, resume: str | Path | None = None,
          progress: bool | None = None, **shortcuts) -> "Run":
    """Train a preset (default: the recommended one) and return the finished :class:`Run`.

    ``shortcuts`` are the common settings (``config.SHORTCUTS``): ``epochs``, ``batch_size``, ``lr``,
    ``seed``, ``final_eval_samples``, ``tensorboard``, ... ``out`` is the run directory
    (default: a new numbered folder under ``runs/``). With ``resume=RUN_DIR`` training continues
    that run to ``epochs`` epochs in total; only its length, outputs and ``performance.*`` may change
    then (``config.RESUMABLE_KEYS``). Ctrl-C stops after saving a checkpoint.
    """
    shortcut_overrides(shortcuts)  # unknown names fail here, before anything is touched
    if resume is not None:
        return _resume(resume, data_dir, progress, preset=preset, preset_file=preset_file, overrides=overrides, out=out,
                       **shortcuts)
    config = fit_to_dataset(resolve_config(preset, overrides, preset_file=preset_file, **shortcuts), data_dir)
    name = config.preset if config.data.dataset == "mnist" else f"{config.preset}-{_folder_safe(config.data.dataset)}"
    if not is_main_process():  # under torchrun only the first process writes; the others train into its folder
        paths = run_training(config, Path(out) if out is not None else Path("runs"), data_dir=data_dir, progress=progress)
        return Run(paths.root)
    claim = RunDirClaim(out, Path("runs"), name, config.to_toml())
    try:
        paths = run_training(config, claim.path, data_dir=data_dir, progress=progress)
    except BaseException:
        claim.release()  # a run that failed or was stopped before it started leaves nothing behind
        raise
    claim.close()
    return Run(paths.root)


def _folder_safe(name: str) -> str:
    """A dataset's name as part of a run folder's name: folder:/data/my glyphs -> folder-my-glyphs."""
    if name.startswith("folder:"):
        name = "folder-" + Path(name[len("folder:"):]).name
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-") or "data"


def _resume(run_dir: str | Path, data_dir, progress, overrides, **given) -> "Run":
    changes = _merged_overrides({name: given.get(name) for name in RESUMABLE_SHORTCUTS}, overrides)
    changed = [option(name) for name, value in given.items() if name not in RESUMABLE_SHORTCUTS and value is not None]
    changed += [key for key in changes if not resumable(key)]
    if changed:
        allowed = ", ".join(option(name) for name in RESUMABLE_SHORTCUTS)
        raise UserError(f"a resumed run continues as it was configured, so {', '.join(changed)} cannot change; only "
                        f"its length, outputs and performance.* may ({allowed}, or the keys of config.RESUMABLE_KEYS)")
    paths, lock = lock_for_resume(Path(run_dir), is_main_process())
    try:
        config = load_toml(paths.config, stored=True)
        config = config.replace(changes)  # written to config.toml once the resume has started
        run_training(config, paths.root, data_dir=data_dir, resume=True, progress=progress)
    finally:
        lock.release()
    return Run(paths.root)


def evaluate_samples(path: str | Path, device: str = "auto", dataset: str = "mnist") -> dict:
    """Score samples made by any tool, a .npy array or a folder of 28x28 PNGs, as samples of ``dataset``."""
    if check_name(dataset) == "stacked-mnist":  # colour: read as images are (a .npy, or a folder of PNGs), 8 bits a channel
        return evaluate_stacked(to_unit_range(read_own_images(Path(path), channels=3).images), device=resolve_device(device))
    return evaluate_images(load_samples(path), device=resolve_device(device), dataset=dataset)


def evaluate_real(n: int | None = None, device: str = "auto", dataset: str = "mnist") -> dict:
    """The real-data floor: ``n`` training images of ``dataset`` scored against its test set like samples
    (Stacked MNIST: ``n`` real stacks through the modes metric)."""
    dataset = check_name(dataset)
    return real_floor(dataset, default_samples(dataset) if n is None else n, resolve_device(device), strict=True)


def load(run_dir: str | Path, checkpoint: str | Path | None = None) -> "Run":
    """Open a finished or interrupted run for sampling and evaluation."""
    return Run(run_dir, checkpoint)


def pretrained(name: str) -> "Run":
    """A generator that ships with mnistgan (``mnistgan pretrained`` lists them), its file checked first."""
    run = Run(None, zoo.verified_path(name))
    _ = run.generator  # loaded now, so that run.config is there at once
    return run


def export_pretrained(run_dir: str | Path, out: str | Path, half: bool = True) -> zoo.Pretrained:
    """Write run ``run_dir``'s generator as a file the zoo can ship (float16 with ``half``); its registry entry."""
    return zoo.export(Run(run_dir), out, half)


class Run:
    """A run directory: its config, its generator and what training wrote.

    The generator is the EMA copy when training kept one. It is loaded from ``checkpoint`` if
    given (a ``.pt`` checkpoint or a ``.safetensors`` generator), else from the run's
    ``generator.safetensors``, else from ``checkpoints/last.pt``.
    """

    def __init__(self, run_dir: str | Path | None, checkpoint: str | Path | None = None):
        if run_dir is None and checkpoint is None:
            raise UserError("give a run directory or a checkpoint file")
        self.paths = require_run_dir(Path(run_dir)) if run_dir is not None else None
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        if self.checkpoint is not None and self.checkpoint.is_dir():
            raise UserError(f"{self.checkpoint} is a directory; give a checkpoint file (.pt or .safetensors), or the run with {option('run_dir')}")
        if self.checkpoint is not None and not self.checkpoint.is_file():
            raise UserError(f"checkpoint {self.checkpoint} does not exist")
        self._config = load_toml(self.paths.config, stored=True) if self.paths else None
        self._generator = None
        self.trained_epochs: int | None = None  # what the generator's weights trained for, once loaded, where known

    def __repr__(self) -> str:
        where = self.paths.root if self.paths else self.checkpoint
        return f"Run({str(where)!r})"

    @property
    def dir(self) -> Path | None:
        return self.paths.root if self.paths else None

    @property
    def config(self) -> Config:
        """The run's config: its config.toml, or the one stored in the checkpoint or generator file."""
        if self._config is None:
            _ = self.generator  # a file's own config comes with its weights
        return self._config

    @property
    def generator(self) -> torch.nn.Module:
        """The generator used for sampling (EMA weights when the run kept them), in eval mode; loaded on the
        CPU, and left on the device that ``sample`` or ``evaluate`` last moved it to."""
        if self._generator is None:
            self._generator = self._load_generator()
        return self._generator

    def _load_generator(self) -> torch.nn.Module:
        source = self.checkpoint
        if source is None:
            source = self.paths.generator if self.paths.generator.is_file() else self.paths.last_checkpoint
            if not source.is_file():
                raise UserError(f"{self.paths.root} has no generator weights yet (no generator.safetensors or checkpoint)")
        checkpoint_ema = False  # a checkpoint's EMA weights, whose BatchNorm statistics are G's
        if source.suffix == ".safetensors":
            config_dict, weights, self.trained_epochs = read_generator_file(source)
        else:
            state = load_checkpoint(source)
            checkpoint_ema = state.get("ema") is not None
            config_dict, weights = state["config"], state["ema"] if checkpoint_ema else state["generator"]
            self.trained_epochs = state.get("epoch")
        self._weights_source = source
        broken = first_non_finite(weights)
        if broken is not None:  # a generator that diverged draws nothing but NaN: no sample or score of it means anything
            raise UserError(f"{source} holds NaN or infinite weights ({broken[0]}): that training diverged; "
                            "sample an earlier checkpoint, or train again with lower learning rates")
        if self._config is None:
            try:
                self._config = stored_config_from_dict(config_dict)
            except UserError as error:  # the config came from the file, not the user: say which file
                raise UserError(f"{source}: {error}") from None
        network = build_generator(self.config.model)
        load_weights(network, weights, source)  # a run's architecture with another run's file: clear error
        if checkpoint_ema:
            # A checkpoint's EMA carries G's BatchNorm statistics; the generator file holds ones measured
            # for the averaged weights (as training does before every grid and file): measure them here too.
            refresh_batchnorm_statistics(network, self.config, torch.device("cpu"))
        return network.eval()

    def sample(self, n: int = 16, seed: int = 0, digit: int | None = None, device: str = "cpu") -> torch.Tensor:
        """``n`` generated images, float32 (n, C, 28, 28) in [-1, 1]; ``digit`` picks the class (conditional runs)."""
        if n < 1:
            raise UserError(f"{option('n')} must be at least 1; got {n}")
        network = self.generator.to(device)  # loads the config too, for a run opened from a checkpoint file
        self._require_memory_for(n)
        labels = self._labels(n, digit, seed)
        generator = torch.Generator().manual_seed(seed)
        z = sample_latent(self.config.model, n, "cpu", generator)
        return generate(network, z.to(device), None if labels is None else labels.to(device))

    def _require_memory_for(self, n: int) -> None:
        """Refuse up front what cannot fit: the images, their noise, and a generation batch's working memory."""
        needed = n * (self.config.model.channels * 28 * 28 + self.config.model.latent_dim + 2) * 4
        available = available_memory()
        if available is not None and needed > available:
            raise UserError(f"{n:,} samples need about {needed / 2**30:.1f} GiB of memory, more than the "
                            f"{available / 2**30:.1f} GiB available; ask for fewer ({option('n')})")

    def _labels(self, n: int, digit: int | None, seed: int) -> torch.Tensor | None:
        if digit is not None:
            return torch.full((n,), self._require_class(digit), dtype=torch.long)
        if not self.config.model.conditional:
            return None
        # a conditional run asked for no class: an even mix, in a seeded order
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1)) % self.config.model.num_classes

    def _require_class(self, digit: int, name: str = "digit") -> int:
        """``digit`` if it is one of a conditional run's classes, else the error that says why not."""
        model = self.config.model
        if not model.conditional:
            raise UserError(f"{option(name)} needs a conditional run (train with {option('conditional')})")
        if not 0 <= digit < model.num_classes:
            raise UserError(f"{option(name)} must be a class 0-{model.num_classes - 1}; got {digit}")
        return digit

    def sample_digits(self, per_digit: int = CONDITIONAL_GRID_COLUMNS, seed: int = 0, device: str = "cpu") -> torch.Tensor:
        """A conditional run's samples ordered digit by digit: (10 * per_digit, 1, 28, 28), the same noise per column."""
        network = self.generator.to(device)  # loads the config too, for a run opened from a generator file
        if not self.config.model.conditional:
            raise UserError(f"{option('digit')} all needs a conditional run (train with {option('conditional')})")
        if per_digit < 1:
            raise UserError(f"{option('n')} must be at least 1; got {per_digit}")
        self._require_memory_for(len(grid_classes(self.config.model)) * per_digit)
        z, labels = class_rows_inputs(self.config.model, per_digit, torch.Generator().manual_seed(seed))
        return generate(network, z.to(device), labels.to(device))

    def interpolate(self, rows: int = 8, steps: int = 10, seed: int = 0, digit: int | None = None,
                    morph: tuple[int, int] | None = None, device: str = "cpu") -> torch.Tensor:
        """Latent walks: ``rows`` rows of ``steps`` images, float32 (rows * steps, C, 28, 28) row by row.

        Each row walks from one noise draw to another (slerp for Gaussian noise, lerp for uniform); a
        conditional run draws ``digit`` all along (default: row r draws class r). ``morph=(a, b)``
        instead holds each row's noise and moves the label embedding from class a's to class b's.
        """
        if rows < 1:
            raise UserError(f"{option('rows')} must be at least 1; got {rows}")
        if steps < 2:
            raise UserError(f"{option('steps')} must be at least 2, the walk's two ends; got {steps}")
        network = self.generator.to(device)
        model = self.config.model
        self._require_memory_for(rows * steps)
        generator = torch.Generator().manual_seed(seed)
        if morph is not None:
            if digit is not None:
                raise UserError(f"give {option('digit')} or {option('morph')}, not both: a morph goes from one digit to another")
            if len(morph) != 2:
                raise UserError(f"{option('morph')} takes two classes, the first and the last; got {len(morph)}")
            classes = (self._require_class(morph[0], "morph"), self._require_class(morph[1], "morph"))
            z, labels = morph_inputs(network, model, rows, steps, classes, generator)
        else:
            z = walk_inputs(model, rows, steps, generator)
            if digit is not None:
                labels = torch.full((rows * steps,), self._require_class(digit), dtype=torch.long)
            elif model.conditional:  # a walk per row, each at its own class
                labels = (torch.arange(rows) % model.num_classes).repeat_interleave(steps)
            else:
                labels = None
        return generate(network, z.to(device), None if labels is None else labels.to(device))

    def grid(self, n: int = 16, seed: int = 0, digit: int | str | None = None, scale: int = 2) -> Image.Image:
        """A PIL image of ``n`` samples (``digit="all"``: one row per digit, ``n`` per row)."""
        if digit == "all":
            return image_grid(self.sample_digits(n, seed), columns=n, scale=scale)
        return image_grid(self.sample(n, seed, digit), scale=scale)

    @property
    def losses(self) -> dict[str, np.ndarray]:
        """losses.csv as numpy columns: step, epoch, d_loss, g_loss, d_real, d_fake."""
        if self.paths is None or not self.paths.losses.is_file():
            raise UserError("this run has no losses.csv")
        return read_csv_columns(self.paths.losses)

    @property
    def metrics(self) -> dict:
        """The last ``evaluate`` result saved in the run (metrics.json)."""
        record = read_metrics(self.paths) if self.paths is not None else None
        if record is None:
            raise UserError("this run has not been evaluated yet; call run.evaluate() or `mnistgan evaluate --run`")
        return record

    @property
    def trained_seconds(self) -> float:
        """Training's own clock, as the last checkpoint keeps it: the seconds its steps took, over every
        resume (a stopped epoch's part included); start-up, sample grids, evaluations and the
        checkpoints between epochs are not counted."""
        if self.paths is None or not self.paths.last_checkpoint.is_file():
            raise UserError("this run has no checkpoint yet (checkpoints/last.pt) to read its training time from")
        return float(load_checkpoint(self.paths.last_checkpoint).get("trained_seconds", 0.0))

    def evaluate(self, n: int | None = None, seed: int | None = None, device: str = "auto", reference: str = "test",
                 save: bool = True) -> dict:
        """Score ``n`` samples with the evaluator of the run's dataset (see ``mnistgan.metrics``); with
        ``save``, a run opened from its directory keeps the result as metrics.json. ``n`` defaults to
        the convention: 10,000 (26,000 for Stacked MNIST's modes).

        The noise and, for a conditional run, the classes (drawn uniformly) come from ``seed``, by
        default the run's own evaluation seed, so that a finished run's final evaluation is repeated
        exactly. Conditional runs also get ``conditional_accuracy``: how often the evaluator reads
        the class that was asked for, over the same samples. Against the test set the result also
        holds ``real_floor``: the same numbers for as many real images, where there are that many.
        """
        torch_device = resolve_device(device)
        network = self.generator.to(torch_device)
        dataset = self.config.data.dataset
        n = default_samples(dataset) if n is None else n
        seed = evaluation_seed(self.config) if seed is None else seed
        if n < 1:
            raise UserError(f"{option('n')} must be at least 1; got {n}")
        if dataset == STACKED and reference != "test":
            raise UserError(f"Stacked MNIST is scored by its modes, not against real images; leave out {option('reference')}")
        self._require_memory_for(n)
        result = score_generator(network, self.config.model, dataset, n, seed, torch_device, reference)
        floor = real_floor(dataset, n, torch_device) if reference == "test" else None
        weights = self.paths.recorded(self._weights_source) if self.paths is not None else str(self._weights_source)
        result = metrics_record(result, self.config, seed, weights, reference,
                                **({"real_floor": floor} if floor is not None else {}))
        if save and self.paths is not None:
            write_metrics(self.paths, result)
            refresh_report(self.paths.root)
        return result

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.grid(16).save(buffer, format="PNG")
        return buffer.getvalue()
