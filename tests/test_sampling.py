"""Drawing from a generator (sampling.py): the BatchNorm refresh an EMA generator needs, the fixed
grid's rows, the order and source of the random draws, and the paths of latent walks."""

import math

import numpy as np
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mnistgan.config import load_preset
from mnistgan.models import build_generator
from mnistgan.models.layers import Dropout
from mnistgan.plots import image_grid
from mnistgan.sampling import (class_rows_inputs, draw_inputs, fixed_inputs, generate, grid_columns, morph_inputs,
                               refresh_batchnorm_statistics, slerp, walk_inputs)

from conftest import TINY_DCGAN, TINY_MLP

CPU = torch.device("cpu")
NETWORKS = [("mlp-gan", TINY_MLP), ("tf-dcgan-tutorial", TINY_DCGAN)]


def generator_with_batchnorm(preset, tiny):
    """A tiny conditional generator with BatchNorm and dropout (dropout must stay off in the refresh)."""
    config = load_preset(preset).replace({**tiny, "model.generator_batchnorm": True, "model.generator_dropout": 0.3,
                                          "model.conditional": True})
    torch.manual_seed(0)
    network = build_generator(config.model)
    assert any(isinstance(m, Dropout) for m in network.modules())
    return config, network


def norms_of(network):
    norms = [m for m in network.modules() if isinstance(m, _BatchNorm)]
    assert norms
    return norms


def spoil(norms):
    """Running statistics no generator output has: a refresh that leaves them is a no-op."""
    for norm in norms:
        norm.running_mean.fill_(1e3)
        norm.running_var.fill_(1e-3)


@pytest.mark.parametrize("preset, tiny", NETWORKS, ids=["mlp", "dcgan"])
def test_the_refresh_re_estimates_batchnorm_statistics_from_the_generators_own_batches(preset, tiny):
    config, network = generator_with_batchnorm(preset, tiny)
    norms = norms_of(network)
    spoil(norms)
    momenta = [norm.momentum for norm in norms]
    network.train()
    seen = {norm: [] for norm in norms}  # what each BatchNorm layer normalised, batch by batch
    for norm in norms:
        norm.register_forward_pre_hook(lambda module, args: seen[module].append(args[0].detach().clone()))
    noise = []
    network.register_forward_pre_hook(lambda module, args: noise.append(tuple(a.clone() for a in args)))
    dropout_modes = []
    for module in network.modules():
        if isinstance(module, Dropout):
            module.register_forward_pre_hook(lambda module, args: dropout_modes.append(module.training))

    refresh_batchnorm_statistics(network, config, CPU, batches=4, batch_size=64)

    # Four fresh batches of 64 noise vectors (and labels) went through the generator...
    assert len(noise) == 4 and all(z.shape == (64, config.model.latent_dim) and labels.shape == (64,) for z, labels in noise)
    assert len({z.sum().item() for z, _ in noise}) == 4
    everything = torch.cat([z for z, _ in noise])
    assert abs(everything.mean().item()) < 5 * (1 / everything.numel()) ** 0.5  # N(0, 1): 5 sigma
    assert everything.std().item() == pytest.approx(1.0, abs=0.03)
    assert set(torch.cat([labels for _, labels in noise]).tolist()) == set(range(10))
    assert dropout_modes and not any(dropout_modes)  # no dropout while measuring
    # ...and each layer's running statistics are the average of its batches' statistics, computed
    # here: mean and unbiased variance per feature (over batch, and height and width for conv layers).
    for norm in norms:
        batches = seen[norm]
        assert len(batches) == 4
        dims = [0] + list(range(2, batches[0].dim()))
        mean = torch.stack([x.mean(dims) for x in batches]).mean(0)
        variance = torch.stack([x.var(dims, unbiased=True) for x in batches]).mean(0)
        torch.testing.assert_close(norm.running_mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(norm.running_var, variance, rtol=1e-4, atol=1e-5)
    # The network is left as it was found: its mode and its layers' momenta.
    assert network.training and [norm.momentum for norm in norms] == momenta
    network.eval()
    refresh_batchnorm_statistics(network, config, CPU, batches=1, batch_size=8)
    assert not network.training


def test_the_refresh_leaves_torchs_global_rng_alone_and_gives_the_same_statistics_every_time():
    config, network = generator_with_batchnorm("mlp-gan", TINY_MLP)
    norms = norms_of(network)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    refresh_batchnorm_statistics(network, config, CPU, batches=3, batch_size=32)
    assert torch.equal(torch.get_rng_state(), state)  # training's stream goes on as if no refresh had run
    first = [(norm.running_mean.clone(), norm.running_var.clone()) for norm in norms]
    torch.manual_seed(456)  # another global stream, spoiled statistics: the same result
    spoil(norms)
    refresh_batchnorm_statistics(network, config, CPU, batches=3, batch_size=32)
    for (mean, variance), norm in zip(first, norms):
        assert torch.equal(norm.running_mean, mean) and torch.equal(norm.running_var, variance)


def test_generate_uses_running_statistics_in_batches_and_restores_the_mode():
    config, network = generator_with_batchnorm("mlp-gan", TINY_MLP)
    refresh_batchnorm_statistics(network, config, CPU, batches=2, batch_size=32)
    z, labels = draw_inputs(config.model, 10, generator=torch.Generator().manual_seed(1))
    network.train()
    whole = generate(network, z, labels)
    assert network.training  # mode restored
    torch.testing.assert_close(generate(network, z, labels, batch_size=3), whole)  # eval mode: no batch effects
    torch.testing.assert_close(whole, network.eval()(z, labels).detach())
    assert whole.dtype == torch.float32 and whole.shape == (10, 1, 28, 28)


# -- the fixed grid ---------------------------------------------------------------------------------


def test_a_conditional_runs_grid_has_row_r_for_class_r_and_shared_noise_down_each_column():
    config = load_preset("mlp-gan").replace({"model.conditional": True, "train.seed": 5})
    columns = grid_columns(config)
    z, labels = fixed_inputs(config, CPU)
    assert z.shape == (10 * columns, config.model.latent_dim)
    rows_of_labels = labels.view(10, columns)
    assert torch.equal(rows_of_labels, torch.arange(10).view(10, 1).expand(10, columns))  # row r asks for class r
    rows_of_noise = z.view(10, columns, -1)
    assert torch.equal(rows_of_noise, rows_of_noise[:1].expand_as(rows_of_noise))  # column c: one noise, every class
    assert torch.unique(rows_of_noise[0], dim=0).shape[0] == columns  # columns differ
    # The picture puts sample i at row i // columns: row r of the saved grid shows class r.
    shades = (labels.float() / 9 * 2 - 1).view(-1, 1, 1, 1).expand(-1, 1, 28, 28)
    picture = torch.from_numpy(np.array(image_grid(shades, columns=columns)))  # (10 x 30 + 2, columns x 30 + 2) pixels
    assert picture.shape == (10 * 30 + 2, columns * 30 + 2)
    for row in range(10):
        for column in range(columns):
            assert picture[2 + row * 30 + 14, 2 + column * 30 + 14].item() == round(row / 9 * 255), (row, column)
    # Fixed: the same inputs every time, other inputs for another seed, and the global RNG untouched.
    state = torch.get_rng_state()
    again, _ = fixed_inputs(config, CPU)
    assert torch.equal(again, z) and torch.equal(torch.get_rng_state(), state)
    other, _ = fixed_inputs(config.replace({"train.seed": 6}), CPU)
    assert not torch.equal(other, z)


def test_class_rows_inputs_repeats_one_row_of_noise_for_each_class():
    model = load_preset("mlp-gan").replace({"model.conditional": True}).model
    z, labels = class_rows_inputs(model, 3, torch.Generator().manual_seed(2))
    row = torch.randn(3, model.latent_dim, generator=torch.Generator().manual_seed(2))  # the noise, drawn by hand
    assert torch.equal(z, row.repeat(10, 1))
    assert labels.tolist() == [digit for digit in range(10) for _ in range(3)]


def test_an_unconditional_runs_grid_is_16_fixed_noise_vectors_in_4_columns():
    config = load_preset("mlp-gan").replace({"train.seed": 5})
    z, labels = fixed_inputs(config, CPU)
    assert labels is None and z.shape == (16, config.model.latent_dim) and grid_columns(config) == 4
    assert torch.equal(fixed_inputs(config, CPU)[0], z)
    assert not torch.equal(fixed_inputs(config.replace({"train.seed": 6}), CPU)[0], z)


# -- draw_inputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_draw_inputs_with_a_seeded_generator_draws_the_noise_first_then_the_labels(distribution):
    model = load_preset("mlp-gan").replace({"model.conditional": True, "model.latent_distribution": distribution}).model
    state = torch.get_rng_state()
    z, labels = draw_inputs(model, 50, "cpu", torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)  # a generator of its own: the global stream is untouched
    # By hand, from the same seed: the noise first, then the labels.
    source = torch.Generator().manual_seed(7)
    if distribution == "normal":
        expected_z = torch.randn(50, model.latent_dim, generator=source)
    else:
        expected_z = torch.rand(50, model.latent_dim, generator=source) * 2 - 1
    expected_labels = torch.randint(0, 10, (50,), generator=source)
    assert torch.equal(z, expected_z) and torch.equal(labels, expected_labels)
    # Deterministic, and the noise does not depend on whether labels come after it.
    again = draw_inputs(model, 50, "cpu", torch.Generator().manual_seed(7))
    assert torch.equal(again[0], z) and torch.equal(again[1], labels)
    unconditional = load_preset("mlp-gan").replace({"model.latent_distribution": distribution}).model
    plain_z, no_labels = draw_inputs(unconditional, 50, "cpu", torch.Generator().manual_seed(7))
    assert no_labels is None and torch.equal(plain_z, z)


def test_draw_inputs_without_a_generator_draws_from_the_training_stream():
    model = load_preset("mlp-gan").replace({"model.conditional": True}).model
    torch.manual_seed(3)
    z, labels = draw_inputs(model, 1000)
    torch.manual_seed(3)
    assert torch.equal(torch.randn(1000, model.latent_dim), z) and torch.equal(torch.randint(0, 10, (1000,)), labels)
    assert torch.bincount(labels, minlength=10).min() > 60  # every class, about 100 each (sd ~9.5)


# -- latent walks ----------------------------------------------------------------------------------


def unit(vector):
    return vector / vector.norm(dim=-1, keepdim=True)


def test_slerp_starts_and_ends_at_its_ends_and_keeps_unit_vectors_on_the_sphere():
    source = torch.Generator().manual_seed(0)
    start, end = unit(torch.randn(5, 100, generator=source)), unit(torch.randn(5, 100, generator=source))
    t = torch.linspace(0, 1, 11).view(11, 1, 1)  # (11 steps, 5 pairs, 100)
    path = slerp(start, end, t)
    torch.testing.assert_close(path[0], start)
    torch.testing.assert_close(path[-1], end)
    torch.testing.assert_close(path.norm(dim=-1), torch.ones(11, 5))  # lerp's midpoint would have norm ~0.71
    # Equal steps along the arc: each step turns by the same angle.
    turns = torch.acos((path[1:] * path[:-1]).sum(-1).clamp(-1, 1))
    torch.testing.assert_close(turns, turns[:1].expand_as(turns), atol=1e-4, rtol=0)


def test_slerp_halfway_between_orthogonal_vectors_is_their_bisector():
    start, end = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    torch.testing.assert_close(slerp(start, end, 0.5), torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2))
    torch.testing.assert_close(slerp(start, end, 1 / 3), torch.tensor([math.cos(math.pi / 6), 0.5, 0.0]))


def test_slerp_of_nearly_parallel_or_opposite_vectors_is_lerp():
    t = torch.linspace(0, 1, 5).unsqueeze(1)
    for start, end in [(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 1e-5])),  # nearly parallel: the arc's 1/sin would blow up
                       (torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1e-5])),  # nearly opposite: no single arc
                       (torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.0]))]:  # the same vector
        path = slerp(start, end, t)
        assert torch.isfinite(path).all()
        assert torch.equal(path, torch.lerp(start, end, t))


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_walk_inputs_go_from_one_draw_to_another_by_the_distributions_path(distribution):
    model = load_preset("mlp-gan").replace({"model.latent_distribution": distribution}).model
    z = walk_inputs(model, 3, 6, torch.Generator().manual_seed(4))
    assert z.shape == (3 * 6, model.latent_dim)
    walks = z.view(3, 6, model.latent_dim)
    # The ends are two draws from the seed: all the rows' starts, then all their ends.
    expected = draw_inputs(model, 6, "cpu", torch.Generator().manual_seed(4))[0]
    torch.testing.assert_close(walks[:, 0], expected[:3])
    torch.testing.assert_close(walks[:, -1], expected[3:])
    middle = walks[:, 3]
    blend = slerp if distribution == "normal" else torch.lerp
    torch.testing.assert_close(middle, blend(expected[:3], expected[3:], 3 / 5))
    if distribution == "uniform":  # inside the cube the noise was drawn from
        assert walks.abs().max() <= 1
    else:  # on the shell of Gaussian draws, not inside it as lerp's middle would be
        assert middle.norm(dim=1).min() > 0.9 * math.sqrt(model.latent_dim)
    assert torch.equal(walk_inputs(model, 3, 6, torch.Generator().manual_seed(4)), z)


def test_morph_inputs_hold_the_noise_and_move_the_label_embedding_between_two_classes():
    model = load_preset("mlp-gan").replace({**TINY_MLP, "model.conditional": True}).model
    torch.manual_seed(0)
    network = build_generator(model)
    z, embeddings = morph_inputs(network, model, 2, 5, (3, 8), torch.Generator().manual_seed(1))
    assert z.shape == (10, model.latent_dim) and embeddings.shape == (10, model.embedding_dim)
    rows = z.view(2, 5, -1)
    assert torch.equal(rows, rows[:, :1].expand_as(rows))  # one noise per row
    table = network.label_input.embedding.weight.detach()
    torch.testing.assert_close(embeddings.view(2, 5, -1)[:, 0], table[[3, 3]])
    torch.testing.assert_close(embeddings.view(2, 5, -1)[:, -1], table[[8, 8]])
    # The generator takes looked-up embeddings in place of labels: a class's own embedding draws that class.
    images = generate(network, z[::5], embeddings[::5])
    torch.testing.assert_close(images, generate(network, z[::5], torch.tensor([3, 3])))
