"""The training loop: every preset, loss, conditioning and device goes through ``train()``.

``train()`` reads top to bottom in stages: device and processes, the data on the device, the
networks and their step (``step.py``), start or resume (``TrainingState``), the epochs, the
end-of-epoch outputs (``RunOutputs``), the final evaluation of the finished generator, and the stop
(``StopControl``: Ctrl-C, SIGTERM, a closed output pipe, agreed on by every process under torchrun).
The run folder's files are ``rundir``'s.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import losses
from .checkpoint import NonFiniteError, load_checkpoint, load_weights, save_checkpoint, save_generator
from .config import Config, resumable, stored_config_from_dict
from .datasets import Dataset, load_dataset
from .devices import bf16_caution, choose_precision, configure_backends, resolve_device
from .distributed import Distributed
from .errors import UserError, option
from .metrics.evaluator import load_evaluator
from .metrics.generators import evaluation_seed, metrics_record, real_floor, score_generator
from .metrics.spread import VERDICT as COLLAPSE_VERDICT, SpreadCheck
from .plots import image_grid, plot_losses, plot_metrics, save_gif, save_image
from .report import refresh_report
from .rundir import (RunPaths, append_csv, file_system_failure, prepare_resume, read_csv_columns, read_metrics, start_run,
                     write_metrics)
from .sampling import fixed_inputs, generate, grid_columns, refresh_batchnorm_statistics
from .step import STAT_COLUMNS, TrainingParts, build_training, ema_decay, epoch_order, learning_rates, real_batches_per_step, seed_process_noise
from .tensorboard_log import TensorBoardLog, require_tensorboard

STOP_CHECK_STEPS = 50  # under torchrun, processes agree on a stop every this many steps (and at epoch ends)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training after a checkpoint was written."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.message = message
        self.exit_status = 128 + signum  # what a shell reports for a process that signal stopped


def train(config: Config, run_dir: Path, *, data_dir=None, resume: bool = False, progress: bool | None = None,
          log=print) -> RunPaths:
    """Train (or continue training) the GAN that ``config`` describes; return the run's paths.

    ``resume`` continues from ``run_dir/checkpoints/last.pt`` to ``config.train.epochs`` epochs in
    total, bit for bit as if never interrupted (on CPU; CUDA kernels are not all deterministic).
    A file system failure (a full disk, say) ends training with one ``UserError``. Checkpoints and
    outputs are written atomically and resuming trims the CSV logs back to the checkpoint, so the
    run resumes from its last checkpoint as if the failure had not happened.
    """
    # -- device, precision, processes ---------------------------------------------------------------
    device = resolve_device(config.performance.device)
    distributed = Distributed.from_environment(device.type)
    if distributed.enabled and device.type == "cuda":
        device = torch.device("cuda", distributed.local_rank)
    if config.performance.threads:
        torch.set_num_threads(config.performance.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the broadcasts below, which need it
    # The first process chose the run folder (a new runs/NNN one may be taken by the time the others look).
    paths = RunPaths(Path(distributed.broadcast_object(str(run_dir))))
    checkpoint = load_checkpoint(paths.last_checkpoint, map_location=device) if resume else None
    # Rank 0 chooses ("auto" on a CPU may run a short probe, or read its cache); every rank trains in its choice.
    # A resumed run keeps the precision it trained in, so that it continues exactly.
    if distributed.is_main:
        choice = _precision_trained_in(config, device, checkpoint) or choose_precision(config, device)
    precision, precision_reason = distributed.broadcast_object(choice if distributed.is_main else None)
    configure_backends(config, device, precision)
    stop = StopControl(distributed, device, log)
    try:
        _train(config, paths, device, precision, precision_reason, distributed, stop, data_dir, checkpoint,
               _interactive() if progress is None else progress)
    except OSError as error:
        if isinstance(error, ConnectionError) or error.errno is None:
            raise
        raise UserError(file_system_failure(error, paths)) from None
    finally:
        distributed.close()
    return paths


def _precision_trained_in(config: Config, device: torch.device, state: dict | None) -> tuple[str, str] | None:
    """The precision ``auto`` chose for a run being resumed (``state``: its checkpoint) on the same kind of device, else None."""
    if state is None or config.performance.precision != "auto":
        return None
    if state.get("precision") and state.get("device_type") == device.type:
        caution = bf16_caution(config, state["precision"])
        switch = " (resume with --set performance.precision=fp32 to switch)" if caution else ""
        return state["precision"], "as this run trained so far" + caution + switch
    return None


def _train(config: Config, paths: RunPaths, device: torch.device, precision: str, precision_reason: str, distributed: Distributed,
           stop: "StopControl", data_dir, checkpoint: dict | None, progress: bool) -> None:
    """Train from the start, or from ``checkpoint`` (the loaded ``checkpoints/last.pt`` of a resumed run)."""
    schedule, main_process = config.train, distributed.is_main

    # -- data: the whole training set on the device, uint8 ------------------------------------------
    data = TrainingData.load(config, distributed, device, data_dir)

    # -- networks, optimizers, the step ---------------------------------------------------------------
    parts = build_training(config, device, data.images, data.labels, data.batch_size, data.steps_per_epoch,
                           precision, distributed)
    state = TrainingState(config, parts, device, precision)
    outputs = RunOutputs(config, paths, parts, device, data.steps_per_epoch, SpreadCheck(config, data.images, data.labels, device))

    # -- start or resume ------------------------------------------------------------------------------
    if checkpoint is not None:
        for note in state.restore(checkpoint, paths.last_checkpoint):
            stop.say(note)
        if distributed.rank > 0:
            seed_process_noise(config.train.seed, distributed.rank, (state.completed_epochs, state.step_in_epoch))
        if main_process:
            prepare_resume(paths, state.completed_epochs, config.to_toml())  # the new epochs / device, now that it resumes
    elif main_process:
        start_run(paths)
    already_complete = state.completed_epochs >= schedule.epochs
    if main_process and schedule.tensorboard and not already_complete:
        outputs.open_tensorboard(state.completed_epochs)
    stop.say(f"training {config.preset or 'a custom config'} on {device} ({precision}: {precision_reason}"
             f"{'; CUDA graphs' if parts.runner.use_graphs else ''}"
             f"{f'; {distributed.world_size} processes' if distributed.enabled else ''})"
             f": {data.count} images, {data.steps_per_epoch} steps of {schedule.batch_size} per epoch -> {paths.root}")

    try:
        _train_epochs(state, data, outputs, paths, stop, progress, main_process)
        _finish(state, outputs, paths, stop, distributed, already_complete)
    finally:
        outputs.close()  # the TensorBoard log, however training ended


def _train_epochs(state: "TrainingState", data: "TrainingData", outputs: "RunOutputs", paths: RunPaths,
                  stop: "StopControl", progress: bool, main_process: bool) -> None:
    """The epochs left: steps, then outputs; a stop request ends the loop at the next check, with a checkpoint."""
    config, schedule = state.config, state.config.train
    with stop.handling_signals():
        try:
            for epoch in range(state.completed_epochs + 1, schedule.epochs + 1):
                save_to = paths.last_checkpoint if main_process else None  # time-based checkpoints mid-epoch
                epoch_stats, seconds, images_per_second = _train_epoch(epoch, state, data, stop, progress and main_process,
                                                                       save_to)
                if not torch.isfinite(epoch_stats).all():
                    raise UserError(diverged_message(epoch, paths))
                state.completed_epochs, state.step_in_epoch = epoch, 0
                broken = losses.breakdown(config.loss.adversarial, *epoch_stats.mean(0).tolist(), precision=state.precision)
                if broken and state.breakdown is None:
                    state.breakdown = f"epoch {epoch}: {broken}"
                stopping = bool(broken) and schedule.stop_on_breakdown
                if main_process:
                    outputs.end_of_epoch(epoch, epoch_stats, seconds, images_per_second, state, stop.say, broken, stopping)
                if stopping:
                    raise UserError(f"training broke down at epoch {epoch}: {broken}; stopped (train.stop_on_breakdown) "
                                    f"without checkpointing this epoch; {_last_checkpoint_words(paths)}; "
                                    "lower the learning rates or change the loss")
                if epoch < schedule.epochs and stop.requested(None):
                    raise StopRequested()
        except (StopRequested, BrokenPipeError) as stopped:
            if isinstance(stopped, BrokenPipeError):  # a closed pipe outside `say` (the progress bar's stderr, say)
                stop.pipe_closed(first=True)
            if main_process:
                state.save(paths.last_checkpoint)
                # Weights from inside an epoch trained for no whole number of epochs: their file says none.
                outputs.finish(state.completed_epochs if state.step_in_epoch == 0 else None)
            raise stop.interrupted(state, paths) from None


def _finish(state: "TrainingState", outputs: "RunOutputs", paths: RunPaths, stop: "StopControl",
            distributed: Distributed, already_complete: bool) -> None:
    """After the last epoch: the replicas compared, missing outputs written, the final evaluation, the last words."""
    schedule, main_process = state.config.train, distributed.is_main
    if distributed.enabled:  # data parallelism must leave every process with the same networks
        digest = distributed.check_replicas(state.parts.generator, state.parts.discriminator)
        stop.say(f"all {distributed.world_size} processes hold identical weights (sha256 {digest[:16]})")
    if already_complete and main_process:
        # A run stopped after its last checkpoint but before its last outputs (killed then, say) gets
        # them from that checkpoint: curves, GIF and generator file, as the uninterrupted run wrote them.
        outputs.finish(state.completed_epochs)

    # The final evaluation: the finished generator's quality, unless a stop was asked for.
    stopped_unscored = bool(stop.signals and schedule.final_eval_samples)
    if main_process and not stop.signals:
        try:
            outputs.final_evaluation(state.completed_epochs, stop.say)
        except KeyboardInterrupt as interrupt:  # Ctrl-C (or SIGTERM) while scoring: training itself is complete
            signum = getattr(interrupt, "exit_status", 128 + signal.SIGINT) - 128
            raise TrainingInterrupted(f"stopped during the final evaluation; the run in {paths.root} is complete but "
                                      f"not scored: `mnistgan train --resume {paths.root}` scores it", signum) from None
    stop.say(f"done: {state.completed_epochs} epochs in {state.trained_seconds:.0f} s of training; "
             f"samples, curves and weights in {paths.root}")
    if state.breakdown:
        stop.say(f"warning: training broke down at {state.breakdown}; the samples are likely poor "
                 "(lower the learning rates, change the loss, or set train.stop_on_breakdown = true)")
    if state.alike:  # the last epoch's check failed (the last epoch always draws a grid)
        stop.say(f"warning: in the final samples, {state.alike}: {COLLAPSE_VERDICT} "
                 "(lower the learning rates, change the loss, or train longer)")
    if stop.signals:  # asked to stop while the last epoch's outputs were written: all of them are on disk
        unscored = f", but not scored: `mnistgan train --resume {paths.root}` scores it" if stopped_unscored else ""
        raise TrainingInterrupted(f"stopped after the last epoch; the run in {paths.root} is complete{unscored}",
                                  stop.signals[0])


def _train_epoch(epoch: int, state: "TrainingState", data: "TrainingData", stop: "StopControl",
                 progress: bool, checkpoint: Path | None) -> tuple[torch.Tensor, float, float]:
    """Run the rest of ``epoch``'s steps; return the epoch's per-step statistics, the seconds these steps
    took, and the images per second they read (all processes). ``checkpoint``: where to save when
    ``train.checkpoint_minutes`` have passed mid-epoch (None: this process does not save)."""
    from tqdm.auto import tqdm

    config, step, runner = state.config, state.parts.step, state.parts.runner
    # This epoch's order (this process's shard), the cursor at the resume point.
    step.order.copy_(data.epoch_order(config.train.seed, epoch)[: step.order.numel()])
    step.cursor.fill_(state.step_in_epoch * data.images_per_step)
    step.step_index.fill_(state.step_in_epoch)
    step.steps_done = (epoch - 1) * data.steps_per_epoch + state.step_in_epoch
    if state.parts.ema is not None:
        step.ema_weight.fill_(1.0 - ema_decay(config, epoch, data.steps_per_epoch))
    runner.set_learning_rates(*learning_rates(config, epoch))
    total = data.steps_per_epoch
    bar = tqdm(total=total, initial=state.step_in_epoch, desc=f"epoch {epoch}/{config.train.epochs}", leave=False,
               disable=not progress, unit="step", dynamic_ncols=True)
    start = last_refresh = state.epoch_started = time.perf_counter()
    first_step = state.step_in_epoch
    # Forward, backward, update: no host synchronisation but for the progress bar.
    while state.step_in_epoch < total:
        ran = runner.run(total - state.step_in_epoch)
        state.step_in_epoch += ran
        bar.update(ran)
        if not bar.disable and time.perf_counter() - last_refresh > 0.5:
            last_refresh = time.perf_counter()
            recent = step.stats[max(0, state.step_in_epoch - 20) : state.step_in_epoch].mean(0).tolist()
            rate = (state.step_in_epoch - first_step) * config.train.batch_size * real_batches_per_step(config) / (last_refresh - start)
            bar.set_postfix_str(f"d_loss {recent[0]:.3f}  g_loss {recent[1]:.3f}  {rate:,.0f} img/s")
        if state.step_in_epoch < total and stop.requested(state.step_in_epoch):
            raise StopRequested()
        if checkpoint is not None and state.step_in_epoch < total and state.checkpoint_due():
            state.save(checkpoint)
    epoch_stats = step.stats.cpu()  # the one synchronisation of the epoch
    seconds = time.perf_counter() - start
    state.trained_seconds, state.epoch_started = state.trained_seconds + seconds, None
    bar.close()
    images_read = (total - first_step) * config.train.batch_size * real_batches_per_step(config)
    return epoch_stats, seconds, images_read / seconds


def diverged_message(epoch: int, paths: RunPaths, what: str = "a loss became NaN or infinite") -> str:
    return (f"training diverged at epoch {epoch} ({what}); nothing diverged was saved, {_last_checkpoint_words(paths)}; "
            "lower the learning rates or change the loss")


def _last_checkpoint_words(paths: RunPaths) -> str:
    if paths.last_checkpoint.is_file():
        return f"the last good checkpoint is {paths.last_checkpoint}"
    return "and no checkpoint was written before it"


def require_fit(config: Config, dataset: Dataset) -> None:
    """The networks the config describes fit the dataset's images and classes (own images may have changed)."""
    model = config.model
    if model.channels != dataset.channels:
        raise UserError(f"{dataset.name} has {dataset.channels}-channel images but the run's networks take "
                        f"{model.channels} (model.channels); keep the dataset as it was, or start a new run")
    if model.conditional and dataset.labels is None:
        raise UserError(f"{dataset.name} has no labels (no class subfolders), so a conditional model cannot train on it; "
                        f"train without {option('conditional')}, or sort the images into one subfolder per class")
    if model.conditional and dataset.num_classes != model.num_classes:
        raise UserError(f"{dataset.name} has {dataset.num_classes} classes but the run's networks take "
                        f"{model.num_classes} (model.num_classes); keep the dataset as it was, or start a new run")


def _interactive() -> bool:
    return sys.stderr.isatty() or "ipykernel" in sys.modules


# ----------------------------------------------------------------------------------------------
# The stages' helpers


@dataclass
class TrainingData:
    """The training images on the device and how one process walks through them."""

    images: torch.Tensor  # uint8 (count, 1, 28, 28), the first ``count`` training images
    labels: torch.Tensor  # int64 (count,)
    count: int
    batch_size: int  # per process
    steps_per_epoch: int
    images_per_step: int  # real images one step of one process reads: batch_size x real_batches_per_step
    distributed: Distributed

    @classmethod
    def load(cls, config: Config, distributed: Distributed, device: torch.device, data_dir) -> "TrainingData":
        schedule = config.train
        dataset = load_dataset(config.data.dataset, "train", data_dir, config.data.channels)
        require_fit(config, dataset)
        split = dataset.split()
        if schedule.subset > len(split):
            raise UserError(f"train.subset = {schedule.subset} exceeds the {len(split)} training images")
        count = schedule.subset or len(split)
        if schedule.batch_size % distributed.world_size:
            raise UserError(f"train.batch_size {schedule.batch_size} must divide evenly among {distributed.world_size} processes")
        batch_size = schedule.batch_size // distributed.world_size
        if batch_size % config.model.pack:
            raise UserError(f"each of the {distributed.world_size} processes gets {batch_size} images a batch, not a multiple "
                            f"of model.pack {config.model.pack}; choose {option('batch_size')} as a multiple of both")
        batches = real_batches_per_step(config)
        steps_per_epoch = count // distributed.world_size // (batch_size * batches)
        if steps_per_epoch < 1:
            d_steps = f" x {batches} real batches a step" if batches > 1 else ""
            raise UserError(f"{count} training images make no full batch of {schedule.batch_size}{d_steps}; "
                            f"lower {option('batch_size')} or raise {option('subset')}")
        return cls(split.images[:count].to(device), split.labels[:count].to(device), count, batch_size,
                   steps_per_epoch, batch_size * batches, distributed)

    def epoch_order(self, seed: int, epoch: int) -> torch.Tensor:
        """This process's share of the epoch's permutation."""
        shard = self.count // self.distributed.world_size
        return epoch_order(seed, epoch, self.count)[self.distributed.rank * shard : (self.distributed.rank + 1) * shard]


@dataclass
class TrainingState:
    """Everything a run continues from: the networks and optimizers, the position in the schedule,
    the RNG states, and what training has measured. ``save`` writes it as a checkpoint, ``restore``
    reads one back."""

    config: Config
    parts: TrainingParts
    device: torch.device
    precision: str  # what the steps compute in: recorded so that a resume continues in it
    completed_epochs: int = 0
    step_in_epoch: int = 0  # steps done of the next epoch (a run stopped mid-epoch)
    best_quality: float = math.inf  # the lowest FD against training images (Stacked MNIST: reverse KL) seen so far
    trained_seconds: float = 0.0  # the steps of the finished epochs (and of a resumed epoch's first part)
    epoch_started: float | None = None  # perf_counter when this epoch's steps began, while they run
    breakdown: str | None = None  # the first epoch whose statistics showed a broken GAN, and why
    # The collapse check (metrics/spread.py): the first epoch of the latest unbroken series of failed checks,
    # and what the latest one found; None while the latest passed.
    alike_since: int | None = None
    alike: str | None = None
    saved_at: float = field(default_factory=time.monotonic)  # when training last checkpointed (or started)

    def checkpoint_due(self) -> bool:
        """Have ``train.checkpoint_minutes`` of training passed since the last checkpoint?"""
        minutes = self.config.train.checkpoint_minutes
        return minutes > 0 and time.monotonic() - self.saved_at >= 60 * minutes

    def training_seconds(self) -> float:
        """Training's own clock: the steps' seconds so far, this epoch's included."""
        running = time.perf_counter() - self.epoch_started if self.epoch_started is not None else 0.0
        return self.trained_seconds + running

    def checkpoint(self) -> dict:
        parts, device = self.parts, self.device
        return {
            "config": self.config.to_dict(),
            "epoch": self.completed_epochs, "step_in_epoch": self.step_in_epoch,
            "generator": parts.generator.state_dict(), "discriminator": parts.discriminator.state_dict(),
            "ema": parts.ema.state_dict() if parts.ema is not None else None,
            "g_optimizer": parts.g_optimizer.state_dict(), "d_optimizer": parts.d_optimizer.state_dict(),
            "partial_stats": parts.step.stats[: self.step_in_epoch].cpu(),
            "rng": {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            "best_quality": self.best_quality, "trained_seconds": self.training_seconds(), "breakdown": self.breakdown,
            "alike_since": self.alike_since, "alike": self.alike,
            "threads": torch.get_num_threads(), "precision": self.precision, "device_type": device.type,
        }

    def save(self, path: Path, restart_timer: bool = True) -> None:
        """Write a checkpoint; weights with NaN or infinity are never written over a good file.
        ``restart_timer``: this checkpoint is the one a resume reads, so the next one by time is due
        ``train.checkpoint_minutes`` from now (best.pt is not: writing it must not put off last.pt)."""
        try:
            save_checkpoint(self.checkpoint(), path)
        except NonFiniteError as error:
            epoch = self.completed_epochs + (self.step_in_epoch > 0)
            raise UserError(diverged_message(epoch, RunPaths(path.parent.parent), f"{error.location} became NaN or infinite")) from None
        if restart_timer:
            self.saved_at = time.monotonic()

    def restore(self, state: dict, path: Path) -> list[str]:
        """Continue from ``state``, the checkpoint read from ``path`` onto this device; return notes for
        the user (a changed thread count)."""
        parts, device = self.parts, self.device
        # load_checkpoint checked the entries present; a generator-only or half-written file lacks some.
        needed = ["generator", "discriminator", "g_optimizer", "d_optimizer", "epoch", "step_in_epoch", "rng"]
        needed += ["ema"] * (parts.ema is not None) + ["partial_stats"] * bool(state.get("step_in_epoch"))
        missing = [key for key in needed if state.get(key) is None]
        if missing:
            raise UserError(f"{path} is damaged or not a complete mnistgan checkpoint (no {', '.join(missing)} to resume from); "
                            "restore it from a copy or start a new run")
        _require_same_run(self.config, state["config"], path)
        load_weights(parts.generator, state["generator"], path)
        load_weights(parts.discriminator, state["discriminator"], path)
        if parts.ema is not None:
            load_weights(parts.ema, state["ema"], path)
        parts.g_optimizer.load_state_dict(state["g_optimizer"])
        parts.d_optimizer.load_state_dict(state["d_optimizer"])
        self.completed_epochs, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        needed = self.completed_epochs + (self.step_in_epoch > 0)
        if self.config.train.epochs < needed:
            partly = " and part of the next" if self.step_in_epoch else ""
            raise UserError(f"{path.parent.parent} has trained {self.completed_epochs} epochs{partly}; "
                            f"{option('epochs')} must be at least {needed}")
        self.best_quality = state.get("best_quality", state.get("best_fd", math.inf))  # best_fd: its name before
        self.trained_seconds = state.get("trained_seconds", 0.0)
        self.breakdown = state.get("breakdown")
        self.alike_since, self.alike = state.get("alike_since"), state.get("alike")
        if self.step_in_epoch:
            parts.step.stats[: self.step_in_epoch] = state["partial_stats"].to(device)
        # RNG states are CPU byte tensors whatever the map_location moved them to.
        torch.set_rng_state(state["rng"]["cpu"].cpu())
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)
        threads = state.get("threads")
        if device.type == "cpu" and threads is not None and threads != torch.get_num_threads():
            return [f"note: this run trained on {threads} CPU threads and continues on {torch.get_num_threads()}; "
                    "it stays a valid run but will not be bit-identical to an uninterrupted one "
                    f"(set performance.threads = {threads} for that)"]
        return []


def _require_same_run(config: Config, trained: dict, path: Path) -> None:
    """Refuse to resume with a config.toml edited in ways the checkpoint cannot continue exactly."""
    trained_config = stored_config_from_dict(trained).to_dict()
    now = config.to_dict()
    for section, values in now.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if resumable(dotted):
                continue
            if trained_config[section][key] != value:
                config_file = RunPaths(path.parent.parent).config  # the checkpoint lies in RUN/checkpoints/
                raise UserError(f"{config_file} says {dotted} = {value!r}, but {path} was trained with "
                                f"{trained_config[section][key]!r}; a run resumes only with the config it was "
                                f"trained with: restore that value in {config_file.name}, or start a new run")


# The numbers a run tracks, in order: metrics.csv's columns, the final evaluation's line, TensorBoard's
# curves (the evaluator's metrics; Stacked MNIST's modes instead). fd_train comes from evaluations during
# training only: best.pt is chosen by it, so the test images' numbers are reported and never chosen on.
TRACKED_METRICS = ("fd", "fd_train", "kid", "precision", "recall", "density", "coverage", "digits_covered", "classifier_score",
                   "conditional_accuracy")  # conditional runs: does asking for a 7 give a 7
TRACKED_MODES = ("modes_covered", "reverse_kl", "channel_confidence")


class RunOutputs:
    """What the first process writes into the run folder as training goes: the losses log and epoch
    line, the fixed-noise grids, evaluations, checkpoints, curves, the GIF, the generator file, the
    final evaluation, and (``train.tensorboard``) the TensorBoard log of all of them."""

    def __init__(self, config: Config, paths: RunPaths, parts: TrainingParts, device: torch.device, steps_per_epoch: int,
                 spread_check: SpreadCheck):
        self.config, self.paths, self.device, self.steps_per_epoch = config, paths, device, steps_per_epoch
        self.spread_check = spread_check
        self.sampler = parts.ema if parts.ema is not None else parts.generator  # what the grids and files show
        self.has_ema = parts.ema is not None
        self.fixed_noise, self.fixed_labels = fixed_inputs(config, device)
        self.title = f"{config.preset or 'custom config'}: {paths.root.name}"
        self.stacked = config.data.dataset == "stacked-mnist"
        self.evaluation_seed = evaluation_seed(config)
        self.last_evaluation: tuple[int, int, dict] | None = None  # (epoch, samples, result) of the latest evaluation
        self.tensorboard: TensorBoardLog | None = None
        if config.train.eval_every and not self.stacked:
            load_evaluator(device, dataset=config.data.dataset)  # none for this dataset: say so now, not epochs later
        if config.train.tensorboard:
            require_tensorboard()

    def open_tensorboard(self, completed_epochs: int) -> None:
        """Log to TensorBoard from the first step after ``completed_epochs`` (where a resumed run restarts)."""
        self.tensorboard = TensorBoardLog(self.paths.tensorboard, first_step=completed_epochs * self.steps_per_epoch + 1)

    def end_of_epoch(self, epoch: int, epoch_stats: torch.Tensor, seconds: float, images_per_second: float,
                     state: TrainingState, say, breakdown: str | None = None, stopping: bool = False) -> None:
        schedule, step = self.config.train, epoch * self.steps_per_epoch
        rows = loss_rows(epoch_stats, epoch, schedule.log_every)
        append_csv(self.paths.losses, ("step", "epoch") + STAT_COLUMNS, rows)
        g_lr, d_lr = learning_rates(self.config, epoch)
        if self.tensorboard:
            for row in rows:
                self.tensorboard.scalars("train", dict(zip(STAT_COLUMNS, map(float, row[2:]))), row[0])
            scalars = {"images_per_second": images_per_second, "generator_lr": g_lr, "discriminator_lr": d_lr}
            if self.has_ema:
                scalars["ema_decay"] = ema_decay(self.config, epoch, self.steps_per_epoch)
            self.tensorboard.scalars("train", scalars, step)
        last_epoch = epoch == schedule.epochs
        sampling = not stopping and (epoch % schedule.sample_every == 0 or last_epoch)
        evaluating = not stopping and schedule.eval_every and (epoch % schedule.eval_every == 0 or last_epoch)
        if sampling or evaluating:
            self._prepare_sampler()
        collapse = None
        if sampling:  # the collapse check goes with the grid it explains
            spreads = self.spread_check.ratios(self.sampler)
            state.alike = SpreadCheck.describe(spreads)
            state.alike_since = (state.alike_since or epoch) if state.alike else None
            # Not said in the run's first quarter: many GANs draw alike samples for their first epochs and
            # then spread out (docs/reliability.md, "Collapse").
            if state.alike and epoch > schedule.epochs / 4:
                collapse = f"since epoch {state.alike_since}, {state.alike}: {COLLAPSE_VERDICT}"
            if self.tensorboard and spreads:
                self.tensorboard.scalars("samples", {"spread": min(spreads.values())}, step)
        means = epoch_stats.mean(0).tolist()
        rates = ""
        if self.config.optim.lr_decay_epochs:  # the epoch's learning rates, where they change
            rates = f"  lr {g_lr:.3g}" + (f" (D {d_lr:.3g})" if d_lr != g_lr else "")
        say(f"epoch {epoch:>4}/{schedule.epochs}  d_loss {means[0]:.4f}  g_loss {means[1]:.4f}  "
            f"D(x) {means[2]:.3f}  D(G(z)) {means[3]:.3f}{rates}  {images_per_second:,.0f} img/s  {seconds:.1f} s"
            + "".join(f"  warning: {words}" for words in (breakdown, collapse) if words))
        if stopping:  # a broken epoch is not written over the last checkpoint
            return
        if sampling:
            grid = image_grid(generate(self.sampler, self.fixed_noise, self.fixed_labels), columns=grid_columns(self.config),
                              scale=4)
            save_image(grid, self.paths.sample_image(epoch))
            if self.tensorboard:
                self.tensorboard.image("samples", grid, step)
        if evaluating:
            result = self._evaluate(epoch)
            quality = float(result["reverse_kl" if self.stacked else "fd_train"])  # the number to minimise
            if quality < state.best_quality:
                state.best_quality = quality
                state.save(self.paths.best_checkpoint, restart_timer=False)
        if self.tensorboard:
            self.tensorboard.flush()  # before the checkpoint: what precedes it is never lost to a crash
        if epoch % schedule.checkpoint_every == 0 or last_epoch or state.checkpoint_due():
            state.save(self.paths.last_checkpoint)
        if sampling:
            self.write(epoch, final=last_epoch)

    def finish(self, epoch: int | None) -> None:
        """The final outputs of a run that stopped or ended after ``epoch`` epochs (None: inside an epoch),
        from the networks as they are now."""
        self._prepare_sampler()
        self.write(epoch, final=True)

    def write(self, epoch: int | None, final: bool) -> None:
        """Loss curves, GIF and the shareable generator: refreshed at sample times and at the end."""
        if self.paths.losses.is_file():
            plot_losses(read_csv_columns(self.paths.losses), self.paths.loss_curves, title=self.title)
        if final:
            save_gif(self.paths.sample_images(), self.paths.progress_gif)
        save_generator(self.sampler, self.config.to_dict(), self.paths.generator, "ema" if self.has_ema else "raw", epoch)
        if final:
            refresh_report(self.paths.root)

    def final_evaluation(self, epoch: int, say) -> None:
        """Score the finished generator (the file just written) on ``train.final_eval_samples`` samples, beside
        the real data's numbers: into metrics.json, one line, the report and TensorBoard. Where it cannot be
        scored (own images without an evaluator, say), one line says why: the run itself is complete."""
        samples = self.config.train.final_eval_samples
        if not samples:
            return
        record = self._final_evaluation_on_record(epoch, samples)
        if record is not None:  # a finished run resumed: the same weights, already scored
            # Written again after the generator file it describes, as a fresh score would be: not stale.
            write_metrics(self.paths, record)
            say(f"the generator of epoch {epoch} is already scored on {samples:,} samples: {self.paths.metrics_json}")
            refresh_report(self.paths.root)
            return
        try:
            if self.last_evaluation is not None and self.last_evaluation[:2] == (epoch, samples):
                # The last epoch's evaluation scored these very samples; the report gives the test images' numbers.
                result = {key: value for key, value in self.last_evaluation[2].items() if key != "fd_train"}
            else:
                self._prepare_sampler()
                result = self._score(samples)
            floor = real_floor(self.config.data.dataset, samples, self.device)
        except UserError as error:
            say(f"no final evaluation: {error} (the run is complete; `mnistgan evaluate --run {self.paths.root}` "
                "scores it later)")
            return
        record = metrics_record(result, self.config, self.evaluation_seed, self.paths.recorded(self.paths.generator),
                                epoch=epoch)
        if floor is not None:
            record["real_floor"] = floor
        # Written after the generator file it describes: a report reads an older metrics.json as stale.
        write_metrics(self.paths, record)
        if self.tensorboard:
            self.tensorboard.scalars("final", self._tracked(result), epoch * self.steps_per_epoch)
        numbers = "  ".join(f"{key} {value:.4g}" + (f" ({floor[key]:.4g})" if floor and key in floor else "")
                            for key, value in self._tracked(result).items())
        compared = "real data's in brackets" if floor is not None else f"no real floor: fewer than {samples:,} real images"
        say(f"final evaluation of the {'EMA ' if self.has_ema else ''}generator on {samples:,} samples ({compared}): {numbers}")
        refresh_report(self.paths.root)

    def _final_evaluation_on_record(self, epoch: int, samples: int) -> dict | None:
        """metrics.json's record if it holds this very evaluation (the same weights, epoch, samples and seed)."""
        try:
            record = read_metrics(self.paths)
        except UserError:  # damaged: score again
            return None
        wanted = {"epoch": epoch, "n": samples, "seed": self.evaluation_seed, "reference": "test",
                  "weights": self.paths.recorded(self.paths.generator)}
        same = record is not None and all(record.get(key) == value for key, value in wanted.items())
        return record if same else None

    def close(self) -> None:
        if self.tensorboard:
            self.tensorboard.close()

    def _prepare_sampler(self) -> None:
        if self.has_ema:
            refresh_batchnorm_statistics(self.sampler, self.config, self.device)

    def _evaluate(self, epoch: int) -> dict:
        """Score ``train.eval_samples`` samples; append the tracked numbers to metrics.csv (and TensorBoard)."""
        samples = self.config.train.eval_samples
        result = self._score(samples, train_fd=True)
        self.last_evaluation = (epoch, samples, result)
        tracked = self._tracked(result)
        row = [epoch] + [f"{value:.6g}" if isinstance(value, float) else value for value in tracked.values()]
        append_csv(self.paths.metrics_csv, ("epoch", *tracked), [row])
        plot_metrics(read_csv_columns(self.paths.metrics_csv), self.paths.metric_curves, title=self.title)
        if self.tensorboard:
            self.tensorboard.scalars("eval", tracked, epoch * self.steps_per_epoch)
        return result

    def _score(self, samples: int, train_fd: bool = False) -> dict:
        """The sampler's quality on ``samples`` samples of the evaluation's own noise: training's RNG stream is
        untouched, and every evaluation of the same weights at the same count scores the same images."""
        return score_generator(self.sampler, self.config.model, self.config.data.dataset, samples, self.evaluation_seed,
                               self.device, train_fd=train_fd)

    def _tracked(self, result: dict) -> dict:
        return {key: result[key] for key in (TRACKED_MODES if self.stacked else TRACKED_METRICS) if key in result}


def loss_rows(epoch_stats: torch.Tensor, epoch: int, log_every: int) -> list[list]:
    """One losses.csv row per ``log_every`` steps of the epoch: the mean of each statistic over those steps."""
    steps_per_epoch = len(epoch_stats)
    first_step = (epoch - 1) * steps_per_epoch
    rows = []
    for start in range(0, steps_per_epoch, log_every):
        chunk = epoch_stats[start : start + log_every].mean(0).tolist()
        end = min(start + log_every, steps_per_epoch)
        rows.append([first_step + end, epoch] + [f"{value:.6g}" for value in chunk])
    return rows


class StopRequested(Exception):
    """Raised inside the epoch loop when a stop was asked for; ends in ``TrainingInterrupted``."""


class StopControl:
    """Ctrl-C, SIGTERM or a closed output pipe ask training to stop; it stops at the next check, after
    a whole step, and checkpoints. Under torchrun every process agrees on the stop at the same steps.

    ``say`` prints the first process's lines; a closed pipe there (``mnistgan train | head``) is a
    stop request, not an error.
    """

    def __init__(self, distributed: Distributed, device: torch.device, log):
        self.distributed, self.device, self.log = distributed, device, log
        self.event = threading.Event()
        self.signals: list[int] = []  # why training was asked to stop, first reason first
        self.log_closed = False

    def say(self, *args, **kwargs) -> None:
        if not self.distributed.is_main or self.log_closed:
            return
        try:
            self.log(*args, **kwargs)
            sys.stdout.flush()  # each line at once, also in a log file (`nohup mnistgan train > log`)
        except BrokenPipeError:  # the reader left; stop as for Ctrl-C, all processes together
            self.log_closed = True
            self.pipe_closed()

    def pipe_closed(self, first: bool = False) -> None:
        self.signals.insert(0 if first else len(self.signals), signal.SIGPIPE)
        self.event.set()

    def _request(self, signum, _frame) -> None:
        self.signals.append(signum)
        self.event.set()

    def handling_signals(self):
        """Ctrl-C and SIGTERM request a stop while the epochs run (before that, they interrupt at once)."""
        return _SignalHandlers(self._request)

    def requested(self, step_in_epoch: int | None) -> bool:
        """A stop asked for? Under DDP all processes agree, at the same steps (every ``STOP_CHECK_STEPS``,
        and at epoch ends, ``step_in_epoch`` None)."""
        if not self.distributed.enabled:
            return self.event.is_set()
        if step_in_epoch is not None and step_in_epoch % STOP_CHECK_STEPS:
            return False
        return self.distributed.any_flag(self.event.is_set(), self.device)

    def interrupted(self, state: TrainingState, paths: RunPaths) -> TrainingInterrupted:
        if state.step_in_epoch:
            where = f"epoch {state.completed_epochs + 1}, step {state.step_in_epoch}"
        else:
            where = f"the end of epoch {state.completed_epochs}"
        return TrainingInterrupted(f"interrupted at {where}; checkpoint saved. Resume with: mnistgan train --resume {paths.root}",
                                   self.signals[0] if self.signals else signal.SIGINT)


class _SignalHandlers:
    """Installs ``handler`` for SIGINT and SIGTERM (main thread only) and restores the previous ones."""

    def __init__(self, handler):
        self.handler, self.previous = handler, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self.handler)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
