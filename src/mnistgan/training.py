"""The one training loop: every preset, loss, conditioning and device goes through ``train()``.

A training step is one generator update and the discriminator update(s) before it. The update
order and count come from the config (``train.update``, ``train.d_steps``), never from code per
preset. The data set lives on the training device as uint8; each step gathers its batch from the
epoch's permutation with a device-side cursor and writes its statistics into a device buffer, so
a step needs nothing from the host: the same step runs eagerly or captured into CUDA graphs.
"""

from __future__ import annotations

import csv
import errno
import io
import math
import signal
import sys
import threading
import time
from types import SimpleNamespace
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import losses
from .checkpoint import load_checkpoint, load_weights, save_checkpoint, save_generator
from .config import Config
from .data import load_mnist, to_unit_range
from .distributed import Distributed
from .errors import UserError
from .files import describe_os_error, temporary_target, write_bytes_atomically, write_text_atomically
from .models import build_discriminator, build_generator, sample_latent
from .plots import image_grid, plot_losses, plot_metrics, read_csv_columns, save_gif, save_image
from .rundir import RunPaths, unwritable_folder_message

STAT_COLUMNS = ("d_loss", "g_loss", "d_real", "d_fake")
GRID_SIZE = 16  # fixed-noise samples in the 4x4 grid
CONDITIONAL_GRID_COLUMNS = 8  # conditional grids: one row per digit, this many columns
GRAPH_WARMUP_STEPS = 3  # eager steps before CUDA graph capture (lazy state, cuDNN autotuning)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training after a checkpoint was written."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.message = message
        self.exit_status = 128 + signum  # what a shell reports for a process that signal stopped


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu" and device.index:
        raise UserError(f"device {name}: the CPU takes no index; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {name} is not supported; use auto, cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name} asked for but no CUDA GPU is visible; use --device cpu or --device auto")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise UserError(f"device {name} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
        device = torch.device("cuda", index)
    return device


def uses_channels_last(config: Config) -> bool:
    """Whether the networks and the real batches are kept channels-last: conv nets, when the setting is on."""
    return config.performance.channels_last and config.model.architecture == "dcgan"


def make_optimizer(parameters, config: Config, lr: float, device: torch.device, capturable: bool) -> torch.optim.Optimizer:
    optim = config.optim
    # Fused kernels: one launch for all parameters on CUDA, and the fastest update on CPU too.
    if optim.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=optim.momentum, fused=True)
    return torch.optim.Adam(parameters, lr=lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                            fused=True, capturable=capturable)


class TrainingStep:
    """One training step (D update(s), then the G update) on the device, with no host synchronisation.

    Inputs live in static device tensors: ``order`` (this epoch's image indices), ``cursor`` (the
    next position in it) and ``step_index`` (row of ``stats`` to write). That makes the step
    capturable into a CUDA graph as it is.
    """

    def __init__(self, config: Config, generator, discriminator, ema, g_optimizer, d_optimizer,
                 images: torch.Tensor, labels: torch.Tensor, batch_size: int, steps_per_epoch: int,
                 device: torch.device, precision: str, forward=None):
        self.config = config
        self.generator, self.discriminator, self.ema = generator, discriminator, ema
        # The callables that run the networks: the modules themselves, or their DDP / compiled
        # wrappers. Under DDP, D scores the fakes of the G update without its wrapper: D's
        # parameters get no gradient there, so there is nothing to average.
        forward = forward or {}
        self.generator_train = forward.get("generator", generator)
        self.discriminator_train = forward.get("discriminator", discriminator)
        self.discriminator_score = forward.get("discriminator_score", discriminator)
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        self.images, self.labels = images, labels
        self.batch_size, self.device = batch_size, device
        self.g_parameters = list(generator.parameters())
        self.d_parameters = list(discriminator.parameters())
        self.loss_kind = config.loss.adversarial
        self.conditional = config.model.conditional
        # One D forward for real and fake together halves the kernel launches, which bound the GPU,
        # and costs nothing for the MLPs on a CPU; BatchNorm in D (batch statistics) forbids it. The
        # conv D on a CPU is faster in two passes (2 cores: 7-9% per step for both DCGAN presets):
        # there a batch of 512 convolves slower per image than two of 256, and the G update's
        # backward would run through the real half too.
        conv_on_cpu = device.type == "cpu" and config.model.architecture == "dcgan"
        self.joint_discriminator_pass = not config.model.discriminator_batchnorm and not conv_on_cpu
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=False)
        self.channels_last = uses_channels_last(config)

        images_per_epoch = steps_per_epoch * config.train.d_steps * batch_size
        self.order = torch.zeros(images_per_epoch, dtype=torch.long, device=device)
        self.cursor = torch.zeros((), dtype=torch.long, device=device)
        self.offsets = torch.arange(batch_size, device=device)
        self.stats = torch.zeros(steps_per_epoch, len(STAT_COLUMNS), device=device)
        self.step_index = torch.zeros((), dtype=torch.long, device=device)
        if ema is not None:
            self.ema_parameters = list(ema.parameters())
            self.ema_buffers = [b for b in ema.buffers()]
            self.g_buffers = [b for b in generator.buffers()]
            self.ema_weight = torch.ones((), device=device)  # 1 - decay; 1 copies G (before ema_start_epoch)

    # -- one step ------------------------------------------------------------------------------
    def __call__(self) -> None:
        if self.config.train.update == "simultaneous":
            stats = self._simultaneous_step()
        else:
            stats = self._alternating_step()
        if self.ema is not None:
            self._update_ema()
        self.stats.index_copy_(0, self.step_index.view(1), stats.view(1, -1))
        self.step_index.add_(1)

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        indices = self.order.index_select(0, self.cursor + self.offsets)
        self.cursor.add_(self.batch_size)
        real = to_unit_range(self.images.index_select(0, indices))  # (B, 1, 28, 28) in [-1, 1]
        if self.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        return real, (self.labels.index_select(0, indices) if self.conditional else None)

    def _noise(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = sample_latent(self.config.model, self.batch_size, self.device)
        fake_labels = torch.randint(0, 10, (self.batch_size,), device=self.device) if self.conditional else None
        return z, fake_labels

    def _score(self, network, real, real_labels, fake, fake_labels) -> tuple[torch.Tensor, torch.Tensor]:
        """D's scores of real and fake images, in one forward pass when D allows it."""
        with self.autocast:
            if self.joint_discriminator_pass:
                labels = torch.cat([real_labels, fake_labels]) if self.conditional else None
                scores = network(torch.cat([real, fake]), labels).float()
                return scores[: real.shape[0]], scores[real.shape[0]:]
            return network(real, real_labels).float(), network(fake, fake_labels).float()

    def _discriminator_objective(self, real, real_labels, fake, fake_labels):
        """D's full loss (adversarial + penalties) and the real/fake scores it was computed from."""
        loss_config = self.config.loss
        if loss_config.r1_gamma > 0:
            real = real.detach().requires_grad_(True)
        real_scores, fake_scores = self._score(self.discriminator_train, real, real_labels, fake, fake_labels)
        loss = losses.discriminator_loss(self.loss_kind, real_scores, fake_scores, loss_config.label_smoothing)
        if loss_config.r1_gamma > 0:
            loss = loss + 0.5 * loss_config.r1_gamma * losses.r1_penalty(real_scores, real)
        if self.loss_kind == "wasserstein-gp" and loss_config.gp_lambda > 0:
            with self.autocast:
                penalty = losses.gradient_penalty(self.discriminator_train, real.detach(), fake.detach(), real_labels)
            loss = loss + loss_config.gp_lambda * penalty
        return loss, real_scores, fake_scores

    def _alternating_step(self) -> torch.Tensor:
        # D update(s): each on a fresh real batch and fresh fakes; the last batch of fakes is kept
        # (with its graph) for the G update, so G runs forward once per D update.
        for d_step in range(self.config.train.d_steps):
            real, real_labels = self._next_batch()
            z, fake_labels = self._noise()
            keep_graph = d_step == self.config.train.d_steps - 1
            with self.autocast, torch.set_grad_enabled(keep_graph):
                fake = self.generator_train(z, fake_labels)
            d_loss, real_scores, fake_scores = self._discriminator_objective(real, real_labels, fake.detach(), fake_labels)
            self.d_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_optimizer.step()
        # G update: the updated D scores the kept fakes; gradients flow to G's parameters only.
        # D's parameters are frozen meanwhile: a compiled backward would compute their gradients too.
        self.discriminator.requires_grad_(False)
        try:
            with self.autocast:
                g_scores = self.discriminator_score(fake, fake_labels).float()
        finally:
            self.discriminator.requires_grad_(True)
        g_loss = losses.generator_loss(self.loss_kind, g_scores)
        self.g_optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(g_loss, inputs=self.g_parameters)
        self.g_optimizer.step()
        return torch.stack([d_loss.detach(), g_loss.detach(),
                            losses.score_summary(self.loss_kind, real_scores), losses.score_summary(self.loss_kind, fake_scores)])

    def _simultaneous_step(self) -> torch.Tensor:
        # Both networks step from one forward pass (the TF tutorial's two gradient tapes):
        # G's gradient from its loss, D's from its own, both before either update.
        real, real_labels = self._next_batch()
        z, fake_labels = self._noise()
        with self.autocast:
            fake = self.generator_train(z, fake_labels)
        d_loss, real_scores, fake_scores = self._discriminator_objective(real, real_labels, fake, fake_labels)
        g_loss = losses.generator_loss(self.loss_kind, fake_scores)
        self.g_optimizer.zero_grad(set_to_none=True)
        self.d_optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(g_loss, inputs=self.g_parameters, retain_graph=True)
        torch.autograd.backward(d_loss, inputs=self.d_parameters)
        self.g_optimizer.step()
        self.d_optimizer.step()
        return torch.stack([d_loss.detach(), g_loss.detach(),
                            losses.score_summary(self.loss_kind, real_scores), losses.score_summary(self.loss_kind, fake_scores)])

    @torch.no_grad()
    def _update_ema(self) -> None:
        # ema += (1 - decay) * (g - ema), with the weight a device tensor so graphs see its current value.
        differences = torch._foreach_sub([p.detach() for p in self.g_parameters], self.ema_parameters)
        torch._foreach_mul_(differences, self.ema_weight)
        torch._foreach_add_(self.ema_parameters, differences)
        if self.ema_buffers:
            torch._foreach_copy_(self.ema_buffers, self.g_buffers)


class StepRunner:
    """Runs training steps: eagerly, or by replaying CUDA graphs that each hold several whole steps."""

    def __init__(self, step: TrainingStep, use_graphs: bool, steps_per_graph: int):
        self.step = step
        self.use_graphs = use_graphs
        self.steps_per_graph = steps_per_graph
        self.warmup_left = GRAPH_WARMUP_STEPS
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def run(self, remaining: int) -> int:
        """Run at most ``remaining`` steps (at least one); return how many ran."""
        if not self.use_graphs:
            self.step()
            return 1
        if self.warmup_left > 0:
            # Warm-up on a side stream, as graph capture requires: lazy optimizer state, cuDNN plans.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.step()
            torch.cuda.current_stream().wait_stream(side)
            self.warmup_left -= 1
            return 1
        count = self.steps_per_graph if remaining >= self.steps_per_graph else 1
        if count not in self.graphs:
            self.graphs[count] = self._capture(count)
        self.graphs[count].replay()
        return count

    def _capture(self, count: int) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):  # records the kernels; nothing runs until replay
            for _ in range(count):
                self.step()
        return graph


@dataclass
class TrainingParts:
    generator: nn.Module
    discriminator: nn.Module
    ema: nn.Module | None
    g_optimizer: torch.optim.Optimizer
    d_optimizer: torch.optim.Optimizer
    step: TrainingStep
    runner: StepRunner


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX); without them oneDNN
    emulates bf16 and it is slower than fp32 (2 GFLOP/s against ~150 on an AVX2-only EPYC)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_precision(config: Config, device: torch.device) -> str:
    """'auto': bf16 autocast (fp32 master weights) where it is measured faster, else fp32.

    CUDA: bf16 for the conv nets; the MLPs' matmuls at batch 64 are too small for bf16 to pay for
    its casts (on an H100 each MLP preset trained 7-13% faster in fp32 with TF32). CPU: bf16 for
    every model when the CPU computes bf16 natively (2 cores with AVX512-BF16: matrix products and
    convolutions ~2x faster, tf-dcgan-tutorial 1.6x and mlp-gan 1.35x per step), else fp32.
    """
    precision = config.performance.precision
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if config.model.architecture == "dcgan" else "fp32"
    return "bf16" if cpu_computes_bf16() else "fp32"


def configure_backends(device: torch.device, precision: str) -> None:
    """Process-wide CUDA settings for training: autotuned convolutions, TF32 when precision is fp32."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # conv algorithms chosen during the eager warm-up
        torch.backends.cuda.matmul.allow_tf32 = precision == "fp32"  # fp32 keeps 10-bit-mantissa matmuls: TF32
        torch.backends.cudnn.allow_tf32 = precision == "fp32"


def build_training(config: Config, device: torch.device, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                   steps_per_epoch: int, precision: str, distributed: Distributed = Distributed()) -> TrainingParts:
    """Networks (seeded by ``train.seed``), optimizers and the step machinery, ready to train on ``device``."""
    perf = config.performance
    torch.manual_seed(config.train.seed)
    generator = build_generator(config.model).to(device)
    discriminator = build_discriminator(config.model).to(device)
    ema = None
    if config.train.ema_decay > 0:
        ema = build_generator(config.model).to(device)
        ema.load_state_dict(generator.state_dict())
        ema.requires_grad_(False)
    if uses_channels_last(config):
        for network in (generator, discriminator, ema):
            if network is not None:
                network.to(memory_format=torch.channels_last)
    if distributed.rank > 0:
        torch.manual_seed(config.train.seed + 7919 * distributed.rank)  # same weights, different noise per rank
    use_graphs = device.type == "cuda" and perf.cuda_graphs and not distributed.enabled
    g_optimizer = make_optimizer(generator.parameters(), config, config.optim.generator_lr, device, capturable=use_graphs)
    d_optimizer = make_optimizer(discriminator.parameters(), config, config.optim.discriminator_lr, device, capturable=use_graphs)

    forward = {"generator": generator, "discriminator": discriminator, "discriminator_score": discriminator}
    if distributed.enabled:
        ids = [device.index] if device.type == "cuda" else None
        forward["generator"] = nn.parallel.DistributedDataParallel(generator, device_ids=ids)
        forward["discriminator"] = nn.parallel.DistributedDataParallel(discriminator, device_ids=ids)
    if perf.compile:
        forward = {name: torch.compile(network, dynamic=False) for name, network in forward.items()}
    step = TrainingStep(config, generator, discriminator, ema, g_optimizer, d_optimizer, images, labels,
                        batch_size, steps_per_epoch, device, precision, forward)
    return TrainingParts(generator, discriminator, ema, g_optimizer, d_optimizer, step,
                         StepRunner(step, use_graphs, perf.steps_per_graph))


def epoch_order(seed: int, epoch: int, count: int) -> torch.Tensor:
    """The permutation of the training images for ``epoch``: a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(count, generator=generator)


def fixed_inputs(config: Config, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fixed noise (and labels) of the sample grids, from their own generator (the seed's)."""
    generator = torch.Generator().manual_seed(config.train.seed)
    if config.model.conditional:
        z = sample_latent(config.model, CONDITIONAL_GRID_COLUMNS, "cpu", generator).repeat(10, 1)
        labels = torch.arange(10).repeat_interleave(CONDITIONAL_GRID_COLUMNS)
        return z.to(device), labels.to(device)
    return sample_latent(config.model, GRID_SIZE, "cpu", generator).to(device), None


@torch.no_grad()
def generate(network: nn.Module, z: torch.Tensor, labels: torch.Tensor | None, batch_size: int = 1000) -> torch.Tensor:
    """Images from a generator in eval mode (BatchNorm running statistics, no dropout), float32 on CPU."""
    was_training = network.training
    network.eval()
    chunks = []
    for start in range(0, z.shape[0], batch_size):
        part_labels = None if labels is None else labels[start : start + batch_size]
        chunks.append(network(z[start : start + batch_size], part_labels).float().cpu())
    network.train(was_training)
    return torch.cat(chunks) if chunks else torch.zeros(0, 1, 28, 28)


@torch.no_grad()
def refresh_batchnorm_statistics(network: nn.Module, config: Config, device: torch.device,
                                 batches: int = 16, batch_size: int = 256) -> None:
    """Recompute a generator's BatchNorm running statistics from its own outputs ("standing statistics").

    Uses its own seeded RNG and keeps dropout off, so the training RNG stream is untouched.
    """
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = network.training
    network.eval()
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average over the batches below
        module.train()
    generator = torch.Generator().manual_seed(config.train.seed + 2)
    for _ in range(batches):
        z = sample_latent(config.model, batch_size, "cpu", generator).to(device)
        labels = torch.randint(0, 10, (batch_size,), generator=generator).to(device) if config.model.conditional else None
        network(z, labels)
    for module, momentum in zip(norms, momenta):
        module.momentum = momentum
    network.train(was_training)


def _interactive() -> bool:
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def train(config: Config, run_dir: Path, *, data_dir=None, resume: bool = False, progress: bool | None = None,
          log=print) -> RunPaths:
    """Train (or continue training) the GAN that ``config`` describes; return the run's paths.

    ``resume`` continues from ``run_dir/checkpoints/last.pt`` to ``config.train.epochs`` epochs in
    total, bit for bit as if never interrupted (on CPU; CUDA kernels are not all deterministic).
    A file system failure (a full disk, say) ends training with one ``UserError``. Checkpoints and
    outputs are written atomically and resuming trims the CSV logs back to the checkpoint, so the
    run resumes from its last checkpoint as if the failure had not happened.
    """
    # _train records the folder it trains in (under torchrun, the one the first process chose).
    where = SimpleNamespace(paths=RunPaths(Path(run_dir)))
    try:
        return _train(config, where, data_dir=data_dir, resume=resume, progress=progress, log=log)
    except OSError as error:
        if isinstance(error, ConnectionError) or error.errno is None:
            raise
        raise UserError(_file_system_failure(error, where.paths)) from None


def _file_system_failure(error: OSError, paths: RunPaths) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        remedy = "free some space"
    elif error.errno == errno.EROFS:
        remedy = f"make {paths.root} writable"
    elif error.errno in (errno.EACCES, errno.EPERM):
        remedy = f"fix the permissions of {error.filename or paths.root}"
    else:
        remedy = "fix the cause"
    if paths.last_checkpoint.is_file():
        then = f"continue with: mnistgan train --resume {paths.root}"
    elif paths.samples.is_dir():  # the run started: its folder stays
        then = f"delete {paths.root} and train again"
    else:  # it never started, and gives its folder back
        then = "train again"
    return f"training stopped: {describe_os_error(error)}; {remedy}, then {then}"


def _train(config: Config, where: SimpleNamespace, *, data_dir, resume: bool, progress: bool | None, log) -> RunPaths:
    perf, train_config = config.performance, config.train
    device = resolve_device(perf.device)
    distributed = Distributed.from_environment(device.type)
    if distributed.enabled and device.type == "cuda":
        device = torch.device("cuda", distributed.local_rank)
    main_process = distributed.is_main
    stop = threading.Event()  # set by Ctrl-C, SIGTERM or a closed output pipe; training stops at the next check
    stop_signals: list[int] = []
    log_closed = []

    def say(*args, **kwargs) -> None:
        if not main_process or log_closed:
            return
        try:
            log(*args, **kwargs)
        except BrokenPipeError:  # `mnistgan train ... | head`: the reader left; stop as for Ctrl-C, all ranks together
            log_closed.append(True)
            stop_signals.append(signal.SIGPIPE)
            stop.set()

    if progress is None:
        progress = _interactive()
    if perf.threads:
        torch.set_num_threads(perf.threads)
    precision = resolve_precision(config, device)
    configure_backends(device, precision)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # The first process chose the run folder (a new runs/NNN one may be taken by the time the others look).
    paths = where.paths = RunPaths(Path(distributed.broadcast_object(str(where.paths.root))))

    # -- data: the whole training set on the device, uint8 ---------------------------------------
    split = load_mnist("train", data_dir)
    count = train_config.subset or len(split)
    if train_config.subset > len(split):
        raise UserError(f"train.subset = {train_config.subset} exceeds the {len(split)} training images")
    if train_config.batch_size % distributed.world_size:
        raise UserError(f"train.batch_size {train_config.batch_size} must divide evenly among {distributed.world_size} processes")
    batch_size = train_config.batch_size // distributed.world_size  # per process
    shard = count // distributed.world_size
    steps_per_epoch = shard // (batch_size * train_config.d_steps)
    if steps_per_epoch < 1:
        raise UserError(f"{count} training images make no full batch of {train_config.batch_size}"
                        f"{' x d_steps ' + str(train_config.d_steps) if train_config.d_steps > 1 else ''}; lower --batch-size or raise --subset")
    images = split.images[:count].to(device)
    labels = split.labels[:count].to(device)

    # -- networks, optimizers, the step ------------------------------------------------------------
    parts = build_training(config, device, images, labels, batch_size, steps_per_epoch, precision, distributed)
    generator, discriminator, ema = parts.generator, parts.discriminator, parts.ema
    g_optimizer, d_optimizer, step, runner = parts.g_optimizer, parts.d_optimizer, parts.step, parts.runner
    fixed_noise, fixed_labels = fixed_inputs(config, device)

    # -- start or resume ---------------------------------------------------------------------------
    completed_epochs, step_in_epoch, best_fd, trained_seconds = 0, 0, math.inf, 0.0
    if resume:
        state = load_checkpoint(paths.last_checkpoint, map_location=device)
        load_weights(generator, state["generator"], paths.last_checkpoint)
        load_weights(discriminator, state["discriminator"], paths.last_checkpoint)
        if ema is not None:
            load_weights(ema, state["ema"], paths.last_checkpoint)
        g_optimizer.load_state_dict(state["g_optimizer"])
        d_optimizer.load_state_dict(state["d_optimizer"])
        completed_epochs, step_in_epoch = state["epoch"], state["step_in_epoch"]
        if train_config.epochs < completed_epochs + (step_in_epoch > 0):
            raise UserError(f"{paths.root} has trained {completed_epochs} epochs{' and part of the next' if step_in_epoch else ''}; "
                            f"--epochs must be at least {completed_epochs + (step_in_epoch > 0)}")
        best_fd, trained_seconds = state.get("best_fd", math.inf), state.get("trained_seconds", 0.0)
        if step_in_epoch:
            step.stats[:step_in_epoch] = state["partial_stats"].to(device)
        # RNG states are CPU byte tensors whatever the map_location moved them to.
        torch.set_rng_state(state["rng"]["cpu"].cpu())
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)
        if main_process:
            _truncate_csv(paths.losses, completed_epochs)
            _truncate_csv(paths.metrics_csv, completed_epochs)
            _remove_stale_temporaries(paths)
            write_text_atomically(paths.config, config.to_toml())  # the new --epochs / --device, now that it resumes
    elif main_process:
        try:
            paths.samples.mkdir(parents=True, exist_ok=True)
            write_text_atomically(paths.config, config.to_toml())
        except OSError as error:
            raise UserError(unwritable_folder_message(paths.root, error)) from None

    def checkpoint_state() -> dict:
        return {
            "config": config.to_dict(),
            "epoch": completed_epochs, "step_in_epoch": step_in_epoch,
            "generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "g_optimizer": g_optimizer.state_dict(), "d_optimizer": d_optimizer.state_dict(),
            "partial_stats": step.stats[:step_in_epoch].cpu(),
            "rng": {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            "best_fd": best_fd, "trained_seconds": trained_seconds,
        }

    sampler = ema if ema is not None else generator

    def prepare_sampler() -> None:
        """The EMA generator's weights are an average, G's BatchNorm statistics are not: re-estimate them."""
        if ema is not None:
            refresh_batchnorm_statistics(ema, config, device)

    def write_outputs(final: bool) -> None:
        """Loss curves, GIF and the shareable generator: refreshed at sample times and at the end."""
        if paths.losses.is_file():
            plot_losses(read_csv_columns(paths.losses), paths.loss_curves, title=f"{config.preset or 'custom config'}: {paths.root.name}")
        if final:
            save_gif(paths.sample_images(), paths.progress_gif)
        save_generator(sampler, config.to_dict(), paths.generator, "ema" if ema is not None else "raw")
        if final:
            from .report import refresh_report

            refresh_report(paths.root)

    # -- Ctrl-C / SIGTERM: finish the step, checkpoint, stop -------------------------------------
    previous_handlers = {}

    def request_stop(signum, _frame) -> None:
        stop_signals.append(signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous_handlers[signum] = signal.signal(signum, request_stop)

    def stop_requested(step_in_epoch: int | None) -> bool:
        """Ctrl-C seen? Under DDP all ranks agree, at the same steps (every 50, and at epoch ends)."""
        if not distributed.enabled:
            return stop.is_set()
        if step_in_epoch is not None and step_in_epoch % 50:
            return False
        return distributed.any_flag(stop.is_set(), device)

    from tqdm.auto import tqdm

    images_per_step = train_config.batch_size * train_config.d_steps
    resumed_complete = completed_epochs >= train_config.epochs
    say(f"training {config.preset or 'a custom config'} on {device} ({precision}"
        f"{', CUDA graphs' if runner.use_graphs else ''}{f', {distributed.world_size} processes' if distributed.enabled else ''})"
        f": {count} images, {steps_per_epoch} steps of {train_config.batch_size} per epoch -> {paths.root}")
    try:
        for epoch in range(completed_epochs + 1, train_config.epochs + 1):
            # -- epoch setup: this epoch's order (this rank's shard), cursor at the resume point --
            order = epoch_order(train_config.seed, epoch, count)[distributed.rank * shard : (distributed.rank + 1) * shard]
            step.order.copy_(order[: step.order.numel()])
            step.cursor.fill_(step_in_epoch * batch_size * train_config.d_steps)
            step.step_index.fill_(step_in_epoch)
            if ema is not None:
                step.ema_weight.fill_(1.0 if epoch <= train_config.ema_start_epoch else 1.0 - train_config.ema_decay)
            bar = tqdm(total=steps_per_epoch, initial=step_in_epoch, desc=f"epoch {epoch}/{train_config.epochs}",
                       leave=False, disable=not (progress and main_process), unit="step", dynamic_ncols=True)
            epoch_start, last_refresh, first_step = time.perf_counter(), time.perf_counter(), step_in_epoch

            # -- forward/backward/update, no host synchronisation but for the progress bar --------
            while step_in_epoch < steps_per_epoch:
                ran = runner.run(steps_per_epoch - step_in_epoch)
                step_in_epoch += ran
                bar.update(ran)
                if not bar.disable and time.perf_counter() - last_refresh > 0.5:
                    last_refresh = time.perf_counter()
                    recent = step.stats[max(0, step_in_epoch - 20) : step_in_epoch].mean(0).tolist()
                    rate = (step_in_epoch - first_step) * images_per_step / (last_refresh - epoch_start)
                    bar.set_postfix_str(f"d_loss {recent[0]:.3f}  g_loss {recent[1]:.3f}  {rate:,.0f} img/s")
                if step_in_epoch < steps_per_epoch and stop_requested(step_in_epoch):
                    raise _Stop()
            epoch_stats = step.stats.cpu()  # the one synchronisation of the epoch
            seconds = time.perf_counter() - epoch_start
            trained_seconds += seconds
            bar.close()
            if not torch.isfinite(epoch_stats).all():
                raise UserError(f"training diverged at epoch {epoch} (a loss became NaN or infinite); the last good "
                                f"checkpoint is {paths.last_checkpoint}; lower the learning rates or change the loss")
            completed_epochs, step_in_epoch = epoch, 0

            # -- log, sample, evaluate, checkpoint ---------------------------------------------------
            if main_process:
                _append_losses(paths.losses, epoch_stats, epoch, steps_per_epoch, train_config.log_every)
                means = epoch_stats.mean(0).tolist()
                images_per_second = (steps_per_epoch - first_step) * images_per_step / seconds
                say(f"epoch {epoch:>4}/{train_config.epochs}  d_loss {means[0]:.4f}  g_loss {means[1]:.4f}  "
                    f"D(x) {means[2]:.3f}  D(G(z)) {means[3]:.3f}  {images_per_second:,.0f} img/s  {seconds:.1f} s")
                last_epoch = epoch == train_config.epochs
                sampling = epoch % train_config.sample_every == 0 or last_epoch
                evaluating = train_config.eval_every and (epoch % train_config.eval_every == 0 or last_epoch)
                if sampling or evaluating:
                    prepare_sampler()
                if sampling:
                    grid = generate(sampler, fixed_noise, fixed_labels)
                    columns = CONDITIONAL_GRID_COLUMNS if config.model.conditional else 4
                    save_image(image_grid(grid, columns=columns, scale=4), paths.sample_image(epoch))
                if evaluating:
                    fd = _evaluate_during_training(config, sampler, paths, epoch, device)
                    if fd < best_fd:
                        best_fd = fd
                        save_checkpoint(checkpoint_state(), paths.best_checkpoint)
                if epoch % train_config.checkpoint_every == 0 or last_epoch:
                    save_checkpoint(checkpoint_state(), paths.last_checkpoint)
                if sampling:
                    write_outputs(final=last_epoch)
            if epoch < train_config.epochs and stop_requested(None):
                raise _Stop()
    except (_Stop, BrokenPipeError) as stopped:
        if isinstance(stopped, BrokenPipeError):  # a closed pipe outside `say` (the progress bar's stderr, say)
            stop_signals.insert(0, signal.SIGPIPE)
        if main_process:
            save_checkpoint(checkpoint_state(), paths.last_checkpoint)
            prepare_sampler()
            write_outputs(final=True)
        where = f"epoch {completed_epochs + 1}, step {step_in_epoch}" if step_in_epoch else f"the end of epoch {completed_epochs}"
        raise TrainingInterrupted(f"interrupted at {where}; checkpoint saved. Resume with: mnistgan train --resume {paths.root}",
                                  stop_signals[0] if stop_signals else signal.SIGINT) from None
    else:
        if distributed.enabled:  # data parallelism must leave every process with the same networks
            digest = distributed.check_replicas(generator, discriminator)
            say(f"all {distributed.world_size} processes hold identical weights (sha256 {digest[:16]})")
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        distributed.close()
    if resumed_complete and main_process:
        # A run stopped after its last checkpoint but before its last outputs (killed then, say) gets
        # them from that checkpoint: curves, GIF and generator file, as the uninterrupted run wrote them.
        prepare_sampler()
        write_outputs(final=True)
    say(f"done: {completed_epochs} epochs in {trained_seconds:.0f} s of training; samples, curves and weights in {paths.root}")
    return paths


class _Stop(Exception):
    pass


def _append_losses(path: Path, epoch_stats: torch.Tensor, epoch: int, steps_per_epoch: int, log_every: int) -> None:
    """One CSV row per ``log_every`` steps of the epoch: the mean of each statistic over those steps."""
    new_file = not path.exists()
    first_step = (epoch - 1) * steps_per_epoch
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new_file:
            writer.writerow(("step", "epoch") + STAT_COLUMNS)
        for start in range(0, steps_per_epoch, log_every):
            chunk = epoch_stats[start : start + log_every].mean(0).tolist()
            end = min(start + log_every, steps_per_epoch)
            writer.writerow([first_step + end, epoch] + [f"{value:.6g}" for value in chunk])


def _remove_stale_temporaries(paths: RunPaths) -> None:
    """Temporaries of training's own writes that a killed run left behind; another command's (say, an
    ``evaluate`` writing metrics.json beside a resuming run) are left to it."""
    own = {path.name for path in (paths.config, paths.loss_curves, paths.metric_curves, paths.progress_gif, paths.generator,
                                  paths.report, paths.last_checkpoint, paths.best_checkpoint)}
    for folder in (paths.root, paths.samples, paths.checkpoints):
        for temporary in folder.glob(".*.tmp") if folder.is_dir() else ():
            target = temporary_target(temporary.name)
            if target is not None and (target in own or (folder == paths.samples and paths.is_sample_image(target))):
                temporary.unlink(missing_ok=True)


def _truncate_csv(path: Path, completed_epochs: int) -> None:
    """Drop rows written after the checkpoint being resumed (a crash between checkpoints)."""
    if not path.is_file():
        return
    text = path.read_text()
    if not text.endswith("\n"):  # the last row was cut short (a full disk, a kill mid-write)
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.reader(text.splitlines()))
    if not rows or "epoch" not in rows[0]:  # not even a whole header: start the file again
        path.unlink()
        return
    epoch_column = rows[0].index("epoch")
    kept = [rows[0]] + [row for row in rows[1:] if len(row) == len(rows[0]) and int(float(row[epoch_column])) <= completed_epochs]
    lines = io.StringIO(newline="")
    csv.writer(lines).writerows(kept)
    write_bytes_atomically(path, lines.getvalue().encode())  # bytes: the csv module already ended each row


def _evaluate_during_training(config: Config, sampler: nn.Module, paths: RunPaths, epoch: int, device: torch.device) -> float:
    """Score ``train.eval_samples`` samples (own RNG, so training's RNG stream is untouched); append to metrics.csv."""
    from .metrics import evaluate_images

    generator = torch.Generator().manual_seed(config.train.seed + 1)
    count = config.train.eval_samples
    z = sample_latent(config.model, count, "cpu", generator).to(device)
    labels = torch.randint(0, 10, (count,), generator=generator).to(device) if config.model.conditional else None
    samples = generate(sampler, z, labels)
    result = evaluate_images(samples, device=device, labels=None if labels is None else labels.cpu())
    columns = ("epoch", "fd", "kid", "precision", "recall", "density", "coverage", "digits_covered", "classifier_score")
    if labels is not None:  # does asking for a 7 give a 7, as training goes
        columns += ("conditional_accuracy",)
    row = {"epoch": epoch, **{key: result[key] for key in columns[1:]}}
    new_file = not paths.metrics_csv.exists()
    with open(paths.metrics_csv, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        if new_file:
            writer.writeheader()
        writer.writerow({key: (f"{value:.6g}" if isinstance(value, float) else value) for key, value in row.items()})
    plot_metrics(read_csv_columns(paths.metrics_csv), paths.metric_curves, title=f"{config.preset or 'custom config'}: {paths.root.name}")
    return float(result["fd"])
