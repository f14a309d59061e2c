"""Mode collapse on Stacked MNIST (1000 modes): our presets beside the published table, at a stated budget.

    python benchmarks/stacked_mnist.py --images 120000 --json stacked.json
    python benchmarks/stacked_mnist.py --presets stacked-dcgan stacked-pacgan --images 60000 --seeds 0 1 2

Every preset trains on the same number of real images (``--images``, a whole number of passes over
the 60,000 training stacks), once per seed; then 26,000 samples of its generator are classified
channel by channel with the shipped MNIST evaluator (metrics/modes.py) and scored by modes covered
and reverse KL to the uniform distribution over the 1000 triples. The table puts our rows under
the published ones, with each row's budget (images, seconds of training, device) and the floor of
26,000 real stacks measured the same way. The published rows come from other networks and far
larger budgets (R3GAN: 10M images on 8 GPUs); read them as the field's reference, not a like-for-like
comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import mnistgan
from mnistgan.datasets import STACKED_TRAIN_IMAGES
from mnistgan.devices import cpu_description, describe_cpu, resolve_device
from mnistgan.metrics.modes import STACKED_SAMPLES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets_budget import write_grids  # noqa: E402

PRESETS = ["stacked-dcgan", "stacked-pacgan", "stacked-r3gan"]
# (model, modes covered, reverse KL, source): Stacked MNIST, 1000 modes, 26,000 samples.
PUBLISHED = [
    ("DCGAN", 99, 3.40, "VEEGAN setup, PacGAN Table 2"),
    ("PacDCGAN2", 1000, 0.06, "PacGAN Table 2, 10 trials"),
    ("WGAN-GP", 959, 0.73, "R3GAN Table 3"),
    ("StyleGAN2", 940, 0.42, "R3GAN Table 3"),
    ("PresGAN", 1000, 0.12, "R3GAN Table 3"),
    ("DDGAN", 1000, 0.071, "R3GAN Table 3"),
    ("MEG", 1000, 0.031, "R3GAN Table 3"),
    ("R3GAN", 1000, 0.029, "R3GAN Table 3; ~20M-parameter nets, 10M images, 8 GPUs"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--images", type=int, default=2 * STACKED_TRAIN_IMAGES,
                        help=f"real images each preset trains on, a multiple of {STACKED_TRAIN_IMAGES:,} (default: 2 passes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per run (0: PyTorch's default)")
    parser.add_argument("--out", type=Path, default=Path("runs/stacked-mnist"), help="where the runs go")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--grids", type=Path, help="write every run's last grid into one PNG here")
    args = parser.parse_args()
    if args.images < STACKED_TRAIN_IMAGES or args.images % STACKED_TRAIN_IMAGES:
        parser.error(f"--images must be a positive multiple of the {STACKED_TRAIN_IMAGES:,} training stacks")
    epochs = args.images // STACKED_TRAIN_IMAGES

    device = resolve_device(args.device)
    machine = describe_cpu(cpu_description()) if device.type == "cpu" else str(device)
    if device.type == "cpu" and args.threads:
        machine += f"; each run on {args.threads} of them"
    floor = mnistgan.evaluate_real(device=str(device), dataset="stacked-mnist")
    rows = []
    for preset in args.presets:
        for seed in args.seeds:
            rows.append(train_and_score(preset, seed, epochs, device, args))
            print_row(rows[-1], flush=True)
    print_table(rows, floor, args.images, machine)
    if args.json:
        args.json.write_text(json.dumps({"images": args.images, "machine": machine, "floor": floor,
                                         "published": [dict(zip(("model", "modes_covered", "reverse_kl", "source"), row)) for row in PUBLISHED],
                                         "runs": rows, "summary": summarise(rows)}, indent=2))
    if args.grids:
        write_grids([(f"{row['preset']} s{row['seed']}", Path(row["run"])) for row in rows], args.grids)
    return 0


def train_and_score(preset: str, seed: int, epochs: int, device, args) -> dict:
    """Train ``preset`` (or finish an interrupted run of it) for ``epochs`` passes and score 26,000 samples."""
    out = args.out / f"{preset}-{epochs}ep-seed{seed}"
    overrides = {"performance.threads": args.threads} if args.threads else {}
    run = mnistgan.load(out) if (out / "config.toml").exists() else None
    scores = finished_scores(run, epochs)  # a finished, scored run is read, not scored again
    if scores is None:
        if run is not None:
            run = mnistgan.train(resume=out, epochs=epochs, progress=False)
        else:
            run = mnistgan.train(preset, epochs=epochs, seed=seed, device=str(device), out=out, overrides=overrides,
                                 progress=False)
        scores = finished_scores(run, epochs) or run.evaluate(n=STACKED_SAMPLES, device=str(device))
    # Training's own clock: the steps only (not start-up or the final scoring of 26,000 samples),
    # and all of them when the run was resumed.
    seconds = run.trained_seconds
    return {"preset": preset, "seed": seed, "images": epochs * STACKED_TRAIN_IMAGES, "train_seconds": round(seconds, 1),
            "run": str(out), "modes_covered": scores["modes_covered"], "reverse_kl": scores["reverse_kl"],
            "channel_confidence": scores["channel_confidence"]}


def finished_scores(run: "mnistgan.Run | None", epochs: int) -> dict | None:
    """The scores training's final evaluation wrote (the stacked presets score 26,000 samples), if it did."""
    result = run.metrics if run is not None and run.paths.metrics_json.is_file() else {}
    return result if result.get("n") == STACKED_SAMPLES and result.get("epoch") == epochs else None


def summarise(rows: list[dict]) -> dict:
    """Per preset: mean and range over seeds."""
    summary = {}
    for preset in dict.fromkeys(row["preset"] for row in rows):
        mine = [row for row in rows if row["preset"] == preset]
        summary[preset] = {key: {"mean": statistics.fmean(row[key] for row in mine), "min": min(row[key] for row in mine),
                                 "max": max(row[key] for row in mine)} for key in ("modes_covered", "reverse_kl", "train_seconds")}
        summary[preset]["seeds"] = len(mine)
    return summary


def print_row(row: dict, flush: bool = False) -> None:
    name = f"{row['preset']} (seed {row['seed']})"
    print(f"{name:<30}{row['modes_covered']:>8}{row['reverse_kl']:>10.3f}  {row['images']:,} images, "
          f"{row['train_seconds']:.0f} s", flush=flush)


def print_table(rows: list[dict], floor: dict, images: int, machine: str) -> None:
    print("\nStacked MNIST, 1000 modes, 26,000 samples per row")
    print(f"{'model':<30}{'modes':>8}{'KL':>10}  budget / source")
    for model, modes, kl, source in PUBLISHED:
        print(f"{model:<30}{modes:>8}{kl:>10.3f}  {source}")
    print(f"{'real stacks (floor)':<30}{floor['modes_covered']:>8}{floor['reverse_kl']:>10.3f}  26,000 real test stacks")
    for row in rows:
        print_row(row)
    for preset, stats in summarise(rows).items():
        if stats["seeds"] > 1:
            modes, kl = stats["modes_covered"], stats["reverse_kl"]
            print(f"{preset + ' (mean)':<30}{modes['mean']:>8.0f}{kl['mean']:>10.3f}  {stats['seeds']} seeds, modes "
                  f"{modes['min']}-{modes['max']}, KL {kl['min']:.3f}-{kl['max']:.3f}")
    print(f"ours: {images:,} training images each, on {machine}")


if __name__ == "__main__":
    sys.exit(main())
