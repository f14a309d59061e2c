"""Quality on another dataset at a fixed budget: every preset trained on the same number of images.

    python benchmarks/datasets_budget.py --dataset fashion-mnist --epochs 1 --json fashion.json --grids docs/fashion-mnist.png
    python benchmarks/datasets_budget.py --dataset stacked-mnist --presets mlp-gan --epochs 2

Each preset trains for ``--epochs`` passes over the dataset's training images (the same images for
every preset, so the same budget in images seen), then 10,000 samples are scored with the dataset's
evaluator against its test images (Stacked MNIST: 26,000 samples, modes covered and reverse KL),
beside the floor of real training images measured the same way. Prints a table with the device,
the CPU and the seconds each preset trained; writes JSON and a picture of every preset's last grid.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

import mnistgan
from mnistgan.config import preset_names
from mnistgan.devices import cpu_description, describe_cpu, resolve_device


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--presets", nargs="+", default=preset_names())
    parser.add_argument("--epochs", type=int, default=1, help="passes over the training images, the same for every preset")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("runs/datasets-budget"), help="where the runs go")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--grids", type=Path, help="write every preset's last grid into one PNG here")
    args = parser.parse_args()

    device = resolve_device(args.device)
    machine = describe_cpu(cpu_description()) if device.type == "cpu" else str(device)
    floor = mnistgan.evaluate_real(device=str(device), dataset=args.dataset)
    rows = []
    for preset in args.presets:
        out = args.out / f"{args.dataset}-{preset}-{args.epochs}ep"
        started = time.perf_counter()
        if (out / "config.toml").exists():
            run = mnistgan.train(resume=out, epochs=args.epochs, progress=False)
        else:
            run = mnistgan.train(preset, epochs=args.epochs, device=str(device), dataset=args.dataset, out=out, progress=False)
        seconds = time.perf_counter() - started
        scores = run.evaluate(device=str(device))
        rows.append({"preset": preset, "epochs": args.epochs, "train_seconds": round(seconds, 1), "run": str(out), **scores})
    keys = ["modes_covered", "reverse_kl"] if args.dataset == "stacked-mnist" else ["fd", "kid", "precision", "recall", "digits_covered"]
    print(f"{args.dataset}, {args.epochs} epoch(s) per preset, {machine}")
    print(f"{'preset':<22}" + "".join(f"{key:>15}" for key in keys) + f"{'train s':>10}")
    print(f"{'real floor':<22}" + "".join(f"{floor[key]:>15.4g}" for key in keys))
    for row in rows:
        print(f"{row['preset']:<22}" + "".join(f"{row[key]:>15.4g}" for key in keys) + f"{row['train_seconds']:>10.0f}")
    if args.json:
        args.json.write_text(json.dumps({"dataset": args.dataset, "machine": machine, "floor": floor, "runs": rows}, indent=2))
    if args.grids:
        write_grids([(row["preset"], Path(row["run"])) for row in rows], args.grids)
    return 0


def write_grids(runs: list[tuple[str, Path]], path: Path) -> None:
    """Each run's last fixed-noise grid side by side, captioned with its preset."""
    pictures = []
    for name, run in runs:
        grid = Image.open(sorted((run / "samples").glob("*.png"))[-1]).convert("RGB")
        pictures.append((name, grid.resize((grid.width // 2, grid.height // 2), Image.NEAREST)))
    width = sum(picture.width for _, picture in pictures) + 10 * (len(pictures) + 1)
    height = max(picture.height for _, picture in pictures) + 30
    sheet = Image.new("RGB", (width, height), "white")
    draw, left = ImageDraw.Draw(sheet), 10
    for name, picture in pictures:
        sheet.paste(picture, (left, 25))
        draw.text((left, 6), name, fill="black")
        left += picture.width + 10
    sheet.save(path)


if __name__ == "__main__":
    sys.exit(main())
