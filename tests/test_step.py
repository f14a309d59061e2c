"""One training step (step.py), checked against the same arithmetic done by hand: the EMA update,
R1, the drift penalty and the wasserstein-gp gradient penalty inside D's update, and which labels go
with which images."""

import copy

import pytest
import torch

import mnistgan
from mnistgan import losses
from mnistgan.checkpoint import load_checkpoint
from mnistgan.config import load_preset
from mnistgan.data import to_unit_range
from mnistgan.step import build_training, ema_decay, learning_rates, seed_process_noise

from conftest import TINY_DCGAN, TINY_MLP

CPU = torch.device("cpu")
BATCH = 8


def tiny_config(preset="mlp-gan", tiny=TINY_MLP, **overrides):
    """A tiny network of ``preset`` without dropout: one step is then a deterministic function of the
    weights, the batch and the noise, which a test can redo by hand."""
    return load_preset(preset).replace({**tiny, "model.discriminator_dropout": 0.0, "model.generator_dropout": 0.0,
                                        **overrides})


def random_images(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 1, 28, 28), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 10, (count,), generator=generator)


def one_step_parts(config, images, labels, order=None, steps=1):
    parts = build_training(config, CPU, images, labels, BATCH, steps, "fp32")
    size = parts.step.order.numel()
    parts.step.order.copy_(torch.arange(size) if order is None else order[:size])
    return parts


def record_calls(module: torch.nn.Module) -> list[tuple]:
    """Every forward call's positional inputs (detached copies), in order."""
    calls = []
    module.register_forward_hook(lambda _module, inputs, _output: calls.append(
        tuple(None if x is None else x.detach().clone() for x in inputs)))
    return calls


# -- the EMA ---------------------------------------------------------------------------------------


def test_one_step_moves_the_ema_a_share_w_of_the_way_to_g():
    # A generator with BatchNorm, so that there are buffers as well as weights.
    config = tiny_config(**{"train.ema_decay": 0.75, "model.generator_batchnorm": True})
    images, labels = random_images(BATCH)
    parts = one_step_parts(config, images, labels)
    torch.manual_seed(1)
    with torch.no_grad():  # an EMA that is not G: the update has an old value to move from
        for parameter in parts.ema.parameters():
            parameter.add_(torch.randn_like(parameter))
    old_ema = [p.detach().clone() for p in parts.ema.parameters()]
    old_g = [p.detach().clone() for p in parts.generator.parameters()]
    weight = torch.tensor(0.25)  # 1 - ema_decay, as the loop sets it once ema_start_epoch is over
    parts.step.ema_weight.fill_(weight)

    parts.runner.run(1)

    new_g = [p.detach() for p in parts.generator.parameters()]
    assert all(not torch.equal(new, old) for new, old in zip(new_g, old_g))  # G stepped
    # ema <- old_ema + w (g - old_ema), with g G's weights after this step: float32, bit for bit.
    for name_and_new, old, g in zip(parts.ema.named_parameters(), old_ema, new_g):
        name, new = name_and_new
        expected = old + weight * (g - old)
        assert torch.equal(new, expected), name
        assert not torch.equal(new, g) and not torch.equal(new, old), name
    # BatchNorm's running statistics are not averaged: they are G's.
    buffers = dict(parts.ema.named_buffers())
    assert buffers and all(torch.equal(buffers[name], buffer) for name, buffer in parts.generator.named_buffers())


@pytest.mark.parametrize("rampup, weight", [
    (0.0, 1 - 0.75),
    # ramped: a half-life of the 1.5 steps taken by epoch 2's middle, a shorter one than 0.75's
    (1.0, 1 - 0.5 ** (1 / 1.5)),
])
def test_the_ema_copies_g_until_ema_start_epoch_ends_then_averages(tmp_path, rampup, weight):
    # One step per epoch (32 images, batch 32): the EMA after epoch 2 is one update from G after epoch 1.
    settings = {**TINY_MLP, "train.subset": 32, "train.ema_decay": 0.75, "train.ema_start_epoch": 1,
                "train.ema_rampup": rampup}
    first = load_checkpoint(mnistgan.train("mlp-gan", overrides={**settings, "train.epochs": 1},
                                           out=tmp_path / "one").dir / "checkpoints" / "last.pt")
    second = load_checkpoint(mnistgan.train("mlp-gan", overrides={**settings, "train.epochs": 2},
                                            out=tmp_path / "two").dir / "checkpoints" / "last.pt")
    # Epoch 1 is not after ema_start_epoch: the EMA is G exactly.
    assert first["ema"].keys() == first["generator"].keys()
    assert all(torch.equal(first["ema"][name], first["generator"][name]) for name in first["generator"])
    # Epoch 2 averages, with weight 1 - its decay, from epoch 1's G (= its EMA) towards epoch 2's G
    # (to the last bit where the weight is a power of two; lerp's fused arithmetic may round otherwise).
    weight = torch.tensor(weight)
    for name, g1 in first["generator"].items():
        g2 = second["generator"][name]
        torch.testing.assert_close(second["ema"][name], g1 + weight * (g2 - g1), rtol=0, atol=0 if rampup == 0 else 1e-6)
    assert any(not torch.equal(second["ema"][name], second["generator"][name]) for name in second["generator"])


def test_the_ramped_ema_half_life_is_its_share_of_the_steps_taken_up_to_ema_decay():
    config = tiny_config(**{"train.ema_decay": 0.999, "train.ema_rampup": 0.05})
    # 100 steps per epoch; by the middle of epoch 1, 3 and 7: 50, 250 and 650 steps.
    for epoch, steps_taken in ((1, 50), (3, 250), (7, 650)):
        assert ema_decay(config, epoch, 100) ** (0.05 * steps_taken) == pytest.approx(0.5), epoch
    # The half-life of 0.999 is 693 steps: 5% of the steps taken passes it in epoch 140, and stays capped.
    assert ema_decay(config, 139, 100) < 0.999
    assert [ema_decay(config, epoch, 100) for epoch in (140, 500)] == [0.999, 0.999]
    assert {ema_decay(config.replace({"train.ema_rampup": 0.0}), epoch, 100) for epoch in (1, 3, 500)} == {0.999}
    later = config.replace({"train.ema_start_epoch": 2})
    assert [ema_decay(later, epoch, 100) for epoch in (1, 2)] == [0.0, 0.0]  # a copy of G
    assert ema_decay(later, 3, 100) == ema_decay(config, 3, 100)


# -- the learning rates ------------------------------------------------------------------------------


def test_the_learning_rates_fall_along_a_cosine_to_their_final_fraction_then_stay():
    config = tiny_config(**{"optim.generator_lr": 1e-3, "optim.discriminator_lr": 4e-3, "optim.lr_decay_epochs": 2,
                            "optim.lr_final_fraction": 0.1})
    # Each epoch takes the cosine at its middle: 0.25 and 0.75 of the way, then the end.
    scales = [0.1 + 0.9 * 0.8535534, 0.1 + 0.9 * 0.1464466, 0.1, 0.1]
    for epoch, scale in enumerate(scales, start=1):
        assert learning_rates(config, epoch) == pytest.approx((1e-3 * scale, 4e-3 * scale)), epoch
    constant = config.replace({"optim.lr_decay_epochs": 0})
    assert {learning_rates(constant, epoch) for epoch in (1, 2, 50)} == {(1e-3, 4e-3)}


def test_new_learning_rates_reach_the_optimizers_and_drop_graphs_captured_with_the_old():
    config = tiny_config()
    images, labels = random_images(BATCH)
    runner = one_step_parts(config, images, labels).runner
    runner.graphs[(1, 0)] = "a graph captured with the preset's learning rates"
    runner.set_learning_rates(config.optim.generator_lr, config.optim.discriminator_lr)
    assert runner.graphs  # the same rates: the graphs still hold them
    runner.set_learning_rates(1e-5, 3e-5)
    assert not runner.graphs
    assert [group["lr"] for group in runner.step.g_optimizer.param_groups] == [1e-5]
    assert [group["lr"] for group in runner.step.d_optimizer.param_groups] == [3e-5]


# -- D's regularisers inside the step: SGD without momentum, so D moves by exactly -lr x its gradient


LR = 0.05


def sgd_config(**overrides):
    return tiny_config(**{"optim.optimizer": "sgd", "optim.momentum": 0.0, "optim.discriminator_lr": LR,
                          "optim.generator_lr": LR, "loss.label_smoothing": 0.0, **overrides})


def expected_update(discriminator, loss) -> list[torch.Tensor]:
    gradients = torch.autograd.grad(loss, list(discriminator.parameters()))
    return [p.detach() - LR * g for p, g in zip(discriminator.parameters(), gradients)]


def assert_moved_to(discriminator, expected, without_term):
    """D's weights after the step are the hand-computed ones, and far from where they would be without
    the regulariser (so that the comparison sees the regulariser at all)."""
    actual = [p.detach() for p in discriminator.parameters()]
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-7)
    effect = max((e - w).abs().max().item() for e, w in zip(expected, without_term))
    assert effect > 1e-4, effect  # >1000x the tolerance


def test_r1_is_in_ds_update_with_weight_gamma_over_two():
    gamma = 20.0
    config = sgd_config(**{"loss.r1_gamma": gamma})
    images, labels = random_images(BATCH)
    parts = one_step_parts(config, images, labels)
    before = copy.deepcopy(parts.discriminator)
    calls = record_calls(parts.discriminator)

    parts.runner.run(1)

    joint, _ = calls[0]  # D's update scores [real; fake] in one pass (an MLP D on the CPU)
    real, fake = joint[:BATCH], joint[BATCH:]
    torch.testing.assert_close(real, to_unit_range(images[:BATCH]), rtol=0, atol=0)  # this step's real batch
    real = real.requires_grad_(True)
    real_scores, fake_scores = before(real), before(fake)
    adversarial = losses.discriminator_loss("non-saturating", real_scores, fake_scores)
    # R1 by hand: the squared norm of D's input gradient at each real image, averaged.
    (input_gradient,) = torch.autograd.grad(real_scores.sum(), real, create_graph=True)
    r1 = input_gradient.pow(2).flatten(1).sum(1).mean()
    expected = expected_update(before, adversarial + 0.5 * gamma * r1)
    without = expected_update(before, losses.discriminator_loss("non-saturating", before(real), before(fake)))
    assert_moved_to(parts.discriminator, expected, without)


def test_r1_at_intervals_comes_every_nth_d_update_weighted_by_n():
    gamma, interval = 20.0, 2
    config = sgd_config(**{"loss.r1_gamma": gamma, "loss.penalty_interval": interval})
    images, labels = random_images(2 * BATCH)
    parts = one_step_parts(config, images, labels, steps=2)
    calls = record_calls(parts.discriminator)
    for step, penalised in enumerate([True, False]):  # steps 0 and 1 of the run
        before, first_call = copy.deepcopy(parts.discriminator), len(calls)  # the copy keeps the hook: calls grows
        parts.runner.run(1)
        joint, _ = calls[first_call]  # the step's first D call: its update's [real; fake]
        real, fake = joint[:BATCH].requires_grad_(True), joint[BATCH:]
        torch.testing.assert_close(real, to_unit_range(images[step * BATCH:(step + 1) * BATCH]), rtol=0, atol=0)
        real_scores = before(real)
        adversarial = losses.discriminator_loss("non-saturating", real_scores, before(fake))
        (input_gradient,) = torch.autograd.grad(real_scores.sum(), real, create_graph=True)
        r1 = input_gradient.pow(2).flatten(1).sum(1).mean()
        with_r1 = expected_update(before, adversarial + 0.5 * interval * gamma * r1)
        without = expected_update(before, losses.discriminator_loss("non-saturating", before(real), before(fake)))
        assert_moved_to(parts.discriminator, *((with_r1, without) if penalised else (without, with_r1)))


def test_the_drift_penalty_is_in_ds_update_with_weight_epsilon_on_real_scores():
    epsilon = 0.5
    config = sgd_config(**{"loss.adversarial": "relativistic", "loss.drift_penalty": epsilon})
    images, labels = random_images(2 * BATCH)  # G's update pairs its fakes with a second real batch
    parts = one_step_parts(config, images, labels)
    before = copy.deepcopy(parts.discriminator)
    calls = record_calls(parts.discriminator)

    parts.runner.run(1)

    joint, _ = calls[0]
    real, fake = joint[:BATCH], joint[BATCH:]
    real_scores, fake_scores = before(real), before(fake)
    adversarial = losses.discriminator_loss("relativistic", real_scores, fake_scores)
    expected = expected_update(before, adversarial + epsilon * real_scores.pow(2).mean())
    without = expected_update(before, losses.discriminator_loss("relativistic", before(real), before(fake)))
    assert_moved_to(parts.discriminator, expected, without)


def test_a_packed_d_scores_real_packs_and_fake_packs_apart_in_its_update():
    config = sgd_config(**{"model.pack": 2})
    images, labels = random_images(BATCH)
    parts = one_step_parts(config, images, labels)
    before = copy.deepcopy(parts.discriminator)
    calls = record_calls(parts.discriminator)

    parts.runner.run(1)

    joint = calls[0][0]  # [real; fake] in one pass: BATCH / 2 real packs, then BATCH / 2 fake ones
    real, fake = joint[:BATCH], joint[BATCH:]
    torch.testing.assert_close(real, to_unit_range(images[:BATCH]), rtol=0, atol=0)
    real_scores, fake_scores = before(real), before(fake)
    assert real_scores.shape == (BATCH // 2,)
    expected = expected_update(before, losses.discriminator_loss("non-saturating", real_scores, fake_scores))
    # Packs that mixed real and fake images would score differently: the step must not.
    mixed = before(torch.cat([real[:BATCH // 2], fake[:BATCH // 2]])), before(torch.cat([real[BATCH // 2:], fake[BATCH // 2:]]))
    wrong = expected_update(before, losses.discriminator_loss("non-saturating", *mixed))
    assert_moved_to(parts.discriminator, expected, wrong)


def test_the_gradient_penalty_is_in_ds_update_at_points_between_real_and_fake():
    gp_lambda = 10.0
    config = sgd_config(**{"loss.adversarial": "wasserstein-gp", "loss.gp_lambda": gp_lambda})
    images, labels = random_images(BATCH)
    parts = one_step_parts(config, images, labels)
    before = copy.deepcopy(parts.discriminator)
    calls = record_calls(parts.discriminator)

    parts.runner.run(1)

    assert len(calls) == 3  # D's update on [real; fake], the penalty's points, G's update on the fakes
    joint, points = calls[0][0], calls[1][0]
    real, fake = joint[:BATCH], joint[BATCH:]
    # Each point lies on the segment from its fake to its real image: x = m real + (1 - m) fake, m in [0, 1].
    direction = (real - fake).flatten(1)
    share = ((points - fake).flatten(1) * direction).sum(1) / direction.pow(2).sum(1)
    assert ((share >= 0) & (share <= 1)).all() and share.std() > 0  # a random share per image
    torch.testing.assert_close(points, share.view(-1, 1, 1, 1) * real + (1 - share.view(-1, 1, 1, 1)) * fake)

    # The penalty by hand: (||grad_x D(x)|| - 1)^2 at those points, averaged, weighted by gp_lambda.
    points = points.requires_grad_(True)
    (gradient,) = torch.autograd.grad(before(points).sum(), points, create_graph=True)
    penalty = ((gradient.flatten(1).norm(dim=1) - 1) ** 2).mean()
    critic = before(fake).mean() - before(real).mean()
    expected = expected_update(before, critic + gp_lambda * penalty)
    without = expected_update(before, before(fake).mean() - before(real).mean())
    assert_moved_to(parts.discriminator, expected, without)


# -- conditional batches: each real image goes to D with its own label --------------------------


def label_coded_images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images that carry their identity: pixel (0, 0) is the image's index, every other pixel
    20 + 20 x its label, so D's input says which image and which label it was."""
    labels = torch.randint(0, 10, (count,), generator=torch.Generator().manual_seed(3))
    images = (20 + 20 * labels).to(torch.uint8).view(-1, 1, 1, 1).repeat(1, 1, 28, 28)
    images[:, 0, 0, 0] = torch.arange(count, dtype=torch.uint8)
    return images, labels


@pytest.mark.parametrize("preset, tiny, d_steps", [("mlp-gan", TINY_MLP, 2), ("keras-dcgan", TINY_DCGAN, 1)],
                         ids=["mlp-one-pass-d-steps-2", "dcgan-two-passes"])
def test_conditional_steps_feed_d_each_image_with_its_own_label(preset, tiny, d_steps):
    config = tiny_config(preset, tiny, **{"model.conditional": True, "train.d_steps": d_steps})
    images, labels = label_coded_images(64)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(4))  # not the stored order
    parts = one_step_parts(config, images, labels, order, steps=2)
    d_calls, g_calls = record_calls(parts.discriminator), record_calls(parts.generator)

    for step in range(2):
        d_calls.clear(), g_calls.clear()
        parts.runner.run(1)
        passes_per_update = 1 if parts.step.joint_discriminator_pass else 2
        assert len(d_calls) == d_steps * passes_per_update + 1 and len(g_calls) == d_steps
        for d_step in range(d_steps):
            update = d_calls[d_step * passes_per_update : (d_step + 1) * passes_per_update]
            scored = torch.cat([images_ for images_, _ in update])  # [real; fake], in one pass or two
            scored_labels = torch.cat([labels_ for _, labels_ in update])
            pixels = ((scored[:BATCH] + 1) * 127.5).round().long()
            index, label_code = pixels[:, 0, 0, 0], pixels[:, 0, 14, 14]
            # The real batch is the next BATCH images of the epoch's order...
            first = (step * d_steps + d_step) * BATCH
            assert index.tolist() == order[first : first + BATCH].tolist()
            # ...and D gets with each of them that image's label.
            assert scored_labels[:BATCH].tolist() == labels[index].tolist() == ((label_code - 20) // 20).tolist()
            # The fakes go to D with the labels G drew them for.
            assert torch.equal(scored_labels[BATCH:], g_calls[d_step][1])
        # G's update scores the last D step's fakes, with their labels.
        assert torch.equal(d_calls[-1][1], g_calls[-1][1])


def test_every_process_draws_noise_of_its_own_from_the_start_and_after_a_resume():
    def noise(rank, resumed_at=None):
        seed_process_noise(7, rank, resumed_at)
        return torch.randn(8)

    torch.manual_seed(7)
    first_process = torch.randn(8)  # the first keeps train.seed's stream (and, resumed, the checkpoint's state)
    draws = [first_process, noise(1), noise(2), noise(1, (3, 0)), noise(2, (3, 0)), noise(1, (3, 5)), noise(1, (4, 0))]
    assert all(not torch.equal(a, b) for i, a in enumerate(draws) for b in draws[i + 1:])
    assert torch.equal(noise(1, (3, 5)), draws[5])  # a resume from the same point draws the same noise
