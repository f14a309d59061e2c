"""Time to quality: the training minutes until a preset's generator first scores FD <= a target.

    python benchmarks/time_to_quality.py --presets recommended mlp-gan r3gan --fd 2 --minutes 20 --json ttq.json

Each preset trains ``--every`` epochs at a time (default 1). A run resumes bit for bit, so this is the run an
uninterrupted `mnistgan train` makes; after each part, training's own final evaluation scores the
generator it samples from (the EMA copy where the preset keeps one): 10,000 samples against the 10,000
test images. The clock is training's own (the trained seconds a checkpoint records): start-up,
evaluations and the restarts between epochs are not counted. A preset stops at the first epoch whose
FD reaches the target, at the first epoch that ends past ``--minutes`` of training, or at ``--epochs``
(a fixed length, to compare runs epoch for epoch). Every preset
runs on the same device and thread count; the table names the CPU. Running the same command again
with the same ``--out`` continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mnistgan
from mnistgan.devices import cpu_description, describe_cpu, resolve_device

PRESETS = ["recommended", "mlp-gan", "r3gan"]
SAMPLES = 10_000  # the evaluator's standard count: FD at fewer samples reads higher


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--fd", type=float, default=2.0, help="the FD to reach (default 2)")
    parser.add_argument("--minutes", type=float, default=20.0, help="training minutes each preset may use (default 20)")
    parser.add_argument("--every", type=int, default=1, help="epochs between evaluations (default 1)")
    parser.add_argument("--epochs", type=int, help="stop at this epoch even if neither the FD nor the minutes are reached")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config override for every preset (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("runs/time-to-quality"), help="where the runs go")
    parser.add_argument("--json", type=Path, help="write every epoch's scores here")
    args = parser.parse_args()

    device = resolve_device(args.device)
    machine = describe_cpu(cpu_description()) if device.type == "cpu" else str(device)
    if device.type == "cpu" and args.threads:
        machine += f"; each run on {args.threads} of them"
    results = {}
    for preset in args.presets:
        results[preset] = race(preset, args, str(device))
        print_preset(preset, results[preset], args.fd, flush=True)
    print(f"\nTraining minutes to FD <= {args.fd:g} ({SAMPLES:,} samples against the test images), "
          f"at most {args.minutes:g} minutes each, on {machine}")
    for preset, epochs in results.items():
        print_preset(preset, epochs, args.fd)
    print(f"(scored every {args.every} epoch{'s' if args.every > 1 else ''}: the first score at or below the target, "
          "not the exact moment it was crossed)")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "fd_target": args.fd, "minutes": args.minutes,
                                         "samples": SAMPLES, "every": args.every, "overrides": args.overrides,
                                         "runs": results}, indent=2))
    return 0


def race(preset: str, args, device: str) -> list[dict]:
    """Train ``preset`` ``--every`` epochs at a time until its FD reaches the target or its time is up;
    the scores and training minutes so far at each evaluated epoch."""
    out = args.out / f"{preset}-seed{args.seed}"
    log = out.with_suffix(".json")  # the epochs scored so far: a second call continues from them
    epochs = json.loads(log.read_text()) if log.is_file() and (out / "checkpoints" / "last.pt").is_file() else []
    if not epochs and out.exists():
        raise SystemExit(f"{out} exists but {log} does not: remove {out}, or give another --out")
    overrides = [*args.overrides, f"train.final_eval_samples={SAMPLES}"]
    if args.threads:
        overrides.append(f"performance.threads={args.threads}")
    while not epochs or not finished(epochs[-1], args):
        epoch = epochs[-1]["epoch"] + args.every if epochs else args.every
        if not epochs:
            mnistgan.train(preset, epochs=epoch, seed=args.seed, device=device, out=out, overrides=overrides, progress=False)
        else:
            mnistgan.train(resume=out, epochs=epoch, progress=False)
        run = mnistgan.load(out)
        scores = run.metrics  # the final evaluation of this epoch's generator
        if scores.get("epoch") != epoch or scores.get("n") != SAMPLES or "fd" not in scores:
            raise SystemExit(f"{out}/metrics.json does not hold FD of {SAMPLES:,} samples at epoch {epoch}: "
                             f"{preset} needs a dataset the MNIST evaluator scores")
        seconds = run.trained_seconds
        epochs.append({"epoch": epoch, "minutes": round(seconds / 60, 2),
                       **{key: scores[key] for key in ("fd", "precision", "recall", "coverage") if key in scores}})
        log.write_text(json.dumps(epochs, indent=1))
        print(f"  {preset} epoch {epoch}: FD {scores['fd']:.2f} after {epochs[-1]['minutes']:.1f} min", flush=True)
    return epochs


def finished(last: dict, args) -> bool:
    return last["fd"] <= args.fd or last["minutes"] >= args.minutes or (args.epochs is not None and last["epoch"] >= args.epochs)


def print_preset(preset: str, epochs: list[dict], target: float, flush: bool = False) -> None:
    reached = next((row for row in epochs if row["fd"] <= target), None)
    if reached:
        print(f"{preset:<16} FD {reached['fd']:.2f} <= {target:g} after epoch {reached['epoch']}: "
              f"{reached['minutes']:.1f} min (precision {reached['precision']:.3f}, recall {reached['recall']:.3f})", flush=flush)
    else:
        best = min(epochs, key=lambda row: row["fd"])
        print(f"{preset:<16} not reached in {epochs[-1]['minutes']:.1f} min ({epochs[-1]['epoch']} epochs); "
              f"best FD {best['fd']:.2f} at epoch {best['epoch']}", flush=flush)


if __name__ == "__main__":
    sys.exit(main())
