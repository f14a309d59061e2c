"""Typed, validated configuration; presets are TOML files in ``presets/``.

A config has six sections. Every value has a type, a default and a one-line meaning here; a
preset file overrides some of them, and ``--set section.key=value`` overrides any. An unknown key,
a value of the wrong type or out of range is a ``UserError`` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import UserError

PRESET_DIR = Path(__file__).parent / "presets"
DEFAULT_PRESET = "recommended"
MAX_SEED = 2**63 - 1  # the largest seed every command takes
MIN_SCORED_SAMPLES = 100  # the fewest samples an evaluation scores: fewer leave its k-NN and covariance estimates noise

# The common settings, one table for the CLI's flags (--batch-size) and the API's keyword arguments
# (batch_size=): name -> (the config keys it sets, help).
SHORTCUTS: dict[str, tuple[tuple[str, ...], str]] = {
    "epochs": (("train.epochs",), "passes over the training images"),
    "batch_size": (("train.batch_size",), "real images per step (all processes)"),
    "lr": (("optim.generator_lr", "optim.discriminator_lr"), "learning rate of both networks"),
    "seed": (("train.seed",), "seeds the networks, the noise and the data order"),
    "subset": (("train.subset",), "train on the first N images"),
    "eval_every": (("train.eval_every",), "evaluate every K epochs (0 = off)"),
    "final_eval_samples": (("train.final_eval_samples",), "score the finished generator on N samples (default 10000; 0 = off)"),
    "tensorboard": (("train.tensorboard",), "also log curves, quality and grids for TensorBoard in RUN/tensorboard/"),
    "conditional": (("model.conditional",), "class-conditional G and D"),
    "device": (("performance.device",), "auto (default), cpu, cuda or cuda:N"),
    "dataset": (("data.dataset",), "mnist (default), fashion-mnist, stacked-mnist or folder:PATH (see `mnistgan datasets`)"),
    "channels": (("data.channels",), "your own images: 1 grey, 3 colour (default: as the files are)"),
}
# What a resumed run may change: the schedule's length and outputs, and how it computes ("section.":
# every key of it). Anything else would not continue the same run.
RESUMABLE_KEYS = ("train.epochs", "train.sample_every", "train.checkpoint_every", "train.checkpoint_minutes",
                  "train.eval_every", "train.eval_samples", "train.final_eval_samples", "train.stop_on_breakdown",
                  "train.tensorboard", "performance.")


def resumable(dotted: str) -> bool:
    """May a resumed run change the config key ``dotted`` ("train.eval_every")?"""
    return any(dotted == key or (key.endswith(".") and dotted.startswith(key)) for key in RESUMABLE_KEYS)


RESUMABLE_SHORTCUTS = tuple(name for name, (keys, _) in SHORTCUTS.items() if all(map(resumable, keys)))


def _finite(number: int | float) -> bool:
    """A finite number that a float can hold (a 400-digit integer cannot)."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def _range(low=None, high=None, low_open=False):
    """Field metadata: the allowed interval of a number (``low_open``: low itself is not allowed)."""
    return {"low": low, "high": high, "low_open": low_open}


@dataclass
class DataConfig:
    # mnist | fashion-mnist | stacked-mnist | folder:PATH (a folder of PNG/JPEG images, or a .npy array)
    dataset: str = "mnist"
    channels: int = field(default=0, metadata=_range(0, 3))  # own images: 1 grey, 3 RGB, 0 = as the files are


@dataclass
class ModelConfig:
    # fully connected, convolutional (DCGAN), or residual without normalisation (R3GAN's rules, models/resnet.py)
    architecture: Literal["mlp", "dcgan", "resnet"] = "dcgan"
    blocks_per_resolution: int = field(default=2, metadata=_range(1, 16))  # resnet: residual blocks at each resolution
    # Set from the dataset when a run starts (data.dataset), and recorded with the run:
    channels: int = field(default=1, metadata=_range(1, 3))  # image channels: 1 grey, 3 colour
    num_classes: int = field(default=10, metadata=_range(1, 100_000))  # classes a conditional model is given
    latent_dim: int = field(default=100, metadata=_range(1, 4096))  # size of the noise vector z
    latent_distribution: Literal["normal", "uniform"] = "normal"  # z ~ N(0, I) or U(-1, 1)
    conditional: bool = False  # generate a requested digit: labels feed both networks
    # mlp: hidden widths; dcgan: channels of the 7x7 projection, then of each transposed conv before the output
    generator_widths: list[int] = field(default_factory=lambda: [256, 128, 64])
    # dcgan only: stride of each transposed conv, the output layer's last; the projection's side is 28
    # divided by each stride in turn, rounded up ([2, 2, 2, 2]: 2x2 -> 4 -> 7 -> 14 -> 28)
    generator_strides: list[int] = field(default_factory=lambda: [1, 2, 2])
    # mlp: hidden widths; dcgan: channels of each stride-2 conv (28 -> 14 -> 7 -> 4 -> 2 with kernel 5)
    discriminator_widths: list[int] = field(default_factory=lambda: [64, 128])
    kernel_size: int = field(default=5, metadata=_range(1, 9))  # dcgan: square kernel of every conv layer
    # dcgan: order of G's projected and D's flattened features; "hwc" as Keras (runs written before
    # this key existed used "chw", and their stored configs are read that way)
    feature_order: Literal["hwc", "chw"] = "hwc"
    leaky_slope: float = field(default=0.2, metadata=_range(0.0, 1.0))  # negative slope of LeakyReLU
    generator_activation: Literal["leaky-relu", "relu"] = "leaky-relu"  # G's hidden layers; DCGAN's own G used ReLU
    generator_dropout: float = field(default=0.0, metadata=_range(0.0, 0.95))  # dropout after G's hidden layers
    discriminator_dropout: float = field(default=0.0, metadata=_range(0.0, 0.95))  # dropout after D's hidden layers
    generator_batchnorm: bool = True  # BatchNorm after G's hidden layers
    discriminator_batchnorm: bool = False  # BatchNorm after D's hidden layers (not the first)
    generator_bias: bool = True  # biases in G's hidden layers (off when BatchNorm follows, as in the TF tutorial)
    output_bias: bool = True  # bias in G's output layer
    batchnorm_momentum: float = field(default=0.1, metadata=_range(0.0, 1.0))  # PyTorch meaning: Keras 0.99 is 0.01 here
    batchnorm_eps: float = field(default=1e-5, metadata=_range(0.0, 1.0, low_open=True))
    init: Literal["pytorch", "glorot-uniform", "dcgan-normal"] = "pytorch"  # weight init (biases zero except pytorch)
    spectral_norm: bool = False  # spectral normalisation of every D layer
    embedding_dim: int = field(default=50, metadata=_range(1, 1024))  # conditional: size of the label embedding
    # PacGAN (Lin et al. 2018): D scores ``pack`` samples at once, joined along channels, so a
    # generator that repeats itself is seen doing so; 1 = one sample per score
    pack: int = field(default=1, metadata=_range(1, 16))


@dataclass
class LossConfig:
    adversarial: Literal["minimax", "non-saturating", "least-squares", "hinge", "wasserstein-gp", "relativistic"] = "non-saturating"
    label_smoothing: float = field(default=0.0, metadata=_range(0.0, 0.5))  # one-sided: real target 1 - s
    r1_gamma: float = field(default=0.0, metadata=_range(0.0))  # R1 penalty weight on real data, 0 = off
    r2_gamma: float = field(default=0.0, metadata=_range(0.0))  # R2 penalty weight on generated data, 0 = off
    # Lazy regularisation (Karras et al. 2020, StyleGAN2): R1 and R2 on every n-th D update only, weighted
    # by n so that their average pull is the same; 1 = every update, as R3GAN applies them
    penalty_interval: int = field(default=1, metadata=_range(1, 64))
    gp_lambda: float = field(default=10.0, metadata=_range(0.0))  # wasserstein-gp gradient penalty weight
    drift_penalty: float = field(default=0.0, metadata=_range(0.0))  # epsilon * E[D(x)^2], every D update; 0 = off


@dataclass
class OptimConfig:
    optimizer: Literal["adam", "sgd"] = "adam"
    generator_lr: float = field(default=2e-4, metadata=_range(0.0, 10.0, low_open=True))
    discriminator_lr: float = field(default=2e-4, metadata=_range(0.0, 10.0, low_open=True))
    beta1: float = field(default=0.5, metadata=_range(0.0, 1.0))  # adam
    beta2: float = field(default=0.999, metadata=_range(0.0, 1.0))  # adam
    eps: float = field(default=1e-8, metadata=_range(0.0, 1.0, low_open=True))  # adam; Keras uses 1e-7
    momentum: float = field(default=0.0, metadata=_range(0.0, 1.0))  # sgd
    # Both learning rates fall along a cosine over the first lr_decay_epochs epochs, to lr_final_fraction
    # of themselves, and stay there; 0 = constant. Counted in epochs from the run's start, so that a
    # run resumed with more epochs continues the same schedule.
    lr_decay_epochs: int = field(default=0, metadata=_range(0, 100_000))
    lr_final_fraction: float = field(default=0.1, metadata=_range(0.0, 1.0))


@dataclass
class TrainConfig:
    epochs: int = field(default=20, metadata=_range(1, 100_000))  # passes over the training images
    batch_size: int = field(default=128, metadata=_range(1, 65_536))  # real images per D step (global, all GPUs)
    update: Literal["alternating", "simultaneous"] = "alternating"  # D then G, or both from one forward pass
    d_steps: int = field(default=1, metadata=_range(1, 100))  # D updates per G update (alternating only)
    # G updates per step, each after the first on fresh noise (alternating only): DCGAN-tensorflow's two,
    # which the VEEGAN and PacGAN Stacked MNIST tables used
    g_steps: int = field(default=1, metadata=_range(1, 100))
    ema_decay: float = field(default=0.0, metadata=_range(0.0, 1.0))  # EMA of G weights for sampling, 0 = off
    ema_start_epoch: int = field(default=0, metadata=_range(0))  # the EMA copies G until this epoch ends
    # the EMA's half-life is at most this fraction of the steps taken so far, so a young run averages
    # its recent weights, not its first ones; ema_decay caps it (StyleGAN2-ADA's ramp-up); 0 = off
    ema_rampup: float = field(default=0.0, metadata=_range(0.0, 1.0))
    seed: int = field(default=0, metadata=_range(0, MAX_SEED))
    subset: int = field(default=0, metadata=_range(0))  # train on the first N images, 0 = all
    sample_every: int = field(default=1, metadata=_range(1))  # epochs between fixed-noise grids
    checkpoint_every: int = field(default=1, metadata=_range(1))  # epochs between checkpoints
    # minutes of training between checkpoints at the latest, mid-epoch too (0 = by epochs only): a kill
    # (the OOM killer, a pre-empted job) never costs more than about this much
    checkpoint_minutes: float = field(default=5.0, metadata=_range(0.0))
    stop_on_breakdown: bool = False  # stop when an epoch shows the GAN has broken down (losses.breakdown)
    log_every: int = field(default=10, metadata=_range(1))  # steps averaged into one row of losses.csv
    eval_every: int = field(default=0, metadata=_range(0))  # epochs between evaluations, 0 = off
    eval_samples: int = field(default=2000, metadata=_range(MIN_SCORED_SAMPLES, 100_000))  # samples per evaluation
    # samples the finished generator is scored on, beside the real data's numbers (metrics.json), 0 = off;
    # 10,000 is the convention the metrics are compared at (Stacked MNIST's papers use 26,000)
    final_eval_samples: int = field(default=10_000, metadata=_range(0, 100_000))
    tensorboard: bool = False  # also log for TensorBoard into RUN/tensorboard/ (pip install "mnistgan[tensorboard]")


@dataclass
class PerformanceConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where measured faster (devices.resolve_precision)
    cuda_graphs: bool = True  # capture whole training steps as CUDA graphs (CUDA only)
    steps_per_graph: int = field(default=8, metadata=_range(1, 1024))  # training steps per graph replay
    channels_last: bool = True  # NHWC memory format for conv models
    compile: bool = False  # torch.compile the networks (measured: see README)
    threads: int = field(default=0, metadata=_range(0, 1024))  # CPU threads, 0 = PyTorch's default


@dataclass
class Config:
    """The whole configuration of a run; ``config.toml`` in a run directory is this, resolved."""

    preset: str = ""  # the preset this config started from
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def replace(self, overrides: dict[str, Any]) -> "Config":
        """A copy with ``{"section.key": value}`` overrides applied and validated."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            section, key = _split_key(dotted)
            if section is None:
                data[key] = value
            else:
                data[section][key] = value
        return config_from_dict(data)


TOP_LEVEL_KEYS = ("preset", "description")
SECTION_TYPES = {name: kind for name, kind in get_type_hints(Config).items() if name not in TOP_LEVEL_KEYS}


def _split_key(dotted: str) -> tuple[str | None, str]:
    if dotted in TOP_LEVEL_KEYS:
        return None, dotted
    section, _, key = dotted.partition(".")
    if section not in SECTION_TYPES or not key:
        raise UserError(f"unknown config key {dotted!r}; keys look like section.key with section one of {', '.join(SECTION_TYPES)}")
    names = [f.name for f in dataclasses.fields(SECTION_TYPES[section])]
    if key not in names:
        close = [n for n in names if key.replace("-", "_") == n or key in n or n in key]
        hint = f" (did you mean {section}.{close[0]}?)" if close else f"; {section} has: {', '.join(names)}"
        raise UserError(f"unknown config key {dotted!r}{hint}")
    return section, key


def _check_value(dotted: str, value: Any, annotation: Any, metadata: dict) -> Any:
    """Return ``value`` converted to ``annotation`` or raise a UserError naming ``dotted``."""
    origin = get_origin(annotation)
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices:
            raise UserError(f"{dotted} = {value!r} is not allowed; choose one of {', '.join(map(str, choices))}")
        return value
    if origin is list:
        (item_type,) = get_args(annotation)
        if not isinstance(value, (list, tuple)) or not value:
            raise UserError(f"{dotted} must be a non-empty list, e.g. [256, 512]; got {value!r}")
        items = [_check_value(f"{dotted}[{i}]", v, item_type, {}) for i, v in enumerate(value)]
        if item_type is int and any(v < 1 for v in items):
            raise UserError(f"{dotted} must hold positive integers; got {value!r}")
        return items
    if annotation is bool:
        if not isinstance(value, bool):
            raise UserError(f"{dotted} must be true or false; got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{dotted} must be an integer; got {value!r}")
    elif annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise UserError(f"{dotted} must be a number; got {value!r}")
        value = float(value)
    elif annotation is str:
        if not isinstance(value, str):
            raise UserError(f"{dotted} must be a string; got {value!r}")
        return value
    low, high = metadata.get("low"), metadata.get("high")
    if low is not None and (value < low or (metadata.get("low_open") and value == low)):
        relation = ">" if metadata.get("low_open") else ">="
        raise UserError(f"{dotted} = {value} is out of range; it must be {relation} {low}")
    if high is not None and value > high:
        raise UserError(f"{dotted} = {value} is out of range; it must be <= {high}")
    return value


def config_from_dict(data: dict) -> Config:
    """Build and validate a Config from nested ``{section: {key: value}}`` data."""
    unknown = set(data) - set(SECTION_TYPES) - set(TOP_LEVEL_KEYS)
    if unknown:
        raise UserError(f"unknown config section(s) {', '.join(sorted(unknown))}; sections are {', '.join(SECTION_TYPES)}")
    sections = {}
    for section, section_type in SECTION_TYPES.items():
        given = data.get(section, {})
        if not isinstance(given, dict):
            raise UserError(f"config section {section!r} must be a table")
        hints = get_type_hints(section_type)
        values = {}
        for key, value in given.items():
            _split_key(f"{section}.{key}")  # unknown key -> error with a hint
            meta = next(f.metadata for f in dataclasses.fields(section_type) if f.name == key)
            values[key] = _check_value(f"{section}.{key}", value, hints[key], meta)
        sections[section] = section_type(**values)
    config = Config(preset=str(data.get("preset", "")), description=str(data.get("description", "")), **sections)
    _check_consistency(config)
    return config


def _check_consistency(config: Config) -> None:
    """Rules that span several keys."""
    model, train = config.model, config.train
    if model.channels not in (1, 3) or config.data.channels not in (0, 1, 3):
        raise UserError("model.channels and data.channels are 1 (grey) or 3 (colour); data.channels 0 keeps the files' own")
    if model.architecture == "resnet":
        if not (1 <= len(model.generator_widths) <= 3 and 1 <= len(model.discriminator_widths) <= 3):
            raise UserError("resnet networks have one width per resolution, 7x7 -> 14x14 -> 28x28: 1 to 3 "
                            "model.generator_widths and model.discriminator_widths")
        if model.init != "pytorch" or model.generator_batchnorm or model.discriminator_batchnorm:
            raise UserError("resnet networks keep PyTorch's initialisation (their last convs start at zero) and no "
                            "BatchNorm: set model.init = \"pytorch\", model.generator_batchnorm = false")
    if model.architecture == "dcgan":
        if len(model.generator_strides) != len(model.generator_widths):
            raise UserError(
                "model.generator_strides needs one stride per transposed conv: as many as model.generator_widths "
                f"({len(model.generator_widths)}), the last for the output layer; got {len(model.generator_strides)}"
            )
        if 1 in model.generator_strides and model.kernel_size % 2 == 0:
            raise UserError("a stride-1 transposed conv keeps the size only with an odd model.kernel_size")
        if model.kernel_size < max(model.generator_strides):
            raise UserError("model.kernel_size must be at least the largest generator stride")
        from .models.dcgan import discriminator_size, generator_sizes, transposed_padding  # the networks' own arithmetic

        sizes = generator_sizes(model.generator_strides)
        for stride, size_in, size_out in zip(model.generator_strides, sizes, sizes[1:]):
            if transposed_padding(model.kernel_size, stride, size_in, size_out) is None:
                raise UserError(f"model.generator_strides {model.generator_strides} with model.kernel_size {model.kernel_size} "
                                f"cannot grow {size_in}x{size_in} into {size_out}x{size_out} on the way to 28x28; "
                                "use strides of 1 and 2 with an odd kernel, e.g. [1, 2, 2]")
        if discriminator_size(model.kernel_size, len(model.discriminator_widths)) < 1:
            raise UserError(f"{len(model.discriminator_widths)} stride-2 convs of kernel {model.kernel_size} shrink 28x28 "
                            "to nothing: use fewer model.discriminator_widths")
    if model.pack > 1:
        if model.conditional:
            raise UserError("model.pack > 1 packs unconditional samples: a packed score has no single label; "
                            "set model.conditional = false or model.pack = 1")
        if train.batch_size % model.pack:
            raise UserError(f"train.batch_size {train.batch_size} must be a multiple of model.pack {model.pack}: "
                            "D scores the batch in packs")
    if 0 < train.final_eval_samples < MIN_SCORED_SAMPLES:
        raise UserError(f"train.final_eval_samples = {train.final_eval_samples} is too few to score; use at least "
                        f"{MIN_SCORED_SAMPLES} (10000 is the convention), or 0 for no final evaluation")
    if train.ema_rampup and not train.ema_decay:
        raise UserError("train.ema_rampup shortens the EMA of G, which is off: set train.ema_decay (its longest "
                        "decay, e.g. 0.999), or leave train.ema_rampup at 0")
    if train.update == "simultaneous" and (train.d_steps != 1 or train.g_steps != 1):
        raise UserError("train.d_steps or train.g_steps > 1 needs train.update = 'alternating'")
    loss = config.loss
    if loss.penalty_interval > 1 and loss.r1_gamma == 0 and loss.r2_gamma == 0:
        raise UserError(f"loss.penalty_interval = {loss.penalty_interval} spaces out R1 and R2, which are off: "
                        "set loss.r1_gamma or loss.r2_gamma, or leave loss.penalty_interval at 1")
    if loss.adversarial == "wasserstein-gp" and model.discriminator_batchnorm:
        raise UserError("wasserstein-gp's gradient penalty is per sample: turn off model.discriminator_batchnorm")
    penalties = [name for name, on in (("loss.r1_gamma", loss.r1_gamma > 0), ("loss.r2_gamma", loss.r2_gamma > 0),
                                       ("wasserstein-gp's loss.gp_lambda",
                                        loss.adversarial == "wasserstein-gp" and loss.gp_lambda > 0)) if on]
    if config.performance.compile and penalties:
        # A gradient penalty backpropagates through D's input gradient: a double backward, which
        # torch.compile's autograd refuses at the first penalised step.
        raise UserError(f"performance.compile cannot train with gradient penalties ({', '.join(penalties)}): torch.compile "
                        "does not support their double backward; set performance.compile = false")


def key_field(dotted: str) -> tuple[Any, dict]:
    """The type annotation and range metadata of a config key such as ``train.epochs``."""
    section, key = _split_key(dotted)
    section_type = SECTION_TYPES[section]
    field_ = next(f for f in dataclasses.fields(section_type) if f.name == key)
    return get_type_hints(section_type)[key], dict(field_.metadata)


def shortcut_overrides(shortcuts: dict[str, Any]) -> dict[str, Any]:
    """``{"lr": 1e-3}`` -> ``{"optim.generator_lr": 1e-3, "optim.discriminator_lr": 1e-3}``; None values are skipped."""
    overrides = {}
    for name, value in shortcuts.items():
        if name not in SHORTCUTS:
            raise TypeError(f"unknown option {name!r}; the shortcuts are {', '.join(SHORTCUTS)}")
        if value is not None:
            overrides.update({key: value for key in SHORTCUTS[name][0]})
    return overrides


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set key=value`` as a TOML value; a bare word is a string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """``["train.epochs=5", ...]`` -> ``{"train.epochs": 5, ...}``; the keys are checked."""
    overrides = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {assignment!r} is not of the form section.key=value")
        _split_key(key.strip())
        overrides[key.strip()] = parse_value(text.strip())
    return overrides


def preset_names() -> list[str]:
    """The shipped presets: ``presets/NAME.toml`` files whose NAME is letters, digits, ``-`` and ``_``."""
    return sorted(
        p.stem for p in PRESET_DIR.glob("*.toml")
        if p.is_file() and p.stem[:1].isalnum() and all(c.isalnum() or c in "-_" for c in p.stem)
    )


def load_preset(name: str) -> Config:
    """The Config of a named preset (its TOML over the defaults).

    Only the names ``preset_names()`` lists are accepted: an empty name or one with a slash or a
    dot is an error, never a file read from elsewhere (a user's own file: ``load_preset_file``).
    """
    names = preset_names()
    if name not in names:
        choices = f"choose one of: {', '.join(names)} (see `mnistgan presets`)"
        if not isinstance(name, str) or not name.strip():
            raise UserError(f"the preset name is empty; {choices}")
        if any(mark in name for mark in "/\\."):
            stem = name[: -len(".toml")] if name.endswith(".toml") else None
            hint = f" (did you mean {stem!r}?)" if stem in names else ""
            raise UserError(f"unknown preset {name!r}: a preset is a name, not a path{hint}; {choices}")
        raise UserError(f"unknown preset {name!r}; {choices}")
    config = load_toml(PRESET_DIR / f"{name}.toml")
    config.preset = name
    return config


def load_preset_file(path: str | Path) -> Config:
    """A preset of the user's own: a TOML file of config values over the defaults, as the shipped presets are.

    ``config.preset`` is the file's name without ``.toml``. A missing or unreadable file, one that
    is not UTF-8 TOML, an unknown key or a bad value is a one-line ``UserError`` naming the file.
    """
    limit = 2**20  # a preset is a few hundred bytes; this is a data file given by mistake
    path = Path(path).expanduser()
    where = f"preset file {path}"
    if path.is_dir():
        raise UserError(f"{where} is a folder; give a TOML file of config values")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
    except FileNotFoundError:
        raise UserError(f"{where} does not exist; give the path of a TOML file of config values") from None
    except OSError as error:
        raise UserError(f"{where} cannot be read ({error.strerror or error})") from None
    if len(raw) > limit:
        raise UserError(f"{where} is too large for a preset (over 1 MiB); give a TOML file of config values")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{where} is not a text file (not UTF-8); give a TOML file of config values") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{where} is not valid TOML ({error}); fix the file") from None
    try:
        config = config_from_dict(data)
    except UserError as error:
        raise UserError(f"{where}: {error}") from None
    config.preset = path.stem
    return config


def load_toml(path: Path, stored: bool = False) -> Config:
    """A config from a TOML file: a user's (partial, over the defaults) or, with ``stored``, a run's."""
    try:
        data = tomllib.loads(Path(path).read_bytes().decode("utf-8"))  # TOML is UTF-8, whatever the locale
    except UnicodeDecodeError:
        raise UserError(f"{path}: cannot read it as TOML (not UTF-8 text); save it as UTF-8 or restore it from a copy") from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise UserError(f"{path}: cannot read it as TOML ({error})") from None
    return stored_config_from_dict(data) if stored else config_from_dict(data)


# Keys added after runs were first written, with the value those runs behaved as. A stored config
# (a run's config.toml, a checkpoint's or a generator file's) holds every key of its time, so a
# missing one means the run predates it.
BEHAVIOUR_BEFORE_KEY = {"model.feature_order": "chw"}


def stored_config_from_dict(data: dict) -> Config:
    """The config a run was written with (see ``BEHAVIOUR_BEFORE_KEY``)."""
    data = {name: dict(value) if isinstance(value, dict) else value for name, value in data.items()}
    for dotted, value in BEHAVIOUR_BEFORE_KEY.items():
        section, key = dotted.split(".")
        if isinstance(data.get(section), dict):
            data[section].setdefault(key, value)
    return config_from_dict(data)
