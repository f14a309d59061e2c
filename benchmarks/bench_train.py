"""Training speed: mnistgan's training step against the naive reference loop, same models, same run.

    python benchmarks/bench_train.py                      # every preset, this machine's device
    python benchmarks/bench_train.py --presets tf-dcgan-tutorial mlp-gan --ablation --json out.json
    python benchmarks/bench_train.py --rounds 3                 # interleaved repeats, fastest kept
    python benchmarks/bench_train.py --paired --variants naive mnistgan   # one process, steps in turn

Each (preset, variant) runs in its own process, so peak memory is its own. A variant trains for a
fixed number of steps after warm-up (CUDA graph capture and cuDNN autotuning excluded) and reports
images per second, seconds per epoch (extrapolated to the 60,000 training images), peak memory
and the memory in use after the first and the last timing window (equal: no growth). The table
gives each variant's speed-up over the naive loop measured in the same run.

--paired measures the variants of a preset in one process instead, one step of each in turn, so
that a machine whose speed drifts (a shared CPU) slows every variant alike; it reports median
step times and the median of the per-turn speed-ups over the first variant, without memory.

Every table, and every result in the JSON, names the CPU (model, the flags that bear on bf16:
avx2, avx512f, avx512_bf16, amx_bf16, amx_tile, avx512_fp16) and the thread count, and gives the
precision each variant trained in; for "mnistgan" (performance.precision = "auto") also why auto
chose it (devices.choose_precision: a cached probe on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from naive import NaiveLoop, unsupported  # noqa: E402

from mnistgan.config import load_preset, parse_overrides, preset_names  # noqa: E402
from mnistgan.data import load_mnist  # noqa: E402
from mnistgan.devices import choose_precision, configure_backends, cpu_description, describe_cpu, resolve_device  # noqa: E402
from mnistgan.step import build_training, epoch_order, real_batches_per_step  # noqa: E402

TRAINING_IMAGES = 60_000
# Variants: a name and the config overrides that make it. "naive" is the reference loop.
VARIANTS = {"naive": None, "mnistgan": []}
ABLATIONS = {  # what each speed-up is worth, measured by turning it off (CUDA) or on (CPU)
    "cuda": {"no-graphs": ["performance.cuda_graphs=false"], "fp32": ["performance.precision=\"fp32\""],
             "bf16": ["performance.precision=\"bf16\""],  # the MLPs' default is fp32: this measures the other way
             "no-channels-last": ["performance.channels_last=false"], "1-step-graphs": ["performance.steps_per_graph=1"],
             "compile": ["performance.compile=true"], "chw": ["model.feature_order=\"chw\""]},
    "cpu": {"compile": ["performance.compile=true"], "fp32": ["performance.precision=\"fp32\""],
            "no-channels-last": ["performance.channels_last=false"]},
}


def current_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_stepper(preset: str, overrides: list[str] | None, device: torch.device, device_name: str):
    """A function that trains ``count`` steps of ``preset`` (the naive loop if ``overrides`` is None),
    the preset's config, and the precision with the reason it was chosen."""
    config = load_preset(preset).replace({"performance.device": device_name, **parse_overrides(overrides or [])})
    split = load_mnist("train")
    batch, steps_per_epoch = config.train.batch_size, epoch_steps(config)
    if overrides is None:
        loop = NaiveLoop(config, device, split.images, split.labels)
        return (lambda count: [loop.step() for _ in range(count)]), config, ("fp32", "the naive loop")  # noqa: E731
    images, labels = split.images.to(device), split.labels.to(device)
    precision, reason = choose_precision(config, device)  # as training does: "auto" may probe (or read its cache)
    configure_backends(config, device, precision)  # as training does
    parts = build_training(config, device, images, labels, batch, steps_per_epoch, precision)
    parts.step.order.copy_(epoch_order(0, 1, TRAINING_IMAGES)[: parts.step.order.numel()])
    position = 0  # step within the epoch, tracked on the host as training does

    def run(count):
        nonlocal position
        done = 0
        while done < count:
            if position == steps_per_epoch:  # wrap around: same order again (device-side resets, no sync)
                parts.step.cursor.zero_()
                parts.step.step_index.zero_()
                position = 0
            ran = parts.runner.run(min(count - done, steps_per_epoch - position))
            done, position = done + ran, position + ran

    return run, config, (precision, reason)


def epoch_steps(config) -> int:
    return TRAINING_IMAGES // (config.train.batch_size * real_batches_per_step(config))


def comparable_presets() -> list[str]:
    """The presets whose training the naive loop reproduces (the MNIST reference designs and their kin)."""
    return [name for name in preset_names() if unsupported(load_preset(name)) is None]


def require_comparable(parser: argparse.ArgumentParser, presets: list[str]) -> None:
    """One error line for a preset the naive loop cannot train the same way."""
    for name in presets:
        why = unsupported(load_preset(name))
        if why:
            parser.error(f"the naive loop does not implement {why}, so {name} cannot be compared; choose from "
                         f"{', '.join(comparable_presets())}")


def seconds_per_epoch(step_seconds: float, config) -> float:
    return step_seconds * epoch_steps(config)


def warm_up(run, device: torch.device) -> None:
    run(20 if device.type == "cuda" else 2)  # CUDA: graph capture and cuDNN autotuning happen here


def measure(preset: str, variant: str, overrides: list[str] | None, device_name: str, steps: int, windows: int) -> dict:
    """Train ``windows`` x ``steps`` steps after warm-up; return speed and memory of this process."""
    device = resolve_device(device_name)
    run, config, (precision, reason) = build_stepper(preset, overrides, device, device_name)
    batch = config.train.batch_size
    warm_up(run, device)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, memory = [], []
    for _ in range(windows):
        start = time.perf_counter()
        run(steps)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        memory.append(current_memory(device))
    best = min(seconds)  # the least disturbed window
    return {
        "preset": preset, "variant": variant, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "cpu": cpu_description(), "precision": precision, "precision_reason": reason,
        "batch_size": batch, "steps_timed": steps * windows,
        "images_per_second": steps * batch * real_batches_per_step(config) / best,
        "seconds_per_epoch": seconds_per_epoch(best / steps, config),
        "window_seconds": seconds,
        "peak_memory_mb": peak_memory(device) / 2**20,
        "memory_first_window_mb": memory[0] / 2**20, "memory_last_window_mb": memory[-1] / 2**20,
    }


def measure_paired(preset: str, variants: dict, device_name: str, steps: int) -> list[dict]:
    """All ``variants`` of ``preset`` in this one process, one step each in turn (the order rotating),
    ``steps`` times: a machine whose speed drifts slows them alike. Median step time of each; the
    speed-up is the median over turns of the first variant's step time over this one's."""
    device = resolve_device(device_name)
    steppers = {name: build_stepper(preset, overrides, device, device_name) for name, overrides in variants.items()}
    for run, _, _ in steppers.values():
        warm_up(run, device)
    times: dict[str, list[float]] = {name: [] for name in steppers}
    names = list(steppers)
    for turn in range(steps):
        for name in names[turn % len(names):] + names[: turn % len(names)]:
            synchronize(device)
            start = time.perf_counter()
            steppers[name][0](1)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    first = names[0]
    results = []
    for name in names:
        _, config, (precision, reason) = steppers[name]
        ratios = [a / b for a, b in zip(times[first], times[name])]
        results.append({"preset": preset, "variant": name, "paired_with": first, "steps_timed": steps,
                        "threads": torch.get_num_threads(), "cpu": cpu_description(),
                        "precision": precision, "precision_reason": reason, "batch_size": config.train.batch_size,
                        "seconds_per_epoch": seconds_per_epoch(statistics.median(times[name]), config),
                        "speedup_over_first": statistics.median(ratios),
                        "speedup_quartiles": statistics.quantiles(ratios, n=4)[::2] if len(ratios) > 1 else ratios * 2})
    return results


PAIRED_STEPS = {"cuda": {"mlp": 400, "dcgan": 100}, "cpu": {"mlp": 300, "dcgan": 12}}  # turns per preset


def default_steps(preset: str, variant: str, device_type: str) -> int:
    """Enough steps for a window of a second or more, not minutes."""
    mlp = load_preset(preset).model.architecture == "mlp"
    if device_type == "cuda":
        if variant == "naive":
            return 400 if mlp else 100
        return 2000 if mlp else 300
    return 150 if mlp else 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=comparable_presets())
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, help="steps per timing window (default: by device and architecture)")
    parser.add_argument("--windows", type=int, default=3, help="timing windows; the fastest is reported")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every (preset, variant) this many times, interleaved, and keep each one's fastest "
                             "(on a machine whose speed drifts, naive and mnistgan then see the same drift)")
    parser.add_argument("--ablation", action="store_true", help="also measure with each speed-up switched off (CUDA) or on (CPU)")
    parser.add_argument("--variants", nargs="+", help="measure only these variants (naive, mnistgan, or ablation names)")
    parser.add_argument("--paired", action="store_true",
                        help="run the variants of a preset in one process, one step each in turn, and give each one's "
                             "speed-up over the first variant (robust to drift; no memory figures)")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--single", nargs=2, metavar=("PRESET", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    require_comparable(parser, args.presets)
    device_type = resolve_device(args.device).type

    if args.single:  # child process: one measurement, JSON on the last line of stdout
        preset, variant = args.single
        steps = args.steps or default_steps(preset, variant, device_type)
        overrides = None if variant == "naive" else (args.overrides or [])
        print(json.dumps(measure(preset, variant, overrides, args.device, steps, args.windows)))
        return

    variants = dict(VARIANTS)
    if args.ablation or args.variants:
        variants.update(ABLATIONS[device_type])
    if args.variants:
        unknown = [name for name in args.variants if name not in variants]
        if unknown:
            parser.error(f"no variant {', '.join(unknown)} on {device_type}; choose from {', '.join(variants)}")
        variants = {name: variants[name] for name in args.variants}
    if args.paired:
        results = []
        for preset in args.presets:
            steps = args.steps or PAIRED_STEPS[device_type][load_preset(preset).model.architecture]
            results += measure_paired(preset, variants, args.device, steps)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
        report_paired(results, device_type)
        return
    best: dict[tuple[str, str], dict] = {}  # (preset, variant) -> fastest result over the rounds
    round_seconds: dict[tuple[str, str], list[float]] = {}  # (preset, variant) -> s/epoch of each round
    for round_index in range(args.rounds):
        for preset in args.presets:
            for variant, overrides in variants.items():
                result = measure_in_child(args, preset, variant, overrides)
                if result is None:
                    continue
                key = (preset, variant)
                round_seconds.setdefault(key, []).append(result["seconds_per_epoch"])
                if key not in best or result["seconds_per_epoch"] < best[key]["seconds_per_epoch"]:
                    best[key] = result
                best[key]["round_seconds_per_epoch"] = round_seconds[key]
                if args.json:  # after every measurement, so that an interrupted run keeps what it measured
                    args.json.write_text(json.dumps(list(best.values()), indent=2))
                print(f"  round {round_index + 1}: {preset:<18} {variant:<16} {result['seconds_per_epoch']:9.3f} s/epoch",
                      file=sys.stderr, flush=True)
    results = list(best.values())
    report(results, device_type, args.json)


def print_cpu(results: list[dict]) -> None:
    """Above a table: the CPU it ran on (as the measuring process saw it), its bf16 flags and threads."""
    cpu = results[0]["cpu"] if results and "cpu" in results[0] else cpu_description()
    print(f"CPU: {describe_cpu(cpu)}")


def print_precisions(results: list[dict]) -> None:
    """Under a table: the precision "auto" chose for the mnistgan variant, and why."""
    for r in results:
        if r["variant"] == "mnistgan":
            print(f"  {r['preset']}: mnistgan trained in {r['precision']} ({r['precision_reason']})")


def report_paired(results: list[dict], device_type: str) -> None:
    print(f"\ndevice: {device_type}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; steps in turn, medians")
    print_cpu(results)
    print(f"{'preset':<18} {'variant':<16} {'batch':>5} {'s/epoch':>9} {'speed-up':>9} {'quartiles':>11}")
    for r in results:
        low, high = r["speedup_quartiles"]
        print(f"{r['preset']:<18} {r['variant']:<16} {r['batch_size']:>5} {r['seconds_per_epoch']:>9.3f} "
              f"{r['speedup_over_first']:>8.2f}x {low:>5.2f}-{high:<5.2f}")
    print_precisions(results)


def measure_in_child(args, preset: str, variant: str, overrides: list[str] | None) -> dict | None:
    """One measurement in a fresh process (its own peak memory); None if it failed."""
    command = [sys.executable, __file__, "--single", preset, variant, "--device", args.device,
               "--windows", str(args.windows)] + (["--steps", str(args.steps)] if args.steps else [])
    if overrides:
        command += ["--overrides", *overrides]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        print(f"{preset} / {variant}: failed\n{completed.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(completed.stdout.strip().splitlines()[-1])


def report(results: list[dict], device_type: str, json_path: Path | None) -> None:
    """The table (speed-ups against the naive loop of the same preset); the JSON gains them too."""
    naive = {r["preset"]: r for r in results if r["variant"] == "naive"}
    for result in results:
        baseline = naive.get(result["preset"])
        result["speedup_over_naive"] = baseline["seconds_per_epoch"] / result["seconds_per_epoch"] if baseline else None
        # Each round's own ratio: how far the machine's drift moves the answer.
        result["round_speedups"] = ([b / s for b, s in zip(baseline["round_seconds_per_epoch"], result["round_seconds_per_epoch"])]
                                    if baseline else [])
    device = results[0]["device"] if results else device_type
    print(f"\ndevice: {device}, torch {torch.__version__}, {results[0]['threads'] if results else '?'} CPU threads")
    print_cpu(results)
    print(f"{'preset':<18} {'variant':<16} {'batch':>5} {'img/s':>10} {'s/epoch':>9} {'vs naive':>8} {'per round':>11} "
          f"{'peak MB':>9} {'MB 1st/last window':>19}")
    for r in results:
        ratio = f"{r['speedup_over_naive']:.2f}x" if r["speedup_over_naive"] else "-"
        rounds = r["round_speedups"]
        spread = f"{min(rounds):.2f}-{max(rounds):.2f}" if len(rounds) > 1 else "-"
        print(f"{r['preset']:<18} {r['variant']:<16} {r['batch_size']:>5} {r['images_per_second']:>10,.0f} {r['seconds_per_epoch']:>9.3f} "
              f"{ratio:>8} {spread:>11} {r['peak_memory_mb']:>9.0f} {r['memory_first_window_mb']:>9.0f}/{r['memory_last_window_mb']:<9.0f}")
    print_precisions(results)
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
