"""The reference loop the benchmark measures against: the same models and the same math, written
the way most GAN training scripts are written.

A DataLoader over float CPU tensors (shuffled, per-sample indexing and collation), a copy of each
batch to the device, fp32, separate D passes over real and fake images, default (unfused)
optimizers, every backward computing every parameter's gradient, and ``.item()`` after every step
to log the losses.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from mnistgan import losses
from mnistgan.config import Config
from mnistgan.models import build_discriminator, build_generator
from mnistgan.sampling import sample_latent


def unsupported(config: Config) -> str | None:
    """Why the naive loop cannot reproduce ``config``'s training (None: it can). It implements the
    reference presets' math on MNIST: no R2 or drift penalty, R1 at intervals, relativistic loss, packed D,
    second G update or other dataset."""
    loss, model = config.loss, config.model
    reasons = [why for why, present in (("the R2 penalty", loss.r2_gamma > 0),
                                        ("the relativistic loss", loss.adversarial == "relativistic"),
                                        ("penalties at intervals", loss.penalty_interval > 1),
                                        ("the drift penalty", loss.drift_penalty > 0),
                                        ("a packed discriminator", model.pack > 1),
                                        ("several G updates a step", config.train.g_steps > 1),
                                        (f"the {config.data.dataset} dataset", config.data.dataset != "mnist")) if present]
    return ", ".join(reasons) or None


class NaiveLoop:
    def __init__(self, config: Config, device: torch.device, images_uint8: torch.Tensor, labels: torch.Tensor,
                 order: torch.Tensor | None = None, noise=None):
        self.config, self.device = config, device
        torch.manual_seed(config.train.seed)
        self.generator = build_generator(config.model).to(device)
        self.discriminator = build_discriminator(config.model).to(device)
        self.ema = None
        if config.train.ema_decay > 0:
            self.ema = build_generator(config.model).to(device)
            self.ema.load_state_dict(self.generator.state_dict())
        optim = config.optim
        if optim.optimizer == "sgd":
            make = lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=optim.momentum)  # noqa: E731
        else:
            make = lambda params, lr: torch.optim.Adam(params, lr=lr, betas=(optim.beta1, optim.beta2), eps=optim.eps)  # noqa: E731
        self.g_optimizer = make(self.generator.parameters(), optim.generator_lr)
        self.d_optimizer = make(self.discriminator.parameters(), optim.discriminator_lr)
        dataset = TensorDataset(images_uint8.float() / 127.5 - 1, labels)
        batch = config.train.batch_size
        if order is not None:  # a given order (equivalence tests); otherwise the usual shuffle
            self.loader = DataLoader(dataset, batch_size=batch, sampler=order.tolist(), drop_last=True)
        else:
            self.loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True)
        self.batches = iter(self.loader)
        self.noise = noise  # callable returning z, for equivalence tests
        self.history: list[tuple[float, float]] = []

    def _batch(self):
        try:
            images, labels = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            images, labels = next(self.batches)
        return images.to(self.device), labels.to(self.device)

    def _latent(self, n):
        z = self.noise() if self.noise is not None else sample_latent(self.config.model, n, self.device)
        labels = torch.randint(0, 10, (n,), device=self.device) if self.config.model.conditional else None
        return z, labels

    def _d_loss(self, real, real_labels, fake, fake_labels):
        kind, loss_config = self.config.loss.adversarial, self.config.loss
        if loss_config.r1_gamma > 0:
            real.requires_grad_(True)
        real_scores = self.discriminator(real, real_labels if self.config.model.conditional else None)
        fake_scores = self.discriminator(fake, fake_labels)
        loss = losses.discriminator_loss(kind, real_scores, fake_scores, loss_config.label_smoothing)
        if loss_config.r1_gamma > 0:
            loss = loss + 0.5 * loss_config.r1_gamma * losses.r1_penalty(real_scores, real)
        if kind == "wasserstein-gp" and loss_config.gp_lambda > 0:
            loss = loss + loss_config.gp_lambda * losses.gradient_penalty(self.discriminator, real.detach(), fake.detach(),
                                                                          real_labels if self.config.model.conditional else None)
        return loss, fake_scores

    def step(self) -> None:
        config, kind = self.config, self.config.loss.adversarial
        if config.train.update == "simultaneous":
            real, real_labels = self._batch()
            z, fake_labels = self._latent(real.shape[0])
            fake = self.generator(z, fake_labels)
            d_loss, fake_scores = self._d_loss(real, real_labels, fake, fake_labels)
            g_loss = losses.generator_loss(kind, fake_scores)
            g_grads = torch.autograd.grad(g_loss, list(self.generator.parameters()), retain_graph=True)
            d_grads = torch.autograd.grad(d_loss, list(self.discriminator.parameters()))
            for parameter, gradient in zip(self.generator.parameters(), g_grads):
                parameter.grad = gradient
            for parameter, gradient in zip(self.discriminator.parameters(), d_grads):
                parameter.grad = gradient
            self.g_optimizer.step()
            self.d_optimizer.step()
        else:
            for _ in range(config.train.d_steps):
                real, real_labels = self._batch()
                z, fake_labels = self._latent(real.shape[0])
                fake = self.generator(z, fake_labels)
                self.d_optimizer.zero_grad()
                d_loss, _ = self._d_loss(real, real_labels, fake.detach(), fake_labels)
                d_loss.backward()
                self.d_optimizer.step()
            self.g_optimizer.zero_grad()
            g_loss = losses.generator_loss(kind, self.discriminator(fake, fake_labels))
            g_loss.backward()
            self.g_optimizer.step()
        if self.ema is not None:
            with torch.no_grad():
                for average, parameter in zip(self.ema.parameters(), self.generator.parameters()):
                    average.mul_(config.train.ema_decay).add_(parameter, alpha=1 - config.train.ema_decay)
                for average, buffer in zip(self.ema.buffers(), self.generator.buffers()):
                    average.copy_(buffer)
        self.history.append((d_loss.item(), g_loss.item()))
