"""Where a training step's time goes: arithmetic (matrix products, convolutions) against the rest.

    python benchmarks/profile_step.py                          # every preset, mnistgan and naive
    python benchmarks/profile_step.py --presets tf-dcgan-tutorial recommended --threads 2 --json out.json
    python benchmarks/profile_step.py --presets r3gan --threads 2   # a preset the naive loop cannot train
    python benchmarks/profile_step.py --presets r3gan --precision bf16   # the step in a precision auto would not choose

For each preset, mnistgan's training step (performance.precision = "auto", as training runs it,
unless ``--precision`` sets it)
and, where it can train the preset, the naive loop (benchmarks/naive.py) are measured in this process:

- the arithmetic of one step, in GFLOP: every matrix product and convolution, forward and
  backward (the double backward of R1 and R2 included), by ``torch.utils.flop_counter``'s formulas;
- the step time, the median of timed steps without the profiler (where R1 and R2 come every k-th
  D update, of timed runs of k steps, divided by k: every figure is a mean over that cycle);
- the share of a profiled step spent inside those operations (``torch.profiler``; nested calls
  counted once), the speed they run at, and that speed against this CPU's peak, measured here as
  the best of a few 2048 x 2048 matrix products in fp32 (and in bf16 where the CPU computes it);
- the operations that take the rest, by their own time;
- the floor: the step if its arithmetic ran at the measured peak and nothing else took time, and
  the speed-up over the naive loop that floor would give. The two loops are timed one after the
  other, so their own ratio drifts with the machine; ``bench_train.py --paired`` measures it.

A step whose arithmetic runs near the peak and takes most of the step cannot get much faster
without doing less arithmetic; the floor says how far that is. The CPU, torch and the thread
count are printed above the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import build_stepper, comparable_presets  # noqa: E402

from mnistgan.config import load_preset  # noqa: E402
from mnistgan.devices import cpu_computes_bf16, cpu_description, describe_cpu  # noqa: E402
from mnistgan.errors import UserError  # noqa: E402

ARITHMETIC = {"aten::mm", "aten::addmm", "aten::bmm", "aten::convolution", "aten::convolution_backward"}
PEAK_SIDE = 2048


def matmul_peak(dtype: torch.dtype, repeats: int = 8) -> float:
    """GFLOP/s of the fastest of ``repeats`` square matrix products of side PEAK_SIDE."""
    a = torch.randn(PEAK_SIDE, PEAK_SIDE).to(dtype)
    b = torch.randn(PEAK_SIDE, PEAK_SIDE).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * PEAK_SIDE**3 / best / 1e9


class FlopCount(TorchDispatchMode):
    """Matrix-product and convolution FLOPs by torch's own formulas, as ``FlopCounterMode`` counts
    them but without its per-module tracking, whose autograd hooks refuse the double backward of R1
    and R2 (``torch.autograd.grad`` of the input)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def step_flops(run, cycle: int) -> float:
    """Matrix-product and convolution FLOPs of one step, forward and backward, the mean over ``cycle`` steps."""
    with FlopCount() as counter:
        run(cycle)
    return counter.total / cycle


def timed_steps(run, steps: int, cycle: int) -> float:
    """Seconds per step: the median of ``steps`` timed runs of ``cycle`` steps each, divided by ``cycle``."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run(cycle)
        times.append((time.perf_counter() - start) / cycle)
    return statistics.median(times)


def profiled_split(run, steps: int) -> tuple[float, float, float, list[tuple[str, float]]]:
    """Per step under the profiler: seconds in all, seconds inside matrix products and convolutions
    (an operation inside another one counted once), seconds in the other operations (their own
    time), and the four of those that take longest."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run(steps)
        total = time.perf_counter() - start
    arithmetic = 0.0
    inside: set[int] = set()  # ids of events within an arithmetic operation
    events = prof.events()
    for event in events:
        parent, nested = event.cpu_parent, False
        while parent is not None:
            if parent.name in ARITHMETIC:
                nested = True
                break
            parent = parent.cpu_parent
        if event.name in ARITHMETIC and not nested:
            arithmetic += event.cpu_time_total / 1e6
        if nested or event.name in ARITHMETIC:
            inside.add(id(event))
    others: dict[str, float] = {}
    for event in events:
        if id(event) not in inside and event.name.startswith("aten::"):
            others[event.name] = others.get(event.name, 0.0) + event.self_cpu_time_total / 1e6
    top = sorted(others.items(), key=lambda item: -item[1])[:4]
    return (total / steps, arithmetic / steps, sum(others.values()) / steps,
            [(name, seconds / steps) for name, seconds in top])


def profile_preset(preset: str, steps: int, peak: dict[str, float], with_naive: bool, setting: str = "auto") -> list[dict]:
    """``setting``: mnistgan's performance.precision (the naive loop is fp32)."""
    results = []
    ours = [f"performance.precision={setting}"]
    variants = (("mnistgan", ours), ("naive", None)) if with_naive else (("mnistgan", ours),)
    for variant, overrides in variants:
        run, config, (precision, reason) = build_stepper(preset, overrides, torch.device("cpu"), "cpu")
        # R1 and R2 every k-th D update: measure whole cycles of k steps (the naive loop has none).
        cycle = config.loss.penalty_interval if overrides is not None else 1
        run(2 * cycle)  # warm-up: oneDNN builds its kernels for these shapes
        flops = step_flops(run, cycle)
        step = timed_steps(run, steps, cycle)
        profiled_step, arithmetic, other_ops, others = profiled_split(run, steps * cycle)
        speed = flops / arithmetic / 1e9 if arithmetic else 0.0
        reference = peak.get(precision, peak["fp32"])  # bf16 forced on a CPU without it: against fp32
        results.append({
            "preset": preset, "variant": variant, "precision": precision, "precision_reason": reason,
            "batch_size": config.train.batch_size, "step_ms": step * 1e3, "gflop_per_step": flops / 1e9,
            "profiled_step_ms": profiled_step * 1e3, "arithmetic_ms": arithmetic * 1e3,
            "arithmetic_share": arithmetic / profiled_step, "arithmetic_gflops": speed,
            # The rest of an unprofiled step: other operations, and what no operation holds (Python,
            # autograd's bookkeeping, dispatch), which the profiler's own cost inflates.
            "other_ops_ms_total": other_ops * 1e3, "outside_ops_ms": max(0.0, step - arithmetic - other_ops) * 1e3,
            "peak_gflops": reference, "share_of_peak": speed / reference, "floor_ms": flops / (reference * 1e9) * 1e3,
            "other_ops_ms": {name: seconds * 1e3 for name, seconds in others},
        })
    if len(results) == 2:
        ours, naive = results
        ours["floor_speedup_over_naive"] = naive["step_ms"] / ours["floor_ms"]
        ours["speedup_over_naive"] = naive["step_ms"] / ours["step_ms"]
    return results


def report(results: list[dict], peak: dict[str, float]) -> None:
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; CPU: {describe_cpu()}")
    print("peak (2048 x 2048 matrix product): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()))
    print(f"{'preset':<18} {'loop':<9} {'prec':<5} {'step ms':>9} {'GFLOP':>8} {'in mm/conv':>10} "
          f"{'GFLOP/s':>8} {'of peak':>7} {'floor ms':>9} {'other ops':>9} {'no op':>6}  longest other ops (ms per step)")
    for r in results:
        rest = ", ".join(f"{name[6:]} {ms:.1f}" for name, ms in r["other_ops_ms"].items())
        print(f"{r['preset']:<18} {r['variant']:<9} {r['precision']:<5} {r['step_ms']:>9.1f} {r['gflop_per_step']:>8.2f} "
              f"{r['arithmetic_share']:>9.0%} {r['arithmetic_gflops']:>8.0f} {r['share_of_peak']:>7.0%} {r['floor_ms']:>9.1f} "
              f"{r['other_ops_ms_total']:>9.1f} {r['outside_ops_ms']:>6.1f}  {rest}")
    # The two loops ran one after the other here, so their ratio drifts with the machine: the measured
    # speed-up is bench_train.py --paired's. The floor says how far any step of this arithmetic could go.
    for r in results:
        if "floor_speedup_over_naive" in r:
            print(f"  {r['preset']}: at the floor {r['floor_speedup_over_naive']:.2f}x the naive loop's step "
                  f"(here {r['speedup_over_naive']:.2f}x, unpaired)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=comparable_presets())
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--steps", type=int, help="steps timed and profiled (default: 60 for MLPs, 4 for conv nets; where R1 "
                        "and R2 come every k-th D update, cycles of k steps)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="mnistgan's step in this precision (default: auto, as training chooses); the naive loop is fp32")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    comparable = comparable_presets()
    configs = {}
    for name in args.presets:
        try:
            configs[name] = load_preset(name)
        except UserError as error:  # an unknown name: load_preset's own line, with the choices
            parser.error(str(error))
        dataset = configs[name].data.dataset
        if dataset != "mnist":
            parser.error(f"{name} trains on {dataset}; the steps measured here train on MNIST")
        if name not in comparable:
            print(f"{name}: the naive loop cannot train it (benchmarks/naive.py), so mnistgan's step alone")
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = {"fp32": matmul_peak(torch.float32)}
    if cpu_computes_bf16():
        peak["bf16"] = matmul_peak(torch.bfloat16)
    results = []
    for preset in args.presets:
        steps = args.steps or (60 if configs[preset].model.architecture == "mlp" else 4)
        results += profile_preset(preset, steps, peak, with_naive=preset in comparable, setting=args.precision)
        if args.json:
            args.json.write_text(json.dumps({"cpu": cpu_description(), "torch": torch.__version__,
                                             "peak_gflops": peak, "results": results}, indent=2))
    report(results, peak)


if __name__ == "__main__":
    main()
