"""EMA schedules compared on one training run: the run's own EMA of G beside extra copies, each with its own
``train.ema_decay`` and ``train.ema_rampup``, scored at chosen epochs.

    python benchmarks/ema_schedules.py --preset r3gan --epochs 20 --snapshots 4 8 12 16 20 \\
        --schedules 0.999:0 0.9999:0.02 0.9999:0.05 --threads 2

The EMA feeds nothing back into training and draws no random numbers, so every copy follows the same G
and D: the comparison is free of the spread between draws, and costs one training run. Each copy is
updated after every step with the same arithmetic as the run's own EMA (``step.ema_decay`` for its
settings) and saved as a generator file at each ``--snapshots`` epoch, ``OUT/snapshots/NAME-eEPOCH.safetensors``;
``mnistgan evaluate --checkpoint FILE`` scores one. Then every snapshot is scored against ``--reference``
(default: the training images, to choose; the test images report). Scores go to ``OUT/scores.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

import mnistgan
from mnistgan import step as step_module
from mnistgan import training
from mnistgan.checkpoint import save_generator
from mnistgan.config import load_preset, parse_overrides
from mnistgan.devices import describe_cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="r3gan")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--snapshots", type=int, nargs="+", default=[4, 8, 12, 16, 20], help="epochs to save and score")
    parser.add_argument("--schedules", nargs="+", default=["0.999:0", "0.9999:0.02", "0.9999:0.05"],
                        metavar="DECAY:RAMPUP", help="the extra copies: train.ema_decay:train.ema_rampup")
    parser.add_argument("--reference", choices=["train", "test"], default="train")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", type=Path, default=Path("runs/ema-schedules"))
    args = parser.parse_args()
    schedules = {}
    for text in args.schedules:
        decay, _, rampup = text.partition(":")
        schedules[f"decay{decay}-rampup{rampup or 0}"] = (float(decay), float(rampup or 0))
    overrides = parse_overrides(args.overrides)
    if args.threads:
        overrides["performance.threads"] = args.threads
    if not load_preset(args.preset).replace(overrides).train.ema_decay:
        raise SystemExit(f"{args.preset} keeps no EMA of G to compare with: add --set train.ema_decay=0.999")

    with ExtraEMAs(schedules, set(args.snapshots), args.out / "snapshots"):
        run = mnistgan.train(args.preset, epochs=args.epochs, seed=args.seed, out=args.out / "run", overrides=overrides,
                             final_eval_samples=0, progress=False)
    own = f"run's own (decay {run.config.train.ema_decay:g}, rampup {run.config.train.ema_rampup:g})"
    scores = []
    for epoch in sorted(set(args.snapshots)):
        for name in ["run", *schedules]:
            path = args.out / "snapshots" / f"{name}-e{epoch}.safetensors"
            if path.is_file():
                result = mnistgan.load(None, path).evaluate(n=args.samples, reference=args.reference, save=False)
                scores.append({"schedule": own if name == "run" else name, "epoch": epoch,
                               **{key: result[key] for key in ("fd", "kid", "precision", "recall")}})
                print(f"epoch {epoch:>4}  {scores[-1]['schedule']:<40} FD {result['fd']:.3f}  KID {result['kid']:.4f}  "
                      f"precision {result['precision']:.3f}  recall {result['recall']:.3f}", flush=True)
    machine = torch.cuda.get_device_name() if torch.cuda.is_available() else describe_cpu()
    (args.out / "scores.json").write_text(json.dumps({"preset": args.preset, "seed": args.seed, "reference": args.reference,
                                                      "samples": args.samples, "machine": machine,
                                                      "trained_seconds": run.trained_seconds, "scores": scores}, indent=2))
    print(f"{args.samples:,} samples against the {args.reference} images; {run.trained_seconds:.0f} s of training on "
          f"{machine}; scores in {args.out / 'scores.json'}")
    return 0


class ExtraEMAs:
    """While open, every training step also updates one EMA copy of G per schedule, and the epochs in
    ``snapshots`` save them (and the run's own EMA, as ``run``) into ``folder``."""

    def __init__(self, schedules: dict[str, tuple[float, float]], snapshots: set[int], folder: Path):
        self.schedules, self.snapshots, self.folder = schedules, snapshots, folder
        self.copies: dict[str, torch.nn.Module] = {}
        self.parameters: dict[str, list[torch.Tensor]] = {}
        self.buffers: dict[str, list[torch.Tensor]] = {}
        self.configs: dict = {}
        self.steps_per_epoch = 0

    def __enter__(self):
        extras = self
        self.saved = (step_module.TrainingStep._update_ema, training.RunOutputs.__init__, training.RunOutputs.end_of_epoch)
        update_ema, outputs_init, end_of_epoch = self.saved

        def update_all(step):
            if not extras.copies:  # each copy starts where the run's EMA does: G's first weights
                for name, (decay, rampup) in extras.schedules.items():
                    extras.copies[name] = copy.deepcopy(step.ema)
                    extras.parameters[name] = list(extras.copies[name].parameters())
                    extras.buffers[name] = list(extras.copies[name].buffers())
                    extras.configs[name] = step.config.replace({"train.ema_decay": decay, "train.ema_rampup": rampup})
            update_ema(step)
            epoch = step.steps_done // extras.steps_per_epoch + 1
            for name in extras.copies:
                weight = 1.0 - step_module.ema_decay(extras.configs[name], epoch, extras.steps_per_epoch)
                step_module.move_average(extras.parameters[name], extras.buffers[name], step.g_parameters,
                                         step.g_buffers, weight)

        def init(outputs, config, paths, parts, device, steps_per_epoch, *rest):
            extras.steps_per_epoch = steps_per_epoch
            outputs_init(outputs, config, paths, parts, device, steps_per_epoch, *rest)

        def end(outputs, epoch, *rest, **keywords):
            end_of_epoch(outputs, epoch, *rest, **keywords)
            if epoch in extras.snapshots:
                extras.folder.mkdir(parents=True, exist_ok=True)
                for name, network in {"run": outputs.sampler, **extras.copies}.items():
                    save_generator(network, outputs.config.to_dict(), extras.folder / f"{name}-e{epoch}.safetensors", "ema", epoch)

        step_module.TrainingStep._update_ema = update_all
        training.RunOutputs.__init__, training.RunOutputs.end_of_epoch = init, end
        return self

    def __exit__(self, *exc):
        step_module.TrainingStep._update_ema, training.RunOutputs.__init__, training.RunOutputs.end_of_epoch = self.saved
        return False


if __name__ == "__main__":
    sys.exit(main())
