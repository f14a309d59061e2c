"""How the recommended preset was chosen: train candidate configs, score them, rank them.

    python benchmarks/search_recommended.py --out runs/search --parallel 12   # train + evaluate all
    python benchmarks/search_recommended.py --out runs/search --report        # the table again

Each candidate is the recommended preset's network with a few overrides, trained unconditionally
and conditionally. Candidates are ranked by their scores against the first 10,000 *training*
images (``--reference train``), so that the choice never looks at the test set the README
reports on; the test-set numbers are printed beside them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

BASE = "recommended"
# Where the search started: the recommended preset's network and optimizer, with an EMA generator,
# unconditional (each candidate is also trained with --conditional).
SEARCH_BASE = ["train.ema_decay=0.999", "model.conditional=false"]
# name -> overrides on top of SEARCH_BASE.
CANDIDATES = {
    "base": [],
    "no-ema": ["train.ema_decay=0.0"],
    "hinge-sn": ["loss.adversarial=\"hinge\"", "model.spectral_norm=true"],
}


def commands(name: str, overrides: list[str], conditional: bool, out: Path) -> list[list[str]]:
    run_dir = out / (name + ("-conditional" if conditional else ""))
    python = [sys.executable, "-m", "mnistgan"]
    train = python + ["train", "--preset", BASE, "--out", str(run_dir), "--no-progress"]
    train += [f"--set={override}" for override in SEARCH_BASE + overrides] + (["--conditional"] if conditional else [])
    evaluate = python + ["evaluate", "--run", str(run_dir), "--json"]
    return [train, evaluate + ["--reference", "train"], evaluate]  # test last: its result stays in metrics.json


def run_all(out: Path, parallel: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(name, overrides, conditional) for name, overrides in CANDIDATES.items() for conditional in (False, True)]
    running: list[tuple[subprocess.Popen, Path]] = []
    for name, overrides, conditional in jobs:
        while len(running) >= parallel:
            running = [(p, log) for p, log in running if p.poll() is None]
            time.sleep(1)
        label = name + ("-conditional" if conditional else "")
        train, evaluate_train, evaluate_test = commands(name, overrides, conditional, out)
        script = (f"{shlex.join(train)} > {shlex.quote(str(out / (label + '.log')))} 2>&1"
                  f" && {shlex.join(evaluate_train)} > {shlex.quote(str(out / (label + '.train-reference.json')))}"
                  f" && {shlex.join(evaluate_test)} > {shlex.quote(str(out / (label + '.test-reference.json')))}")
        running.append((subprocess.Popen(["bash", "-c", script]), out / f"{label}.log"))
    for process, _ in running:
        process.wait()


def report(out: Path) -> None:
    columns = ("fd", "precision", "recall", "density", "coverage", "digits_covered")
    print(f"ranked by FD against training images (the test-set FD beside it); {out}")
    print(f"{'candidate':<24} {'FD train':>9} {'FD test':>8} " + " ".join(f"{c[:9]:>9}" for c in columns[1:]) + f" {'cond acc':>8} {'s/epoch':>8}")
    rows = []
    for name in CANDIDATES:
        for label in (name, name + "-conditional"):
            try:
                on_train = json.loads((out / f"{label}.train-reference.json").read_text())
                on_test = json.loads((out / f"{label}.test-reference.json").read_text())
            except (OSError, json.JSONDecodeError):
                print(f"{label:<24} (no result)")
                continue
            log = (out / f"{label}.log").read_text().splitlines()
            seconds = [float(line.split()[-2]) for line in log if line.startswith("epoch ")]
            rows.append((on_train["fd"], label, on_test, seconds))
    for fd_train, label, on_test, seconds in sorted(rows, key=lambda row: row[0]):
        accuracy = f"{on_test['conditional_accuracy']:.4f}" if "conditional_accuracy" in on_test else "-"
        per_epoch = f"{sum(seconds) / len(seconds):.2f}" if seconds else "-"
        print(f"{label:<24} {fd_train:>9.3f} {on_test['fd']:>8.3f} " + " ".join(f"{on_test[c]:>9.4g}" for c in columns[1:])
              + f" {accuracy:>8} {per_epoch:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/search"))
    parser.add_argument("--parallel", type=int, default=2, help="training processes at once (GPU: many; CPU: 1-2)")
    parser.add_argument("--report", action="store_true", help="only print the table of finished candidates")
    args = parser.parse_args()
    if not args.report:
        run_all(args.out, args.parallel)
    report(args.out)


if __name__ == "__main__":
    main()
