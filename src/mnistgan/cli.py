"""The commands users type: argument parsing, what they print and write, one error line per bad input.

Training, sampling and measuring are ``api``'s; this module only turns arguments into its calls.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import sys
import threading
from pathlib import Path

from .config import MAX_SEED, SHORTCUTS, key_field
from .errors import UserError, command_line_names


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage dump) and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _int_at_least(minimum: int, maximum: int | None = None):
    """An argparse type: a whole number >= ``minimum`` (and <= ``maximum``), with a one-line error otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} must be at most {maximum}")
        return value

    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)
_seed = _int_at_least(0, MAX_SEED)
PRETRAINED_HELP = "a generator that ships with mnistgan (see `mnistgan pretrained`)"


def _digit(text: str) -> int | str:
    if text == "all":
        return text
    if text.isdigit():  # the run knows how many classes it has
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not a class number (a digit 0-9 for MNIST) or 'all'")


def _add_shortcut(group, name: str, keys: tuple[str, ...], help_text: str) -> None:
    """A flag for one of config.SHORTCUTS, typed and range-checked from its config key."""
    annotation, limits = key_field(keys[0])
    flag, help_text = "--" + name.replace("_", "-"), f"{' and '.join(keys)}: {help_text}"
    if annotation is bool:
        group.add_argument(flag, action="store_true", default=None, help=help_text)
    elif annotation is int:
        group.add_argument(flag, type=_int_at_least(limits.get("low") or 0), help=help_text)
    else:
        group.add_argument(flag, type=float if annotation is float else str, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mnistgan", description="Train GANs that draw handwritten digits, sample them, measure them.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    train = commands.add_parser("train", help="train a preset (or continue a run with --resume)",
                                description="Train a GAN preset on MNIST; every config value can be overridden.")
    main = train.add_argument_group("what to train")
    main.add_argument("--preset", help="preset name (see `mnistgan presets`; default: recommended)")
    main.add_argument("--preset-file", metavar="FILE", help="a TOML file of config values of your own, instead of --preset")
    main.add_argument("--resume", metavar="RUN_DIR", help="continue this run to --epochs epochs in total")
    main.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                      help="override any config value, e.g. --set loss.adversarial=hinge (repeatable)")
    hyper = train.add_argument_group("common settings (shortcuts for --set)")
    for name, (keys, help_text) in SHORTCUTS.items():
        _add_shortcut(hyper, name, keys, help_text)
    io = train.add_argument_group("files")
    io.add_argument("--out", metavar="DIR", help="run directory (default: a new numbered folder under runs/)")
    io.add_argument("--data-dir", metavar="DIR", help="folder with the four MNIST IDX files (else $MNISTGAN_DATA_DIR, data/mnist, the cache, a download)")
    io.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="plain lines instead of a progress bar")

    sample = commands.add_parser("sample", help="write samples of a trained generator as a PNG grid or a .npy array")
    source = sample.add_mutually_exclusive_group()
    source.add_argument("--run", metavar="RUN_DIR", help="run directory made by `mnistgan train`")
    source.add_argument("--pretrained", metavar="NAME", help=PRETRAINED_HELP)
    sample.add_argument("--checkpoint", metavar="FILE", help="a checkpoint (.pt) or generator (.safetensors) file")
    sample.add_argument("--n", type=_positive_int, default=16, help="how many samples (with --digit all: per digit) (default: 16)")
    sample.add_argument("--out", metavar="FILE", default="samples.png", help=".png for a grid, .npy for float32 (N, channels, 28, 28) in [-1, 1] (default: samples.png)")
    sample.add_argument("--seed", type=_seed, default=0, help="noise seed (default: 0)")
    sample.add_argument("--digit", type=_digit, help="conditional runs: the digit to draw, or 'all' for one row per digit")

    evaluate = commands.add_parser("evaluate", help="measure sample quality: FD, KID, precision/recall, density/coverage, classes",
                                   description="Score a run's generator, a file of samples, or real data (the floor) with the "
                                               "evaluator of the dataset (Stacked MNIST: modes covered and reverse KL).")
    source = evaluate.add_mutually_exclusive_group()
    source.add_argument("--run", metavar="RUN_DIR", help="run directory; writes metrics.json into it")
    source.add_argument("--pretrained", metavar="NAME", help=PRETRAINED_HELP)
    source.add_argument("--samples", metavar="FILE", help=".npy array (N,28,28 / N,1,28,28 / N,784; [-1,1], [0,1] or uint8) or a folder of PNGs")
    source.add_argument("--real", action="store_true", help="the real-data floor: N training images against the test set")
    evaluate.add_argument("--checkpoint", metavar="FILE", help="with --run or alone: these weights instead of the run's")
    evaluate.add_argument("--n", type=_positive_int, help="samples to generate (default: 10000; 26000 for stacked-mnist)")
    evaluate.add_argument("--dataset", help="with --samples or --real: mnist (default), fashion-mnist, stacked-mnist or "
                                            "folder:PATH (a run knows its own)")
    evaluate.add_argument("--seed", type=_seed,
                          help="noise seed (default: the run's own evaluation seed, train.seed + 1, as its final evaluation)")
    evaluate.add_argument("--reference", choices=("test", "train"), default="test", help="real images to compare with (default: test)")
    evaluate.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    evaluate.add_argument("--json", action="store_true", help="print JSON only")

    interpolate = commands.add_parser("interpolate", help="latent walks: rows of images that move from one noise draw (or digit) to another",
                                      description="Each row walks in --steps steps from one noise draw to another (slerp for "
                                                  "Gaussian noise, lerp for uniform). A conditional generator walks at one "
                                                  "--digit (default: row r draws digit r), or --morph A B holds the noise and "
                                                  "moves the digit from A to B.")
    source = interpolate.add_mutually_exclusive_group()
    source.add_argument("--run", metavar="RUN_DIR", help="run directory made by `mnistgan train`")
    source.add_argument("--pretrained", metavar="NAME", help=PRETRAINED_HELP)
    interpolate.add_argument("--checkpoint", metavar="FILE", help="a checkpoint (.pt) or generator (.safetensors) file")
    interpolate.add_argument("--rows", type=_positive_int, default=8, help="walks, one per row (default: 8)")
    interpolate.add_argument("--steps", type=_int_at_least(2), default=10, help="images along each walk, both ends included (default: 10)")
    interpolate.add_argument("--out", metavar="FILE", default="walk.png", help=".png for a grid of rows x steps, .gif for one frame "
                                                                               "per step, there and back (default: walk.png)")
    interpolate.add_argument("--seed", type=_seed, default=0, help="noise seed (default: 0)")
    interpolate.add_argument("--digit", type=_non_negative_int, help="conditional generators: the digit every walk draws")
    interpolate.add_argument("--morph", type=_non_negative_int, nargs=2, metavar=("FROM", "TO"),
                             help="conditional generators: fixed noise, the digit changing from FROM to TO")

    train_evaluator = commands.add_parser("train-evaluator", help="train the evaluator of a dataset (or reproduce a shipped one)",
                                          description="Train the metrics' classifier of a labelled dataset with the recipe in "
                                                      "mnistgan/metrics/evaluator.py.")
    train_evaluator.add_argument("--dataset", default="mnist", help="mnist (default), fashion-mnist or folder:PATH (labelled images)")
    train_evaluator.add_argument("--out", metavar="FILE", help="where to write the weights (default: runs/evaluator/DATASET.safetensors "
                                                               "for shipped evaluators, else where `evaluate` looks for it)")
    train_evaluator.add_argument("--seed", type=_seed, help="random seed (default: the shipped weights' seed)")
    train_evaluator.add_argument("--epochs", type=_positive_int, help="passes over the training images (default: the recipe's)")
    train_evaluator.add_argument("--device", default="cpu", help="cpu (default: bit-for-bit reproducible) or cuda")
    train_evaluator.add_argument("--data-dir", metavar="DIR", help="folder with the dataset's four IDX files")

    report = commands.add_parser("report", help="write a run's report: one HTML page with its samples, curves, quality and config",
                                 description="Write a self-contained HTML page of a run (training writes one at its end; "
                                             "`evaluate --run` refreshes it).")
    report.add_argument("--run", required=True, metavar="RUN_DIR", help="a run directory made by `mnistgan train`")
    report.add_argument("--out", metavar="FILE", help="where to write it (default: RUN_DIR/report.html)")

    commands.add_parser("datasets", help="list the datasets a run can train on (--dataset)")

    presets = commands.add_parser("presets", help="list the presets, or show one's full config")
    presets.add_argument("--show", metavar="NAME", help="print this preset's full resolved config as TOML")

    pretrained = commands.add_parser("pretrained", help="list the pretrained generators that ship with mnistgan",
                                     description="List the pretrained generators (sample, interpolate and evaluate take "
                                                 "--pretrained NAME); --export writes a run's generator as such a file.")
    pretrained.add_argument("--export", metavar="RUN_DIR", help="write this run's generator to --out and print its registry entry")
    pretrained.add_argument("--out", metavar="FILE", help="with --export: the file to write, NAME.safetensors")
    pretrained.add_argument("--half", action=argparse.BooleanOptionalAction, default=True,
                            help="with --export: store the weights in float16, half the size (default: on)")
    return parser


def main(argv: list[str] | None = None) -> int:
    # A path that is not valid UTF-8 (a byte-named folder) must not end a command that has done its
    # work with an encoding error on its last "wrote ..." line: such bytes are printed escaped.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a parse error already printed as one line
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    # SIGTERM before training installs its own handler (loading data, say) unwinds like Ctrl-C, so
    # that a run which never started takes its folder back.
    # Not under torchrun: its other processes may wait inside the process group, where a Python handler
    # would only run once they return, and torchrun's SIGTERM must end them at once.
    handle_term = threading.current_thread() is threading.main_thread() and int(os.environ.get("WORLD_SIZE", "1")) <= 1
    previous_handler = signal.signal(signal.SIGTERM, _terminated) if handle_term else None
    try:
        with command_line_names():
            code = COMMANDS[args.command](args)
        sys.stdout.flush()  # so that a closed pipe shows up here, not as an error at exit
        return code
    except UserError as error:
        print(f"mnistgan: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"mnistgan: {getattr(interrupt, 'message', 'interrupted')}", file=sys.stderr)
        status = getattr(interrupt, "exit_status", 130)
        if status == 141:  # training stopped because its output pipe closed
            _discard_stdout()
        return status
    except (MemoryError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and not _out_of_memory(error):
            raise
        asked = re.search(r"tried to allocate [^.(]*\w", str(error), re.IGNORECASE)
        remedy = "a smaller --batch-size" if args.command == "train" else "fewer samples (--n)"
        print(f"mnistgan: error: out of memory{f' ({asked.group(0)})' if asked else ''}; ask for {remedy}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`mnistgan presets | head`): stop quietly, as other command-line tools do.
        _discard_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a tool stopped by a closed pipe
    except OSError as error:
        if error.errno is None:
            raise
        from .files import describe_os_error

        print(f"mnistgan: error: {describe_os_error(error)}", file=sys.stderr)  # a full disk, say
        return 2
    finally:
        if handle_term:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous_handler is None else previous_handler)


class _Terminated(KeyboardInterrupt):
    message = "terminated"
    exit_status = 128 + signal.SIGTERM


def _terminated(signum, frame) -> None:
    raise _Terminated()


def _discard_stdout() -> None:
    """Send what is still buffered for a closed stdout to /dev/null, so that exit cannot fail on it."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _out_of_memory(error: RuntimeError) -> bool:
    """torch's allocation failures: a RuntimeError on the CPU, torch.OutOfMemoryError (one too) on CUDA."""
    message = str(error)
    return "can't allocate memory" in message or "out of memory" in message


def _train(args) -> int:
    from . import api

    shortcuts = {name: getattr(args, name) for name in SHORTCUTS}
    api.train(args.preset, preset_file=args.preset_file, overrides=args.overrides, out=args.out, data_dir=args.data_dir, resume=args.resume,
              progress=args.progress, **shortcuts)
    return 0


def _open_generator(args):
    """The generator a command works on: a run's (or a checkpoint file's), or a pretrained one."""
    from . import api

    if args.pretrained is not None:
        if args.checkpoint is not None:
            raise UserError("give --pretrained NAME or --checkpoint FILE, not both")
        return api.pretrained(args.pretrained)
    if args.run is None and args.checkpoint is None:
        raise UserError("give --run RUN_DIR, --checkpoint FILE or --pretrained NAME")
    return api.load(args.run, args.checkpoint)


def _output_file(text: str, kinds: dict[str, str]) -> Path:
    """--out checked before any work is done: one of ``kinds``' suffixes, in a folder that exists."""
    out = Path(text)
    if out.suffix not in kinds:
        raise UserError(f"--out {out} must end in " + " or ".join(f"{suffix} ({what})" for suffix, what in kinds.items()))
    if not out.parent.exists():
        raise UserError(f"--out: the folder {out.parent} does not exist")
    return out


def _sample(args) -> int:
    import numpy as np

    from .files import write_bytes_atomically
    from .plots import image_grid, save_image

    out = _output_file(args.out, {".png": "a grid", ".npy": "the raw samples"})
    run = _open_generator(args)
    if args.digit == "all":
        images = run.sample_digits(args.n, args.seed)
        columns = args.n
    else:
        images = run.sample(args.n, args.seed, args.digit)
        columns = None
    try:
        if out.suffix == ".png":
            save_image(image_grid(images, columns=columns, scale=2), out)
        else:  # in memory first: numpy reports a full disk without an errno
            serialised = io.BytesIO()
            np.save(serialised, images.numpy().astype(np.float32))
            write_bytes_atomically(out, serialised.getbuffer())
    except OSError as error:
        raise UserError(f"cannot write {out} ({error.strerror or error})") from None
    print(f"wrote {images.shape[0]} samples to {out}")
    return 0


def _interpolate(args) -> int:
    from .imagefiles import save_animation
    from .plots import image_grid, save_image

    out = _output_file(args.out, {".png": "a grid of rows x steps", ".gif": "an animation, one frame per step"})
    images = _open_generator(args).interpolate(args.rows, args.steps, args.seed, args.digit, args.morph)
    try:
        if out.suffix == ".png":
            save_image(image_grid(images, columns=args.steps, scale=2), out)
        else:
            steps = images.view(args.rows, args.steps, *images.shape[1:]).transpose(0, 1)  # (steps, rows, C, 28, 28)
            frames = [image_grid(step, scale=2) for step in steps]
            save_animation(frames + frames[-2:0:-1], out)  # there and back: the loop has no jump
    except OSError as error:
        raise UserError(f"cannot write {out} ({error.strerror or error})") from None
    print(f"wrote {args.rows} walks of {args.steps} steps to {out}")
    return 0


def _evaluate(args) -> int:
    import json

    from . import api
    from .devices import resolve_device
    from .metrics import METRIC_KEYS
    from .metrics.generators import real_floor

    dataset = args.dataset or "mnist"
    if args.real or args.samples:  # these score images as they are: the options that make samples do not apply
        given = [flag for flag, value in (("--n", args.n if args.samples else None), ("--seed", args.seed),
                                          ("--checkpoint", args.checkpoint), ("--reference", args.reference != "test" or None))
                 if value is not None]
        if given:
            source = "--real" if args.real else "--samples"
            raise UserError(f"{given[0]} does not apply to {source}, which is scored as it is against the test images "
                            "(it applies to generated samples: --run, --checkpoint or --pretrained)")
    if args.real:
        result = api.evaluate_real(args.n, args.device, dataset)
        floor = None
    elif args.samples:
        result = api.evaluate_samples(args.samples, args.device, dataset)
        # No floor where the dataset has fewer real images than there are samples: compare only at equal counts.
        floor = None if args.json else real_floor(dataset, result["n"], resolve_device(args.device))
    elif args.run or args.checkpoint or args.pretrained:
        run = _open_generator(args)
        if args.dataset is not None and args.dataset != run.config.data.dataset:
            raise UserError(f"this run trained on {run.config.data.dataset}; leave out --dataset (a run is scored on its own)")
        result = run.evaluate(args.n, args.seed, args.device, args.reference)
        floor = result.get("real_floor")
    else:
        raise UserError("give --run RUN_DIR, --checkpoint FILE, --pretrained NAME, --samples FILE or --real")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    what = "real training images vs test images" if args.real else f"{result['n']} samples vs the {args.reference if not args.samples else 'test'} set"
    print(f"{what}")
    print(f"{'metric':<30} {'value':>10} {'real floor':>11}  better")
    for key, key_info in METRIC_KEYS.items():
        if key_info.label and key in result:
            floor_text = f"{floor[key]:>11.4g}" if floor and key in floor else f"{'':>11}"
            print(f"{key_info.label:<30} {result[key]:>10.4g} {floor_text}  {key_info.better}")
    if "class_histogram" in result:
        print("class histogram (share of each class): " + " ".join(f"{share:.3f}" for share in result["class_histogram"]))
    if args.run:
        print(f"wrote {Path(args.run) / 'metrics.json'} and refreshed {Path(args.run) / 'report.html'}")
    return 0


def _report(args) -> int:
    from .files import describe_os_error
    from .report import write_report

    if args.out is not None:
        out = Path(args.out)
        if out.is_dir():
            raise UserError(f"--out {out} is a folder; give the report's file name, e.g. {out / 'report.html'}")
        if not out.parent.is_dir():
            raise UserError(f"--out: the folder {out.parent} does not exist")
    try:
        written = write_report(args.run, args.out)
    except OSError as error:
        raise UserError(f"cannot make the report: {describe_os_error(error)}") from None
    print(f"wrote {written}")
    return 0


def _train_evaluator(args) -> int:
    from .datasets import check_name, user_evaluator_path
    from .metrics.evaluator import EPOCHS, SEED, SHIPPED, train_evaluator

    dataset = check_name(args.dataset)
    if args.out is not None:
        out = args.out
    elif dataset in SHIPPED:  # a reproduction: beside the shipped file, not over it
        out = Path("runs") / "evaluator" / f"{dataset}.safetensors"
    else:
        out = user_evaluator_path(dataset)
    result = train_evaluator(seed=SEED if args.seed is None else args.seed, epochs=args.epochs or EPOCHS,
                             out_path=out, device=args.device, data_dir=args.data_dir, dataset=dataset)
    print(f"test accuracy  {result['accuracy']:.4f}  ({dataset}'s test images)")
    print(f"seconds        {result['seconds']:.0f}")
    print(f"seed, epochs   {result['seed']}, {result['epochs']}")
    print(f"weights        {result['path']}")
    print(f"sha256         {result['sha256']}")
    if dataset in SHIPPED:
        print(f"shipped sha256 {SHIPPED[dataset][1]}  ({'identical' if result['matches_shipped'] else 'different'})")
    return 0


def _presets(args) -> int:
    from .config import DEFAULT_PRESET, load_preset, preset_names

    if args.show is not None:
        print(load_preset(args.show).to_toml(), end="")
        return 0
    names = preset_names()
    width = max(map(len, names))
    for name in names:
        marker = " (default)" if name == DEFAULT_PRESET else ""
        print(f"{name:<{width}}  {load_preset(name).description}{marker}")
    return 0


def _pretrained(args) -> int:
    from . import api, zoo

    if args.export is not None:
        if args.out is None:
            raise UserError("--export needs --out FILE, the file to write (NAME.safetensors)")
        out, written = Path(args.out), api.export_pretrained(args.export, args.out, half=args.half)
        print(f"wrote {out} ({_megabytes(out.stat().st_size)})")
        print(f"sha256 {written.sha256}")
        print("to ship it: copy it into src/mnistgan/zoo/ and add this entry to REGISTRY in src/mnistgan/zoo.py")
        print(f"    {out.stem!r}: {written!r},")
        return 0
    if args.out is not None:
        raise UserError("--out goes with --export RUN_DIR")
    if not zoo.REGISTRY:
        print("no pretrained generators ship with this version of mnistgan; train one with `mnistgan train`")
        return 0
    width = max(map(len, zoo.REGISTRY))
    for name, entry in zoo.REGISTRY.items():
        size = _megabytes(entry.path.stat().st_size) if entry.path.is_file() else "not installed"
        print(f"{name:<{width}}  {size:>13}  {entry.description}  ({entry.card})")
    return 0


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _datasets(args) -> int:
    from .datasets import describe

    rows = describe()
    width = max(len(name) for name, _ in rows)
    for name, what in rows:
        print(f"{name:<{width}}  {what}")
    return 0


COMMANDS = {"datasets": _datasets, "train": _train, "sample": _sample, "interpolate": _interpolate, "evaluate": _evaluate,
            "report": _report, "train-evaluator": _train_evaluator, "presets": _presets, "pretrained": _pretrained}


if __name__ == "__main__":
    sys.exit(main())
