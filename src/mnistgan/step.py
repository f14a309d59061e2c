"""One training step (D update(s), then the G update(s), then the EMA) and what runs it.

A step is the discriminator update(s) and the generator update(s) after them (one of each unless the
config says). The update order and counts come from the config (``train.update``, ``train.d_steps``,
``train.g_steps``), never from code per preset. The data set lives on the training device as uint8;
each step gathers its batch from the epoch's permutation with a device-side cursor and writes its
statistics into a device buffer, so a step needs nothing from the host: the same step runs eagerly
or captured into CUDA graphs.

To change the optimizers: ``make_optimizer`` (and ``OptimConfig``); their learning rates per epoch:
``learning_rates``, which the training loop applies at each epoch's start (``StepRunner.set_learning_rates``).
To add a loss: ``losses.py`` (and ``LossConfig``); the step calls it by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from . import losses
from .config import Config
from .data import to_unit_range
from .devices import uses_channels_last
from .distributed import Distributed
from .models import build_discriminator, build_generator
from .sampling import draw_inputs

STAT_COLUMNS = ("d_loss", "g_loss", "d_real", "d_fake")  # what each step records, in this order


def real_batches_per_step(config: Config) -> int:
    """Real batches one step reads: one per D update, and a fresh one for each relativistic G update."""
    relativistic_g = config.loss.adversarial == "relativistic" and config.train.update == "alternating"
    return config.train.d_steps + relativistic_g * config.train.g_steps
GRAPH_WARMUP_STEPS = 3  # eager steps before CUDA graph capture (lazy state, cuDNN autotuning)


def make_optimizer(parameters, config: Config, lr: float, capturable: bool) -> torch.optim.Optimizer:
    optim = config.optim
    # Fused kernels: one launch for all parameters on CUDA, and the fastest update on CPU too.
    if optim.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=optim.momentum, fused=True)
    return torch.optim.Adam(parameters, lr=lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                            fused=True, capturable=capturable)


def learning_rates(config: Config, epoch: int) -> tuple[float, float]:
    """G's and D's learning rates during ``epoch`` (from 1): constant, or on ``optim.lr_decay_epochs``'
    cosine, taken at the epoch's middle, down to ``optim.lr_final_fraction`` of them after its last epoch."""
    optim = config.optim
    scale = 1.0
    if optim.lr_decay_epochs:
        progress = min((epoch - 0.5) / optim.lr_decay_epochs, 1.0)
        scale = optim.lr_final_fraction + (1 - optim.lr_final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
    return optim.generator_lr * scale, optim.discriminator_lr * scale


def ema_decay(config: Config, epoch: int, steps_per_epoch: int) -> float:
    """The EMA's decay during ``epoch`` (from 1): 0 (a copy of G) up to ``train.ema_start_epoch``, then
    ``train.ema_decay``, or with ``train.ema_rampup`` the shorter decay whose half-life is that fraction of
    the steps taken by the epoch's middle."""
    train = config.train
    if epoch <= train.ema_start_epoch:
        return 0.0
    if not train.ema_rampup:
        return train.ema_decay
    half_life_steps = train.ema_rampup * (epoch - 0.5) * steps_per_epoch
    return min(train.ema_decay, 0.5 ** (1 / half_life_steps))


@torch.no_grad()
def move_average(parameters: list, buffers: list, g_parameters: list, g_buffers: list, weight) -> None:
    """An EMA step of G: parameters += weight * (g - parameters) in one pass over the weights (``weight``
    a number, or one tensor per parameter), and G's buffers copied. G's parameters are read as they
    are: no_grad."""
    torch._foreach_lerp_(parameters, g_parameters, weight)
    if buffers:
        torch._foreach_copy_(buffers, g_buffers)


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
        # conv D on a CPU is faster in two passes (measured for both DCGAN presets and r3gan, docs/speed.md):
        # there a batch of 512 convolves slower per image than two of 256, and the G update's
        # backward would run through the real half too.
        conv_on_cpu = device.type == "cpu" and config.model.architecture != "mlp"
        self.joint_discriminator_pass = not config.model.discriminator_batchnorm and not conv_on_cpu
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=False)
        self.channels_last = uses_channels_last(config)

        images_per_epoch = steps_per_epoch * real_batches_per_step(config) * batch_size
        self.order = torch.zeros(images_per_epoch, dtype=torch.long, device=device)
        self.cursor = torch.zeros((), dtype=torch.long, device=device)
        self.offsets = torch.arange(batch_size, device=device)
        self.stats = torch.zeros(steps_per_epoch, len(STAT_COLUMNS), device=device)
        self.step_index = torch.zeros((), dtype=torch.long, device=device)
        # Steps of the whole run so far, on the host: which D updates carry R1/R2 (``loss.penalty_interval``).
        # The training loop sets it at each epoch's start (a resumed run included); each step adds one.
        self.steps_done = 0
        if ema is not None:
            self.ema_parameters = list(ema.parameters())
            self.ema_buffers = [b for b in ema.buffers()]
            self.g_buffers = [b for b in generator.buffers()]
            self.ema_weight = torch.ones((), device=device)  # 1 - decay; 1 copies G (before ema_start_epoch)
            self.ema_weights = [self.ema_weight] * len(self.ema_parameters)  # lerp takes one per tensor

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
        self.steps_done += 1

    def _penalised(self, d_step: int) -> bool:
        """Whether D update ``d_step`` of this step carries the R1/R2 penalties."""
        return (self.steps_done * self.config.train.d_steps + d_step) % self.config.loss.penalty_interval == 0

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        indices = self.order.index_select(0, self.cursor + self.offsets)
        self.cursor.add_(self.batch_size)
        real = to_unit_range(self.images.index_select(0, indices))  # (B, 1, 28, 28) in [-1, 1]
        if self.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        return real, (self.labels.index_select(0, indices) if self.conditional else None)

    def _noise(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return draw_inputs(self.config.model, self.batch_size, self.device)

    def _score(self, network, real, real_labels, fake, fake_labels) -> tuple[torch.Tensor, torch.Tensor]:
        """D's scores of real and fake images, in one forward pass when D allows it."""
        with self.autocast:
            if self.joint_discriminator_pass:
                labels = torch.cat([real_labels, fake_labels]) if self.conditional else None
                scores = network(torch.cat([real, fake]), labels).float()
                real_count = real.shape[0] // self.config.model.pack  # packed D: one score per pack
                return scores[:real_count], scores[real_count:]
            return network(real, real_labels).float(), network(fake, fake_labels).float()

    def _discriminator_objective(self, real, real_labels, fake, fake_labels, penalised: bool):
        """D's full loss (adversarial + penalties) and the real/fake scores it was computed from;
        R1 and R2 only where ``penalised``, then weighted by ``loss.penalty_interval``; the drift
        penalty on every update."""
        loss_config = self.config.loss
        weight = loss_config.penalty_interval if penalised else 0.0
        r1_gamma, r2_gamma = weight * loss_config.r1_gamma, weight * loss_config.r2_gamma
        if r1_gamma > 0:
            real = real.detach().requires_grad_(True)
        if r2_gamma > 0 and not fake.requires_grad:
            fake = fake.requires_grad_(True)  # a detached fake (alternating updates): a leaf of its own
        real_scores, fake_scores = self._score(self.discriminator_train, real, real_labels, fake, fake_labels)
        loss = losses.discriminator_loss(self.loss_kind, real_scores, fake_scores, loss_config.label_smoothing)
        if r1_gamma > 0:
            loss = loss + 0.5 * r1_gamma * losses.r1_penalty(real_scores, real)
        if r2_gamma > 0:
            loss = loss + 0.5 * r2_gamma * losses.r2_penalty(fake_scores, fake)
        if loss_config.drift_penalty > 0:
            loss = loss + loss_config.drift_penalty * losses.drift_penalty(real_scores)
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
            d_loss, real_scores, fake_scores = self._discriminator_objective(real, real_labels, fake.detach(), fake_labels,
                                                                             self._penalised(d_step))
            self.d_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_optimizer.step()
        g_loss = self._generator_update(fake, fake_labels)
        for _ in range(self.config.train.g_steps - 1):  # further G updates, each on fresh noise
            z, fake_labels = self._noise()
            with self.autocast:
                fake = self.generator_train(z, fake_labels)
            g_loss = self._generator_update(fake, fake_labels)
        return torch.stack([d_loss.detach(), g_loss.detach(),
                            losses.score_summary(self.loss_kind, real_scores), losses.score_summary(self.loss_kind, fake_scores)])

    def _generator_update(self, fake, fake_labels) -> torch.Tensor:
        # The updated D scores G's fakes; gradients flow to G's parameters only. D's parameters are
        # frozen meanwhile: a compiled backward would compute their gradients too.
        self.discriminator.requires_grad_(False)
        try:
            with self.autocast:
                g_scores = self.discriminator_score(fake, fake_labels).float()
                g_real_scores = None
                if self.loss_kind == "relativistic":  # the pairs' real side: a fresh batch, a constant for G
                    g_real, g_real_labels = self._next_batch()
                    with torch.no_grad():
                        g_real_scores = self.discriminator_score(g_real, g_real_labels).float()
        finally:
            self.discriminator.requires_grad_(True)
        g_loss = losses.generator_loss(self.loss_kind, g_scores, g_real_scores)
        self.g_optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(g_loss, inputs=self.g_parameters)
        self.g_optimizer.step()
        return g_loss

    def _simultaneous_step(self) -> torch.Tensor:
        # Both networks step from one forward pass (the TF tutorial's two gradient tapes):
        # G's gradient from its loss, D's from its own, both before either update.
        real, real_labels = self._next_batch()
        z, fake_labels = self._noise()
        with self.autocast:
            fake = self.generator_train(z, fake_labels)
        d_loss, real_scores, fake_scores = self._discriminator_objective(real, real_labels, fake, fake_labels,
                                                                         self._penalised(0))
        g_loss = losses.generator_loss(self.loss_kind, fake_scores, real_scores.detach())  # one batch: its reals pair
        self.g_optimizer.zero_grad(set_to_none=True)
        self.d_optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(g_loss, inputs=self.g_parameters, retain_graph=True)
        torch.autograd.backward(d_loss, inputs=self.d_parameters)
        self.g_optimizer.step()
        self.d_optimizer.step()
        return torch.stack([d_loss.detach(), g_loss.detach(),
                            losses.score_summary(self.loss_kind, real_scores), losses.score_summary(self.loss_kind, fake_scores)])

    def _update_ema(self) -> None:
        # The weight is a device tensor, so that graphs see its current value.
        move_average(self.ema_parameters, self.ema_buffers, self.g_parameters, self.g_buffers, self.ema_weights)


class StepRunner:
    """Runs training steps: eagerly, or by replaying CUDA graphs that each hold several whole steps."""

    def __init__(self, step: TrainingStep, use_graphs: bool, steps_per_graph: int):
        self.step = step
        self.use_graphs = use_graphs
        self.steps_per_graph = steps_per_graph
        self.warmup_left = GRAPH_WARMUP_STEPS
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}  # by (steps, phase)

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
        # A graph holds fixed steps: with penalties at intervals, which of its steps carry them
        # depends on where it starts, so graphs are kept per starting phase.
        key = (count, self.step.steps_done % self.step.config.loss.penalty_interval)
        steps_done = self.step.steps_done
        if key not in self.graphs:
            self.graphs[key] = self._capture(count)  # capture runs the Python side of the steps, not the kernels
        self.graphs[key].replay()
        self.step.steps_done = steps_done + count
        return count

    def set_learning_rates(self, generator_lr: float, discriminator_lr: float) -> None:
        """Use these learning rates from the next step on. A captured graph replays the learning rates it
        was captured with, so a change drops the graphs: they are captured again at their next use."""
        for optimizer, lr in ((self.step.g_optimizer, generator_lr), (self.step.d_optimizer, discriminator_lr)):
            for group in optimizer.param_groups:
                if group["lr"] != lr:
                    group["lr"] = lr
                    self.graphs.clear()

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
        seed_process_noise(config.train.seed, distributed.rank)  # same weights, different noise per rank
    use_graphs = device.type == "cuda" and perf.cuda_graphs and not distributed.enabled
    g_optimizer = make_optimizer(generator.parameters(), config, config.optim.generator_lr, capturable=use_graphs)
    d_optimizer = make_optimizer(discriminator.parameters(), config, config.optim.discriminator_lr, capturable=use_graphs)

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


def seed_process_noise(seed: int, rank: int, resumed_at: tuple[int, int] | None = None) -> None:
    """Seed the noise of process ``rank`` > 0 under torchrun, from the rank and, in a resumed run, from
    where it resumes (epochs done, steps into the next): a checkpoint holds the first process's random
    state only, which would otherwise give every process the same noise."""
    torch.manual_seed(seed + 7919 * rank if resumed_at is None else hash((seed, rank, *resumed_at)) % 2**64)


def epoch_order(seed: int, epoch: int, count: int) -> torch.Tensor:
    """The permutation of the training images for ``epoch``: a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**64)  # any train.seed: within 64 bits
    return torch.randperm(count, generator=generator)
