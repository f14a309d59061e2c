"""Where and how training computes: the device, the precision, and the process-wide backend flags.

``performance.precision = "auto"`` on the CPU is decided by measurement (``choose_precision``): a
short probe times this run's own networks in fp32 and in bf16 autocast, and the answer is cached
per CPU, torch version, thread count and network shape in the user cache (``precision.json``
beside the MNIST cache). CPU flags alone do not say which is faster (docs/speed.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .config import Config
from .errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N`` as an indexed torch device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu" and device.index:
        raise UserError(f"device {name}: the CPU takes no index; use cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {name} is not supported; use auto, cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name} asked for but no CUDA GPU is visible; use cpu or auto")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise UserError(f"device {name} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
        device = torch.device("cuda", index)
    return device


def uses_channels_last(config: Config) -> bool:
    """Whether the networks and the real batches are kept channels-last: conv nets, when the setting is on."""
    return config.performance.channels_last and config.model.architecture != "mlp"


# -- the CPU ---------------------------------------------------------------------------------------

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")  # those that bear on bf16 speed


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX); without them oneDNN
    emulates bf16, far slower than fp32. Having them does not make bf16 faster (choose_precision)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def cpu_description() -> dict:
    """This CPU as the precision cache and the benchmarks name it: model name, family, model, the
    flags of CPU_FLAGS it has (from /proc/cpuinfo where there is one), native bf16, torch's threads."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    break  # the first processor's block describes them all
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    present = set(fields.get("flags", "").split())
    return {
        "model_name": fields.get("model name") or platform.processor() or platform.machine() or "unknown",
        "family": fields.get("cpu family", ""),
        "model": fields.get("model", ""),
        "flags": [flag for flag in CPU_FLAGS if flag in present],
        "native_bf16": cpu_computes_bf16(),
        "threads": torch.get_num_threads(),
    }


def describe_cpu(cpu: dict | None = None) -> str:
    """One line: ``AMD EPYC (family 25, model 1), flags avx2, no native bf16, 2 threads``."""
    cpu = cpu or cpu_description()
    where = f" (family {cpu['family']}, model {cpu['model']})" if cpu["family"] else ""
    return (f"{cpu['model_name']}{where}, flags {' '.join(cpu['flags']) or 'none of ' + '/'.join(CPU_FLAGS)}, "
            f"{'native' if cpu['native_bf16'] else 'no native'} bf16, {cpu['threads']} threads")


# -- the precision ---------------------------------------------------------------------------------

PROBE_SECONDS = 0.75  # the probe's timed rounds stop once this much has passed (after PROBE_MIN_ROUNDS)
PROBE_MIN_ROUNDS = 3
PROBE_MAX_ROUNDS = 25
PROBE_DEADLINE = 2.0  # no round starts this long after the probe began (warm-up included), but there is always one
BF16_MARGIN = 0.05  # bf16 only when its median step is at least this much faster: on a tie, fp32's accuracy wins
AGREEMENT = 0.75  # a choice is cached only when this share of the rounds agrees with it (else the next run probes again)
CACHE_VERSION = 1


def precision_cache_path() -> Path:
    """The per-user file of measured choices: ``precision.json`` beside the MNIST cache
    (``~/.cache/mnistgan/precision.json`` unless $MNISTGAN_CACHE_DIR or $XDG_CACHE_HOME say otherwise)."""
    from .data import cache_dir
    return cache_dir().parent / "precision.json"


def measure_step_seconds(config: Config, precisions: list[str]) -> dict[str, list[float]]:
    """Seconds of one probe step in each precision on the CPU, one per round: copies of this config's
    G and D (built here, never the run's, in train mode), a batch of ``train.batch_size``: G forward,
    D forward on the generated images, the backward of both networks. One warm-up step each (oneDNN
    builds its kernels for these shapes), then rounds of one step per precision in turn, the order
    alternating, so that a machine whose speed drifts slows both alike; PROBE_MIN_ROUNDS to
    PROBE_MAX_ROUNDS rounds, PROBE_SECONDS in all, and no round starts PROBE_DEADLINE after the
    probe began (big networks on a slow CPU get fewer, but always one). Torch's global RNG is
    restored afterwards."""
    from .models import build_discriminator, build_generator
    from .sampling import draw_inputs

    model, batch = config.model, config.train.batch_size
    times: dict[str, list[float]] = {precision: [] for precision in precisions}
    began = time.perf_counter()
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(0)
        generator, discriminator = build_generator(model).train(), build_discriminator(model).train()
        if uses_channels_last(config):
            generator.to(memory_format=torch.channels_last)
            discriminator.to(memory_format=torch.channels_last)
        z, labels = draw_inputs(model, batch)

        def step(precision: str) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=False):
                scores = discriminator(generator(z, labels), labels).float()
            F.softplus(-scores).mean().backward()  # G's non-saturating loss: gradients through D into G
            generator.zero_grad(set_to_none=True)
            discriminator.zero_grad(set_to_none=True)

        for precision in precisions:
            step(precision)
        start = time.perf_counter()
        rounds = 0
        while rounds == 0 or (rounds < PROBE_MAX_ROUNDS and time.perf_counter() - began < PROBE_DEADLINE
                              and (rounds < PROBE_MIN_ROUNDS or time.perf_counter() - start < PROBE_SECONDS)):
            for precision in (precisions if rounds % 2 == 0 else precisions[::-1]):
                step_start = time.perf_counter()
                step(precision)
                times[precision].append(time.perf_counter() - step_start)
            rounds += 1
    return times


def _cache_key(config: Config, cpu: dict) -> str:
    """Which measurement answers this run: the CPU, torch, the threads and the networks' shape."""
    identity = {
        "cpu": {key: cpu[key] for key in ("model_name", "family", "model", "flags", "native_bf16", "threads")},
        "torch": torch.__version__,
        "model": dataclasses.asdict(config.model),
        "batch_size": config.train.batch_size,
        "channels_last": uses_channels_last(config),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def _read_cache(path: Path) -> dict:
    """The cache's entries; {} for a missing, unreadable or damaged file (the probe runs again)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: bad JSON and bad UTF-8 alike
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _valid_entry(entry) -> bool:
    return isinstance(entry, dict) and entry.get("precision") in ("fp32", "bf16") and isinstance(entry.get("reason"), str)


def _write_cache(path: Path, entries: dict) -> None:
    """Atomically; a cache that cannot be written costs the next run a probe, nothing else."""
    from .files import write_text_atomically
    try:
        write_text_atomically(path, json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass


def choose_precision(config: Config, device: torch.device,
                     timer: Callable[[Config, list[str]], dict[str, list[float]]] | None = None,
                     cache_path: Path | None = None) -> tuple[str, str]:
    """The precision to train in and why: ``("fp32", "measured 12.1 ms fp32 vs 17.9 ms bf16 per probe step")``.

    A forced ``performance.precision`` (fp32 or bf16) is kept. "auto" for the relativistic and
    wasserstein-gp losses without a drift term or with labels, and for the relativistic loss with
    R1/R2 spaced out: full fp32 (``needs_full_fp32``).
    Otherwise "auto" on CUDA: bf16 for the conv nets, fp32 (with TF32) for the MLPs, whose matrix
    products at batch 64 are too small for bf16 to pay for its casts. "auto" on the CPU: fp32
    without native bf16 (emulated bf16 is far slower; no probe runs); with it, whichever a probe of
    this run's networks measures faster (bf16 only when ``BF16_MARGIN`` faster), cached in
    ``cache_path`` (default ``precision_cache_path()``).
    ``timer(config, precisions)`` returns each precision's seconds per step, one per round, rounds
    paired by position (default ``measure_step_seconds``); the choice is cached only when there are
    at least ``PROBE_MIN_ROUNDS`` rounds and ``AGREEMENT`` of them agree with it.
    """
    precision = config.performance.precision
    if precision != "auto":
        return precision, "set by performance.precision" + bf16_caution(config, precision)
    if needs_full_fp32(config):
        return "fp32", f"auto: full fp32, no TF32, as {full_fp32_cause(config)}"
    if device.type == "cuda":
        if config.model.architecture != "mlp":
            return "bf16", "auto on CUDA for convolutional networks"
        return "fp32", "auto on CUDA for fully connected networks, with TF32"
    if not cpu_computes_bf16():
        return "fp32", "no native bf16 on this CPU"  # neither AVX512-BF16 nor AMX: bf16 would be emulated

    cpu = cpu_description()
    path = precision_cache_path() if cache_path is None else Path(cache_path)
    key = _cache_key(config, cpu)
    entries = _read_cache(path)
    entry = entries.get(key)
    if _valid_entry(entry):
        return entry["precision"], f"cached: {entry['reason']}"

    began = time.perf_counter()
    rounds = (timer or measure_step_seconds)(config, ["fp32", "bf16"])
    probe_seconds = time.perf_counter() - began
    fp32, bf16 = statistics.median(rounds["fp32"]), statistics.median(rounds["bf16"])
    choice = "bf16" if bf16 < fp32 * (1 - BF16_MARGIN) else "fp32"
    agreeing = sum((b < f * (1 - BF16_MARGIN)) == (choice == "bf16") for f, b in zip(rounds["fp32"], rounds["bf16"]))
    paired = min(len(rounds["fp32"]), len(rounds["bf16"]))
    first, second = (bf16, fp32) if choice == "bf16" else (fp32, bf16)
    other = "fp32" if choice == "bf16" else "bf16"
    reason = f"measured {first * 1e3:.1f} ms {choice} vs {second * 1e3:.1f} ms {other} per probe step"
    # Not cached where the next run may measure otherwise: the rounds disagree (a busy machine), or too few
    # to tell (big networks, or a machine so busy that the probe's deadline came after a round or two).
    if paired < PROBE_MIN_ROUNDS:
        return choice, f"{reason}; {paired} round{'s' if paired > 1 else ''} only, not cached"
    if agreeing < AGREEMENT * paired:
        return choice, f"{reason}; the rounds disagree, not cached"
    entries = {k: v for k, v in entries.items() if _valid_entry(v)}
    entries[key] = {"precision": choice, "reason": reason, "fp32_ms": round(fp32 * 1e3, 3), "bf16_ms": round(bf16 * 1e3, 3),
                    "rounds": len(rounds["fp32"]), "probe_seconds": round(probe_seconds, 3), "cpu": describe_cpu(cpu),
                    "torch": torch.__version__, "preset": config.preset, "batch_size": config.train.batch_size,
                    "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _write_cache(path, entries)
    return choice, reason


def needs_full_fp32(config: Config) -> bool:
    """Whether this run must compute in full fp32, neither bf16 nor TF32 (``full_fp32_cause`` says why)."""
    return full_fp32_cause(config) is not None


def full_fp32_cause(config: Config) -> str | None:
    """Why this run must compute in full fp32, or None where it need not: the losses blind to the
    common level of D's logits, relativistic and wasserstein-gp, unless a drift term holds that level
    and the run is unconditional, and for the relativistic loss, R1 and R2 on every D update.

    Their D loss sees only differences of D's logits (and the penalties only gradients), so nothing
    holds the logits' common level, and it drifts. Once the level is large, a bf16 logit (an 8-bit
    significand) or a TF32 product (11 bits) rounds away the small real-fake differences that both
    networks learn from: an r3gan run on a GPU in bf16 drifted that far and fell apart
    (docs/baseline-experiments.md, "r3gan on a GPU in bf16"). WGAN-GP is included by the same argument.

    ``loss.drift_penalty`` pulls the level back to 0, where bf16's spacing is far finer than those
    differences: with it r3gan trained about as well in bf16 as in fp32 on a CPU, and r3gan and
    stacked-r3gan held the level in bf16 on a GPU (docs/baseline-experiments.md, "r3gan in bf16 on a CPU" and
    "The drift term in bf16 on a GPU"), so such a run gets what any other run gets.

    With labels, though, r3gan with the drift term trained worse in bf16 than in fp32 on both seeds
    compared, on the training images (FD and recall; docs/baseline-experiments.md, "r3gan for longer, and with
    labels"), with the level held: the cause is not known, so such a run keeps full fp32 too.

    Without labels and with the level held, bf16 still broke r3gan, whose R1 and R2 come on every
    fourth D update at four times the weight: after about 40 epochs its FD climbed from 0.7-0.9 to
    1.3-12 on a GPU and on a CPU (two seeds each), where the same checkpoint resumed in fp32 kept
    improving, and so did one with only the penalised updates in fp32. stacked-r3gan, its penalties
    on every update, trained 60-87 epochs in bf16 without such a break (docs/baseline-experiments.md,
    "bf16 breaks r3gan after 40 epochs"). So the relativistic loss with spaced penalties keeps full fp32.
    """
    loss = config.loss.adversarial
    if loss not in ("relativistic", "wasserstein-gp"):
        return None
    if config.loss.drift_penalty == 0:
        return f"the {loss} loss's logits drift (no loss.drift_penalty holds them) and bf16 can round away their differences"
    if config.model.conditional:
        return f"with labels the {loss} loss trained worse in bf16 than in fp32, its level held (docs/baseline-experiments.md)"
    if loss == "relativistic" and config.loss.penalty_interval > 1:
        return (f"bf16 broke the {loss} loss with R1/R2 spaced out (loss.penalty_interval = {config.loss.penalty_interval}) "
                "after ~40 epochs, its level held (docs/baseline-experiments.md)")
    return None


def bf16_caution(config: Config, precision: str) -> str:
    """What to add to the reason for ``precision`` where bf16 meets a run that ``needs_full_fp32``, else ''."""
    cause = full_fp32_cause(config) if precision == "bf16" else None
    return f", though {cause}" if cause else ""


def resolve_precision(config: Config, device: torch.device) -> str:
    """'auto': bf16 autocast (fp32 master weights) where it is measured faster, else fp32
    (``choose_precision``, which also says why)."""
    return choose_precision(config, device)[0]


def configure_backends(config: Config, device: torch.device, precision: str) -> None:
    """Process-wide CUDA settings for training ``config``: autotuned convolutions, TF32 when precision
    is fp32, unless the run ``needs_full_fp32``."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # conv algorithms chosen during the eager warm-up
        allow_tf32 = precision == "fp32" and not needs_full_fp32(config)  # TF32: 10-bit-mantissa matmul inputs
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32
