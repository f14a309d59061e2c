import math

import pytest
import torch

from mnistgan import losses

REAL = torch.tensor([2.0, -1.0, 0.5])
FAKE = torch.tensor([-3.0, 0.0, 1.0])


def softplus(x):
    return math.log1p(math.exp(x))


def mean(values):
    return sum(values) / len(values)


def test_bce_discriminator_loss_by_hand():
    # -log sigmoid(r) = softplus(-r); -log(1 - sigmoid(f)) = softplus(f)
    expected = mean([softplus(-r) for r in REAL.tolist()]) + mean([softplus(f) for f in FAKE.tolist()])
    for kind in ("minimax", "non-saturating"):
        assert losses.discriminator_loss(kind, REAL, FAKE).item() == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_lowers_the_real_target():
    s = 0.1
    expected = mean([(1 - s) * softplus(-r) + s * softplus(r) for r in REAL.tolist()]) + mean([softplus(f) for f in FAKE.tolist()])
    assert losses.discriminator_loss("non-saturating", REAL, FAKE, s).item() == pytest.approx(expected, rel=1e-6)


def test_generator_losses_by_hand():
    assert losses.generator_loss("non-saturating", FAKE).item() == pytest.approx(mean([softplus(-f) for f in FAKE.tolist()]), rel=1e-6)
    assert losses.generator_loss("minimax", FAKE).item() == pytest.approx(mean([-softplus(f) for f in FAKE.tolist()]), rel=1e-6)
    assert losses.generator_loss("least-squares", FAKE).item() == pytest.approx(0.5 * mean([(f - 1) ** 2 for f in FAKE.tolist()]))
    assert losses.generator_loss("hinge", FAKE).item() == pytest.approx(-mean(FAKE.tolist()))
    assert losses.generator_loss("wasserstein-gp", FAKE).item() == pytest.approx(-mean(FAKE.tolist()))


def test_least_squares_hinge_wasserstein_discriminator_losses_by_hand():
    r, f = REAL.tolist(), FAKE.tolist()
    assert losses.discriminator_loss("least-squares", REAL, FAKE).item() == pytest.approx(
        0.5 * mean([(x - 1) ** 2 for x in r]) + 0.5 * mean([x**2 for x in f]))
    assert losses.discriminator_loss("hinge", REAL, FAKE).item() == pytest.approx(
        mean([max(0, 1 - x) for x in r]) + mean([max(0, 1 + x) for x in f]))
    assert losses.discriminator_loss("wasserstein-gp", REAL, FAKE).item() == pytest.approx(mean(f) - mean(r))


def test_minimax_saturates_where_non_saturating_does_not():
    """When D confidently rejects fakes, minimax gives G almost no gradient; the non-saturating loss does."""
    rejected = torch.tensor([-8.0], requires_grad=True)
    (minimax_gradient,) = torch.autograd.grad(losses.generator_loss("minimax", rejected), rejected)
    (non_saturating_gradient,) = torch.autograd.grad(losses.generator_loss("non-saturating", rejected), rejected)
    assert abs(minimax_gradient.item()) < 1e-3 < abs(non_saturating_gradient.item())


class Linear(torch.nn.Module):
    """D(x) = <w, x>: its input gradient is w everywhere, so the penalties are known in closed form."""

    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def forward(self, images, labels=None):
        return (images.flatten(1) * self.weight).sum(1)


def test_gradient_penalty_of_a_linear_critic():
    weight = torch.full((784,), 2.0 / 28)  # ||w|| = 2
    real, fake = torch.randn(6, 1, 28, 28), torch.randn(6, 1, 28, 28)
    assert losses.gradient_penalty(Linear(weight), real, fake).item() == pytest.approx(1.0, rel=1e-5)
    unit = torch.full((784,), 1.0 / 28)  # ||w|| = 1: no penalty
    assert losses.gradient_penalty(Linear(unit), real, fake).item() == pytest.approx(0.0, abs=1e-8)


def test_gradient_penalty_pushes_the_gradient_norm_towards_one():
    weight = torch.full((784,), 3.0 / 28, requires_grad=True)
    real, fake = torch.randn(6, 1, 28, 28), torch.randn(6, 1, 28, 28)
    optimizer = torch.optim.SGD([weight], lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        losses.gradient_penalty(Linear(weight), real, fake).backward()
        optimizer.step()
    assert weight.norm().item() == pytest.approx(1.0, abs=0.02)


def test_r1_penalty_of_a_linear_critic():
    weight = torch.full((784,), 3.0 / 28)  # ||w||^2 = 9
    real = torch.randn(4, 1, 28, 28, requires_grad=True)
    scores = Linear(weight)(real)
    assert losses.r1_penalty(scores, real).item() == pytest.approx(9.0, rel=1e-5)


def test_score_summary_is_a_probability_for_bce_losses():
    scores = torch.tensor([0.0, 0.0])
    assert losses.score_summary("non-saturating", scores).item() == 0.5
    assert losses.score_summary("hinge", scores).item() == 0.0


def test_breakdown_names_exploded_losses_and_a_saturated_d():
    assert losses.breakdown("non-saturating", 1.2, 0.8, 0.7, 0.3) is None
    assert "exploded" in losses.breakdown("hinge", 3e13, -2.0, 5.0, -5.0)
    assert "exploded" in losses.breakdown("least-squares", 0.1, -2e5, 0.5, 0.5)
    assert "saturated" in losses.breakdown("non-saturating", 0.0, 30.0, 0.9995, 0.0002)
    # Unbounded scores mean nothing as probabilities: a large raw score is not saturation.
    assert losses.breakdown("wasserstein-gp", -5.0, 3.0, 5000.0, -5000.0) is None
    assert losses.breakdown("minimax", 0.02, -0.001, 0.995, 0.01) is None  # close to, not past, the line


def test_breakdown_in_bf16_names_a_level_whose_spacing_swamps_the_real_fake_gap():
    # The level of a run whose unbounded scores had drifted: bf16 spaces numbers near 27.7 0.125 apart.
    drifted = ("relativistic", 0.69, 0.70, -27.7, -27.75)
    assert "rounding noise" in losses.breakdown(*drifted, precision="bf16")
    assert losses.breakdown(*drifted, precision="fp32") is None  # fp32 resolves 0.05 there with room to spare
    assert losses.breakdown("relativistic", 0.5, 1.0, -7.5, -7.8, precision="bf16") is None  # 0.03 apart, gap 0.3
    assert losses.breakdown("wasserstein-gp", -0.1, 0.1, 300.0, 297.5, precision="bf16") is None  # 2 apart, gap 2.5
    assert "rounding noise" in losses.breakdown("wasserstein-gp", -0.1, 0.1, 300.0, 298.5, precision="bf16")
    # Probabilities are bounded: the check is for raw scores only.
    assert losses.breakdown("non-saturating", 1.38, 0.69, 0.5, 0.5, precision="bf16") is None


@pytest.mark.parametrize("value", [0.3, 1.0, 1.5, 2.0, -7.66, 27.7, 300.0])
def test_bf16_spacing_is_the_gap_to_the_next_bf16_number(value):
    number = torch.tensor(abs(value), dtype=torch.bfloat16)
    following = torch.nextafter(number, torch.tensor(float("inf"), dtype=torch.bfloat16))
    assert losses.bf16_spacing(value) == (following.float() - number.float()).item()


def test_drift_penalty_by_hand_is_the_one_term_that_sees_the_scores_level():
    assert losses.drift_penalty(REAL).item() == pytest.approx((4.0 + 1.0 + 0.25) / 3, rel=1e-6)
    shifted_real, shifted_fake = REAL + 10.0, FAKE + 10.0
    # A constant added to every score changes neither the relativistic loss nor WGAN's: only this term.
    for kind in ("relativistic", "wasserstein-gp"):
        assert losses.discriminator_loss(kind, shifted_real, shifted_fake).item() == pytest.approx(
            losses.discriminator_loss(kind, REAL, FAKE).item(), rel=1e-6)
    assert losses.drift_penalty(shifted_real).item() > losses.drift_penalty(REAL).item() + 50


def test_relativistic_losses_by_hand():
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.0, 1.0, 0.5])
    d_expected = mean([softplus(f - r) for r, f in zip(real.tolist(), fake.tolist())])  # -log sigmoid(D(x) - D(G(z)))
    g_expected = mean([softplus(r - f) for r, f in zip(real.tolist(), fake.tolist())])
    assert losses.discriminator_loss("relativistic", real, fake).item() == pytest.approx(d_expected, rel=1e-6)
    assert losses.generator_loss("relativistic", fake, real).item() == pytest.approx(g_expected, rel=1e-6)
    # Equal scores: the pair is a coin toss, ln 2 for both sides.
    same = torch.zeros(3)
    assert losses.discriminator_loss("relativistic", same, same).item() == pytest.approx(math.log(2), rel=1e-6)
    with pytest.raises(ValueError, match="real"):
        losses.generator_loss("relativistic", fake)


def test_r2_penalty_of_a_linear_critic_is_taken_at_the_fakes():
    weight = torch.full((784,), 2.0 / 28)  # ||w||^2 = 4
    fake = torch.randn(4, 1, 28, 28, requires_grad=True)
    assert losses.r2_penalty(Linear(weight)(fake), fake).item() == pytest.approx(4.0, rel=1e-5)
    quadratic = (fake.flatten(1) ** 2).sum(1)  # gradient 2x: E||2x||^2 = 4 E||x||^2
    expected = 4 * fake.detach().flatten(1).pow(2).sum(1).mean().item()
    assert losses.r2_penalty(quadratic, fake).item() == pytest.approx(expected, rel=1e-5)
