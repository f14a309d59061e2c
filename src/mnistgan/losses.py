"""Adversarial losses and regularisers, each a small pure function of the discriminator's raw scores.

``real_scores`` and ``fake_scores`` are D's outputs before any sigmoid (logits), shape (N,).
Each loss is the quantity its network minimises, averaged over the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Losses whose D output is a probability after a sigmoid; the others' scores are unbounded.
PROBABILISTIC_LOSSES = ("minimax", "non-saturating")


def discriminator_loss(kind: str, real_scores: torch.Tensor, fake_scores: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """D's adversarial loss. ``label_smoothing`` s makes the real target 1 - s (one-sided)."""
    real_target = 1.0 - label_smoothing
    if kind in PROBABILISTIC_LOSSES:
        # -log D(x) - log(1 - D(G(z))), with D = sigmoid(score); BCE with logits is the stable form.
        return (F.binary_cross_entropy_with_logits(real_scores, torch.full_like(real_scores, real_target))
                + F.binary_cross_entropy_with_logits(fake_scores, torch.zeros_like(fake_scores)))
    if kind == "least-squares":
        # LSGAN (Mao et al. 2017) with targets b = 1 for real, a = 0 for fake.
        return 0.5 * ((real_scores - real_target) ** 2).mean() + 0.5 * (fake_scores**2).mean()
    if kind == "hinge":
        return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()
    if kind == "wasserstein-gp":
        return fake_scores.mean() - real_scores.mean()
    if kind == "relativistic":
        # RpGAN (Jolicoeur-Martineau 2019; R3GAN): -log sigmoid(D(x) - D(G(z))), pairing each real with a fake.
        return F.softplus(fake_scores - real_scores).mean()
    raise ValueError(f"unknown adversarial loss {kind!r}")


def generator_loss(kind: str, fake_scores: torch.Tensor, real_scores: torch.Tensor | None = None) -> torch.Tensor:
    """G's adversarial loss on D's scores of generated images (and, for ``relativistic``, of real ones)."""
    if kind == "relativistic":  # the mirror image of D's: -log sigmoid(D(G(z)) - D(x))
        if real_scores is None:
            raise ValueError("the relativistic loss pairs each fake with a real image's score")
        return F.softplus(real_scores - fake_scores).mean()
    if kind == "minimax":
        # The original objective: minimise log(1 - D(G(z))) = -softplus(score). It saturates when D wins.
        return -F.softplus(fake_scores).mean()
    if kind == "non-saturating":
        # -log D(G(z)): BCE against the 'real' label ("flipped labels").
        return F.binary_cross_entropy_with_logits(fake_scores, torch.ones_like(fake_scores))
    if kind == "least-squares":
        return 0.5 * ((fake_scores - 1.0) ** 2).mean()
    if kind in ("hinge", "wasserstein-gp"):
        return -fake_scores.mean()
    raise ValueError(f"unknown adversarial loss {kind!r}")


def r1_penalty(real_scores: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """E[||grad_x D(x)||^2] on real images (Mescheder et al. 2018); weight it by gamma / 2.

    ``real_images`` must have required grad before ``real_scores`` were computed from them.
    """
    return _squared_input_gradient(real_scores, real_images)


def r2_penalty(fake_scores: torch.Tensor, fake_images: torch.Tensor) -> torch.Tensor:
    """E[||grad_x D(x)||^2] on generated images, R1's twin (R3GAN uses both); weight it by gamma / 2."""
    return _squared_input_gradient(fake_scores, fake_images)


def drift_penalty(real_scores: torch.Tensor) -> torch.Tensor:
    """E[D(x)^2] on real images (Karras et al. 2018, ProGAN's drift term); weight it by epsilon.

    The relativistic and Wasserstein losses, R1 and R2 are all unchanged by a constant added to every
    score, so nothing else holds the scores' common level; this pulls it back towards 0, where bf16
    still resolves the small differences between scores that D learns from.
    """
    return real_scores.float().pow(2).mean()


def _squared_input_gradient(scores: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    (gradient,) = torch.autograd.grad(scores.sum(), images, create_graph=True)
    return gradient.float().pow(2).flatten(1).sum(1).mean()


def gradient_penalty(discriminator, real_images: torch.Tensor, fake_images: torch.Tensor,
                     labels: torch.Tensor | None = None) -> torch.Tensor:
    """E[(||grad D(x_hat)||_2 - 1)^2] at random interpolates of real and fake (Gulrajani et al. 2017).

    For a conditional D the interpolates are scored with the real images' labels.
    """
    mix = torch.rand(real_images.shape[0], 1, 1, 1, device=real_images.device, dtype=real_images.dtype)
    interpolates = (mix * real_images + (1 - mix) * fake_images).requires_grad_(True)
    scores = discriminator(interpolates, labels)
    (gradient,) = torch.autograd.grad(scores.sum(), interpolates, create_graph=True)
    norms = gradient.float().flatten(1).norm(dim=1)
    return ((norms - 1.0) ** 2).mean()


BREAKDOWN_LOSS = 1e4  # |loss| above this for a whole epoch: exploded (healthy losses of every kind are O(1-100))
SATURATED = 0.999  # D(x) above this and D(G(z)) below 1 - this for a whole epoch: D wins outright


def breakdown(kind: str, d_loss: float, g_loss: float, d_real: float, d_fake: float, precision: str = "fp32") -> str | None:
    """Why an epoch's mean statistics (as in losses.csv) show a GAN that has stopped learning, or None.

    Losses that explode stay finite long before they become NaN, and a D that rejects every fake with
    certainty gives G no gradient: neither recovers on its own. Unbounded scores trained in bf16 fail
    a third way: where their common level has drifted far from 0, bf16's spacing there is as coarse as
    the real-fake gap D learns from, and its updates follow rounding noise.
    """
    if max(abs(d_loss), abs(g_loss)) > BREAKDOWN_LOSS:
        return f"the losses exploded (d_loss {d_loss:.3g}, g_loss {g_loss:.3g})"
    if kind in PROBABILISTIC_LOSSES:
        if d_real > SATURATED and d_fake < 1 - SATURATED:
            return f"D saturated for the whole epoch (D(x) {d_real:.3f}, D(G(z)) {d_fake:.3f}): G gets no gradient"
    elif precision == "bf16":
        level, gap = (d_real + d_fake) / 2, abs(d_real - d_fake)
        spacing = bf16_spacing(level)
        if spacing >= gap:
            return (f"D's scores sit near {level:.3g}, where bf16 numbers are {spacing:.3g} apart, no finer "
                    f"than the real-fake gap {gap:.3g}: D learns from rounding noise (train in fp32, or hold the level "
                    "with loss.drift_penalty)")
    return None


def bf16_spacing(value: float) -> float:
    """The distance between neighbouring bf16 numbers at ``value`` (8 significant bits)."""
    _, exponent = math.frexp(abs(value))  # |value| = m * 2**exponent, 0.5 <= m < 1
    return 2.0 ** (exponent - 8) if value else 0.0


def score_summary(kind: str, scores: torch.Tensor) -> torch.Tensor:
    """The mean D output reported in losses.csv: a probability for BCE losses, the raw score otherwise."""
    scores = scores.detach().float()
    return torch.sigmoid(scores).mean() if kind in PROBABILISTIC_LOSSES else scores.mean()
