"""How the recommended preset was chosen: train candidate configs, score them, rank them.

    python benchmarks/search_recommended.py --round 5 --out runs/search5 --parallel 3   # train + evaluate
    python benchmarks/search_recommended.py --round 5 --out runs/search5 --report       # the table again

A candidate is a list of `mnistgan train` arguments after BASE: the compact-dcgan preset without
its EMA, where the search started (a later ``--preset`` or ``--set`` replaces what BASE says).
Each round starts from the previous round's winner. Candidates are ranked by their scores against the first 10,000
*training* images (``--reference train``), so that the choice never looks at the test set the
README reports on; the test-set numbers are printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

BASE = ["--preset=compact-dcgan", "--set=train.ema_decay=0.0"]
_EMA, _UNCONDITIONAL = "--set=train.ema_decay=0.999", "--set=model.conditional=false"
_HINGE_SN = ["--set=loss.adversarial=\"hinge\"", "--set=model.spectral_norm=true"]
_D_DROPOUT, _EMA_099 = "--set=model.discriminator_dropout=0.3", "--set=train.ema_decay=0.99"
_MLP_CONDITIONAL_EMA = ["--preset=mlp-gan", "--conditional", "--epochs=100", "--set=train.ema_decay=0.999"]
_TTUR = ["--set=optim.generator_lr=1e-4", "--set=optim.discriminator_lr=4e-4"]
ROUNDS = {
    # Round 1: the compact DCGAN with or without EMA, hinge + spectral norm, each +-conditional.
    "1": {
        "base": [_EMA, _UNCONDITIONAL], "base-conditional": [_EMA],
        "no-ema": [_UNCONDITIONAL], "no-ema-conditional": [],
        "hinge-sn": [_EMA, _UNCONDITIONAL, *_HINGE_SN], "hinge-sn-conditional": [_EMA, *_HINGE_SN],
    },
    # Round 2: round 1's winner (conditional, no EMA) against changes aimed at its low recall.
    "2": {
        "conditional": [],
        "d-dropout": [_D_DROPOUT],
        "ema-0.99": [_EMA_099],
        "ema-0.999-d-dropout": [_EMA, _D_DROPOUT],
        "batch-64": ["--batch-size=64"],
        "wide-generator": ["--set=model.generator_widths=[256,128]"],
        "hinge": ["--set=loss.adversarial=\"hinge\""],
        "ttur": _TTUR,
        "label-smoothing": ["--set=loss.label_smoothing=0.1"],
        "40-epochs": ["--epochs=40"],
        "d-dropout-40-epochs": [_D_DROPOUT, "--epochs=40"],
        "mlp-conditional": ["--preset=mlp-gan", "--conditional", "--epochs=100"],
    },
    # Round 3: round 2's winner (EMA decay 0.99) repeated on a second seed, with TTUR, a slower
    # EMA, and twice the epochs.
    "3": {
        "ema-0.99": [_EMA_099],
        "ema-0.99-seed-1": [_EMA_099, "--seed=1"],
        "ema-0.99-ttur": [_EMA_099, *_TTUR],
        "ema-0.995": ["--set=train.ema_decay=0.995"],
        "ema-0.99-40-epochs": [_EMA_099, "--epochs=40"],
        "ema-0.99-ttur-40-epochs": [_EMA_099, *_TTUR, "--epochs=40"],
    },
    # Round 4: aimed at the recall and precision the MLP references reach: a wider D, a slower
    # learning rate for longer, an R1 penalty, and the conditional MLP family.
    "4": {
        "wide-discriminator": [_EMA_099, "--set=model.discriminator_widths=[128,256]"],
        "lr-1e-4-40-epochs": [_EMA_099, "--lr=1e-4", "--epochs=40"],
        "r1-0.1": [_EMA_099, "--set=loss.r1_gamma=0.1"],
        "mlp-conditional": ["--preset=mlp-gan", "--conditional", "--epochs=100"],
        "mlp-conditional-ema": _MLP_CONDITIONAL_EMA,
    },
    # Round 5: round 4's winner (the conditional MLP with EMA) on a second seed, for twice the
    # epochs, and with round 4's recall-raising R1 penalty.
    "5": {
        "mlp-conditional-ema-seed-1": [*_MLP_CONDITIONAL_EMA, "--seed=1"],
        "mlp-conditional-ema-200-epochs": [*_MLP_CONDITIONAL_EMA, "--epochs=200"],
        "mlp-conditional-ema-r1-0.1": [*_MLP_CONDITIONAL_EMA, "--set=loss.r1_gamma=0.1"],
    },
}


def commands(label: str, arguments: list[str], out: Path) -> list[list[str]]:
    run_dir = out / label
    python = [sys.executable, "-m", "mnistgan"]
    train = python + ["train", *BASE, *arguments, "--out", str(run_dir), "--no-progress"]
    evaluate = python + ["evaluate", "--run", str(run_dir), "--json"]
    return [train, evaluate + ["--reference", "train"], evaluate]  # test last: its result stays in metrics.json


def run_all(candidates: dict[str, list[str]], out: Path, parallel: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # Each process would otherwise start one CPU thread per core; nine evaluations at once on a
    # 16-core machine then spun against each other for minutes. Share the cores instead.
    environment = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // parallel)), **os.environ}
    running: list[subprocess.Popen] = []
    for label, arguments in candidates.items():
        while len(running) >= parallel:
            running = [process for process in running if process.poll() is None]
            time.sleep(1)
        train, evaluate_train, evaluate_test = commands(label, arguments, out)
        script = (f"{shlex.join(train)} > {shlex.quote(str(out / (label + '.log')))} 2>&1"
                  f" && {shlex.join(evaluate_train)} > {shlex.quote(str(out / (label + '.train-reference.json')))}"
                  f" && {shlex.join(evaluate_test)} > {shlex.quote(str(out / (label + '.test-reference.json')))}")
        running.append(subprocess.Popen(["bash", "-c", script], env=environment))
    for process in running:
        process.wait()


def report(candidates: dict[str, list[str]], out: Path) -> None:
    columns = ("fd", "precision", "recall", "density", "coverage", "digits_covered")
    print(f"ranked by FD against training images (the test-set FD beside it); {out}")
    print(f"{'candidate':<30} {'FD train':>9} {'FD test':>8} " + " ".join(f"{c[:9]:>9}" for c in columns[1:]) + f" {'cond acc':>8} {'s/epoch':>8}")
    rows = []
    for label in candidates:
        try:
            on_train = json.loads((out / f"{label}.train-reference.json").read_text())
            on_test = json.loads((out / f"{label}.test-reference.json").read_text())
        except (OSError, json.JSONDecodeError):
            print(f"{label:<30} (no result)")
            continue
        log = (out / f"{label}.log").read_text().splitlines()
        seconds = [float(line.split()[-2]) for line in log if line.startswith("epoch ")]
        rows.append((on_train["fd"], label, on_test, seconds))
    for fd_train, label, on_test, seconds in sorted(rows, key=lambda row: row[0]):
        accuracy = f"{on_test['conditional_accuracy']:.4f}" if "conditional_accuracy" in on_test else "-"
        per_epoch = f"{sum(seconds) / len(seconds):.2f}" if seconds else "-"
        print(f"{label:<30} {fd_train:>9.3f} {on_test['fd']:>8.3f} " + " ".join(f"{on_test[c]:>9.4g}" for c in columns[1:])
              + f" {accuracy:>8} {per_epoch:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--round", choices=sorted(ROUNDS), default=max(ROUNDS), help="which set of candidates")
    parser.add_argument("--out", type=Path, default=Path("runs/search"))
    parser.add_argument("--parallel", type=int, default=2, help="training processes at once (GPU: many; CPU: 1-2)")
    parser.add_argument("--report", action="store_true", help="only print the table of finished candidates")
    args = parser.parse_args()
    if not args.report:
        run_all(ROUNDS[args.round], args.out, args.parallel)
    report(ROUNDS[args.round], args.out)


if __name__ == "__main__":
    main()
