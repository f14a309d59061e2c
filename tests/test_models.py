import dataclasses

import pytest
import torch

from mnistgan.config import load_preset
from mnistgan.errors import UserError
from mnistgan.models import build_discriminator, build_generator, count_parameters
from mnistgan.metrics.modes import STACKED_SAMPLES
from mnistgan.sampling import sample_latent
from mnistgan.models.dcgan import generator_sizes, transposed_padding

# Trainable parameter counts. The TF tutorial's are Keras' model.summary() totals minus BatchNorm's
# non-trainable moving statistics (G 2,330,944 - 25,472; D 212,865).
EXPECTED_PARAMETERS = {
    "tf-dcgan-tutorial": (2_305_472, 212_865),
    "keras-dcgan": (
        100 * 6272 + 6272 + 2 * 6272 + 128 * 128 * 25 + 128 + 2 * 128 + 128 * 64 * 25 + 64 + 2 * 64 + 64 * 25 + 1,
        25 * 64 + 64 + 64 * 128 * 25 + 128 + 6272 + 1,
    ),
    "mlp-gan": (
        100 * 256 + 256 + 256 * 512 + 512 + 512 * 1024 + 1024 + 1024 * 784 + 784,
        784 * 1024 + 1024 + 1024 * 512 + 512 + 512 * 256 + 256 + 256 + 1,
    ),
    "vanilla-gan": (100 * 256 + 256 + 256 * 512 + 512 + 512 * 784 + 784, 784 * 512 + 512 + 512 * 256 + 256 + 256 + 1),
    "mlp-gan-dropout": (
        100 * 256 + 256 + 256 * 512 + 512 + 512 * 1024 + 1024 + 1024 * 784 + 784,
        784 * 1024 + 1024 + 1024 * 512 + 512 + 512 * 256 + 256 + 256 + 1,
    ),
}


# The class-conditional presets: a 10 x 50 label embedding concatenated to z (both), and to the
# flattened image (MLP D) or a 10 x 6272 projection embedding (conv D).
EXPECTED_CONDITIONAL_PARAMETERS = {
    "recommended": (
        10 * 50 + 150 * 256 + 256 + 256 * 512 + 512 + 512 * 1024 + 1024 + 1024 * 784 + 784,
        10 * 50 + 834 * 1024 + 1024 + 1024 * 512 + 512 + 512 * 256 + 256 + 256 + 1,
    ),
    "compact-dcgan": (
        10 * 50 + 150 * 6272 + 2 * 6272 + 128 * 64 * 16 + 2 * 64 + 64 * 16 + 1,
        16 * 64 + 64 + 64 * 128 * 16 + 128 + 6272 + 1 + 10 * 6272,
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_CONDITIONAL_PARAMETERS))
def test_conditional_preset_shapes_and_parameter_counts(name):
    config = load_preset(name).model
    assert config.conditional
    generator, discriminator = build_generator(config), build_discriminator(config)
    assert (count_parameters(generator), count_parameters(discriminator)) == EXPECTED_CONDITIONAL_PARAMETERS[name]
    labels = torch.tensor([0, 3, 7, 9, 3])
    images = generator.eval()(sample_latent(config, 5, "cpu"), labels)
    assert images.shape == (5, 1, 28, 28) and images.abs().max() <= 1
    assert discriminator(images, labels).shape == (5,)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_shapes_and_parameter_counts(name):
    config = load_preset(name).model
    generator, discriminator = build_generator(config), build_discriminator(config)
    assert (count_parameters(generator), count_parameters(discriminator)) == EXPECTED_PARAMETERS[name]
    z = sample_latent(config, 5, "cpu")
    images = generator(z)
    assert images.shape == (5, 1, 28, 28)
    assert images.abs().max() <= 1
    assert discriminator(images).shape == (5,)


def test_tf_tutorial_layer_shapes():
    generator = build_generator(load_preset("tf-dcgan-tutorial").model)
    shapes = []
    hidden = generator.project(torch.randn(2, 100)).view(2, 256, 7, 7)
    for layer in generator.net:
        hidden = layer(hidden)
        if isinstance(layer, torch.nn.ConvTranspose2d):
            shapes.append(tuple(hidden.shape[1:]))
    assert shapes == [(128, 7, 7), (64, 14, 14), (1, 28, 28)]
    assert all(m.bias is None for m in generator.modules() if isinstance(m, (torch.nn.Linear, torch.nn.ConvTranspose2d)))


def test_keras_semantics_are_applied():
    generator = build_generator(load_preset("tf-dcgan-tutorial").model)
    norms = [m for m in generator.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.momentum == 0.01 and m.eps == 1e-3 for m in norms)
    slopes = {m.negative_slope for m in generator.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.3}
    # Glorot-uniform: every weight within its limit sqrt(6 / (fan_in + fan_out)).
    linear = generator.project[0]
    limit = (6 / (100 + 12544)) ** 0.5
    assert linear.weight.abs().max() <= limit and linear.weight.abs().max() > 0.9 * limit


@pytest.mark.parametrize("kernel, stride", [(5, 1), (5, 2), (4, 2), (3, 2), (3, 1)])
def test_same_padding_multiplies_size_by_stride(kernel, stride):
    padding, output_padding = transposed_padding(kernel, stride, 7, 7 * stride)
    layer = torch.nn.ConvTranspose2d(1, 1, kernel, stride, padding, output_padding)
    assert layer(torch.zeros(1, 1, 7, 7)).shape[-1] == 7 * stride


def test_odd_sizes_grow_as_tensorflows_same_padding_makes_them():
    assert generator_sizes([2, 2, 2, 2]) == [2, 4, 7, 14, 28] and generator_sizes([1, 2, 2]) == [7, 7, 14, 28]
    padding, output_padding = transposed_padding(5, 2, 4, 7)
    assert torch.nn.ConvTranspose2d(1, 1, 5, 2, padding, output_padding)(torch.zeros(1, 1, 4, 4)).shape[-1] == 7
    assert transposed_padding(4, 2, 4, 7) is None  # an even kernel at stride 2 makes even sizes only


def test_a_four_layer_dcgan_with_relu_in_g_and_batchnorm_in_d_maps_noise_to_stacks_and_back():
    # The VEEGAN setup's DCGAN: G 2x2x512 -> 4 -> 7 -> 14 -> 28 with ReLU, D four stride-2 convs
    # 28 -> 14 -> 7 -> 4 -> 2, BatchNorm after all but the first.
    config = load_preset("tf-dcgan-tutorial").replace({
        "model.channels": 3, "model.generator_widths": [32, 16, 8, 4], "model.generator_strides": [2, 2, 2, 2],
        "model.discriminator_widths": [4, 8, 16, 32], "model.discriminator_batchnorm": True,
        "model.generator_activation": "relu"}).model
    generator, discriminator = build_generator(config), build_discriminator(config)
    images = generator(torch.randn(5, 100))
    assert images.shape == (5, 3, 28, 28) and discriminator(images).shape == (5,)
    assert generator.project[0].out_features == 32 * 2 * 2
    relus = [m for m in generator.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert relus and all(m.negative_slope == 0.0 for m in relus)
    assert all(m.negative_slope == config.leaky_slope > 0 for m in discriminator.modules() if isinstance(m, torch.nn.LeakyReLU))
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in discriminator.modules()) == 3
    assert discriminator.head.in_features == 32 * 2 * 2


def test_uniform_latent_is_in_range():
    z = sample_latent(load_preset("mlp-gan-dropout").model, 1000, "cpu")
    assert z.min() >= -1 and z.max() <= 1 and z.min() < -0.9


@pytest.mark.parametrize("architecture", ["mlp", "dcgan"])
def test_conditional_networks_use_labels(architecture):
    config = load_preset("tf-dcgan-tutorial" if architecture == "dcgan" else "mlp-gan").replace(
        {"model.conditional": True}).model
    torch.manual_seed(0)
    generator, discriminator = build_generator(config).eval(), build_discriminator(config).eval()
    z = torch.randn(4, 100)
    sevens, ones = torch.full((4,), 7), torch.full((4,), 1)
    assert not torch.allclose(generator(z, sevens), generator(z, ones))
    images = generator(z, sevens)
    assert not torch.allclose(discriminator(images, sevens), discriminator(images, ones))


def test_spectral_norm_bounds_the_largest_singular_value():
    config = load_preset("mlp-gan").replace({"model.spectral_norm": True}).model
    discriminator = build_discriminator(config).train()
    for _ in range(30):  # power iterations converge over forward passes
        discriminator(torch.randn(8, 1, 28, 28))
    discriminator.eval()
    first = discriminator.net[0]
    assert torch.linalg.matrix_norm(first.weight.detach(), ord=2) == pytest.approx(1.0, rel=0.05)


def _chw_to_hwc(channels: int, size: int) -> torch.Tensor:
    """For each feature in (h, w, c) order, its index in (c, h, w) order."""
    return torch.arange(channels * size * size).view(channels, size, size).permute(1, 2, 0).flatten()


@pytest.mark.parametrize("conditional", [False, True])
def test_dcgan_feature_orders_are_one_function_up_to_a_weight_permutation(conditional):
    """"hwc" (Keras' Reshape/Flatten order) and "chw" differ only in how features are numbered."""
    base = load_preset("tf-dcgan-tutorial").replace({"model.generator_widths": [16, 8, 4], "model.discriminator_widths": [8, 16],
                                                     "model.conditional": conditional})
    chw, hwc = (base.replace({"model.feature_order": order}).model for order in ("chw", "hwc"))
    torch.manual_seed(0)
    generators = build_generator(chw), build_generator(hwc)
    discriminators = build_discriminator(chw), build_discriminator(hwc)
    g_state = generators[0].state_dict()
    order = _chw_to_hwc(16, 7)
    for name, tensor in g_state.items():  # the projection's rows and its BatchNorm's features
        if name.startswith("project.") and tensor.ndim >= 1 and tensor.shape[0] == order.numel():
            g_state[name] = tensor[order]
    generators[1].load_state_dict(g_state)
    d_state = discriminators[0].state_dict()
    features = _chw_to_hwc(16, 7)
    d_state["head.weight"] = d_state["head.weight"][:, features]
    if conditional:
        d_state["label_projection.weight"] = d_state["label_projection.weight"][:, features]
    discriminators[1].load_state_dict(d_state)

    z, labels = torch.randn(6, 100), torch.arange(6)
    for generator in generators:
        generator.train()  # batch statistics: the BatchNorm features must line up too
    images = [g(z, labels) for g in generators]
    torch.testing.assert_close(images[0], images[1])
    scores = [d.eval()(images[0], labels) for d in discriminators]  # eval: no dropout masks to differ
    torch.testing.assert_close(scores[0], scores[1])
    assert not torch.allclose(build_generator(hwc).eval()(z, labels), generators[0].eval()(z, labels))  # the orders differ


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(400, 1000), (64, 64, 10, 10)])
@pytest.mark.parametrize("p, units_per_draw", [(0.3, 4), (0.5, 8)])
def test_cpu_dropout_drops_a_share_p_and_keeps_the_mean(shape, dtype, p, units_per_draw):
    from mnistgan.models.layers import Dropout

    torch.manual_seed(20240607)  # the mask comes from torch's global generator: seeded, the same mask every run
    dropout = Dropout(p).train()
    assert dropout.scale == pytest.approx(1 / (1 - p), rel=1e-4)
    x = torch.ones(shape, dtype=dtype)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = dropout(x)
    assert y.stride() == x.stride()  # the output keeps the input's layout
    kept = y != 0
    # Binomial standard deviations of a kept share: over all n units, sqrt(p(1-p)/n) ~ 0.0007-0.0008 here;
    # over one lane's n / units_per_draw units, 0.0014 (p = 0.3, 4 lanes) and 0.0022 (p = 0.5, 8 lanes).
    # Tolerances are 5 sigma (a correct mask fails one check in ~10^6 seeds), and still far below
    # the errors they are there to catch: a top lane short of its top bit keeps 0% (p = 0.5) or ~100% (p = 0.3).
    units = x.numel()
    sigma_all = (p * (1 - p) / units) ** 0.5
    sigma_lane = (p * (1 - p) / (units / units_per_draw)) ** 0.5
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=5 * sigma_all)
    # Each of the units that share a 64-bit draw, the top lane's included, keeps a share 1 - p.
    in_memory_order = kept.permute(0, 2, 3, 1) if kept.dim() == 4 else kept
    lanes = in_memory_order.flatten().view(-1, units_per_draw).float().mean(dim=0)
    torch.testing.assert_close(lanes, torch.full_like(lanes, 1 - p), atol=5 * sigma_lane, rtol=0)
    if x.dim() == 4:  # no two channels share a mask
        assert not torch.equal(kept[:, 0], kept[:, 1])
    torch.testing.assert_close(y[kept].float(), torch.full_like(y[kept], dropout.scale).float())
    # The output's mean is scale x the kept share: sigma = scale x sigma_all (bf16 holds 1/(1-p) to ~0.4%).
    assert y.float().mean().item() == pytest.approx(1.0, abs=5 * dropout.scale * sigma_all + (0.004 if dtype == torch.bfloat16 else 0))
    y.sum().backward()
    torch.testing.assert_close(x.grad.float(), kept.float() * torch.tensor(dropout.scale, dtype=dtype).float())
    assert torch.equal(dropout.eval()(x), x)


def test_cpu_dropout_takes_whole_number_probabilities():
    from mnistgan.models.layers import Dropout

    x = torch.ones(8, 16)
    assert torch.equal(Dropout(0).train()(x), x)
    assert torch.equal(Dropout(1).train()(x), torch.zeros_like(x))


def resnet_config(**changes):
    base = {"model.architecture": "resnet", "model.generator_widths": [16, 8, 4], "model.discriminator_widths": [4, 8, 16],
            "model.blocks_per_resolution": 2, "model.generator_batchnorm": False, "model.init": "pytorch"}
    return load_preset("mlp-gan").replace({**base, **changes}).model


@pytest.mark.parametrize("channels,conditional", [(1, False), (3, False), (1, True)])
def test_resnet_networks_map_noise_to_images_and_images_to_one_score(channels, conditional):
    config = resnet_config(**{"model.channels": channels, "model.conditional": conditional})
    generator, discriminator = build_generator(config), build_discriminator(config)
    labels = torch.arange(5) % 10 if conditional else None
    images = generator.eval()(sample_latent(config, 5, "cpu"), labels)
    assert images.shape == (5, channels, 28, 28) and images.abs().max() <= 1
    assert discriminator(images, labels).shape == (5,)
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in generator.modules())


def test_the_resnet_generator_is_linear_while_training_and_clamped_when_sampled():
    generator = build_generator(resnet_config())
    z = sample_latent(resnet_config(), 4, "cpu")
    with torch.no_grad():
        generator.output.bias.fill_(-3.0)  # far below black: a tanh would be flat here
    raw = generator.train()(z)
    assert raw.max() < -1.5  # no squashing: D sees it, and G's gradient does not vanish
    raw.sum().backward()
    assert generator.output.bias.grad.abs().item() == pytest.approx(4 * 28 * 28)
    assert torch.equal(generator.eval()(z), raw.detach().clamp(-1, 1))


def test_resnet_blocks_start_as_the_identity_and_then_learn():
    from mnistgan.models.resnet import ResidualBlock

    block = ResidualBlock(4, 0.2)
    x = torch.randn(2, 4, 7, 7)
    assert torch.equal(block(x), x)  # fix-up: the last conv is zero at the start
    block(x).pow(2).sum().backward()
    assert block.last.weight.grad.abs().sum() > 0  # ... but it has a gradient, so it leaves zero


def test_resnet_resolutions_follow_the_widths():
    for widths, side in (([8], 28), ([8, 8], 14), ([8, 8, 8], 7)):
        generator = build_generator(resnet_config(**{"model.generator_widths": widths}))
        assert generator.side == side and generator(torch.randn(2, 100)).shape == (2, 1, 28, 28)
    with pytest.raises(UserError, match="one width per resolution"):
        resnet_config(**{"model.generator_widths": [8, 8, 8, 8]})
    with pytest.raises(UserError, match="initialisation"):
        resnet_config(**{"model.init": "glorot-uniform"})


@pytest.mark.parametrize("architecture", ["mlp", "dcgan", "resnet"])
def test_a_packed_discriminator_scores_each_pack_of_images_joined_along_channels(architecture):
    changes = {"model.pack": 2, "model.channels": 3}
    config = resnet_config(**changes) if architecture == "resnet" else load_preset(
        "stacked-dcgan" if architecture == "dcgan" else "mlp-gan").replace(changes).model
    discriminator = build_discriminator(config).eval()
    images = torch.rand(6, 3, 28, 28) * 2 - 1
    scores = discriminator(images)
    assert scores.shape == (3,)
    # Pack i is images 2i and 2i + 1, channels one after the other, through the inner network.
    joined = torch.cat([images[0::2], images[1::2]], dim=1)
    assert torch.allclose(scores, discriminator.network(joined), atol=1e-6)
    # ... so a pack's score depends on both its images, and on no other pack.
    changed = images.clone()
    changed[5] = -changed[5]
    new_scores = discriminator(changed)
    assert torch.equal(new_scores[:2], scores[:2]) and new_scores[2] != scores[2]
    with pytest.raises(ValueError, match="packs of 2"):
        discriminator(images[:5])


def test_the_stacked_presets_differ_only_in_what_they_test():
    dcgan, pacgan = load_preset("stacked-dcgan"), load_preset("stacked-pacgan")
    assert pacgan.model.pack == 2 and dcgan.model.pack == 1
    # D scores 64 samples or 64 packs of 2 a batch, as the papers' code did.
    assert pacgan.train.batch_size == 2 * dcgan.train.batch_size == 128
    unpacked = pacgan.replace({"model.pack": 1, "train.batch_size": 64, "description": dcgan.description})
    assert unpacked.to_dict() == {**dcgan.to_dict(), "preset": "stacked-pacgan"}
    # The VEEGAN setup's DCGAN: 2x2x512 start, four 5x5 layers each way, ReLU in G, BatchNorm in D, two G updates.
    assert (dcgan.model.generator_strides, dcgan.model.kernel_size, dcgan.model.discriminator_widths) == (
        [2, 2, 2, 2], 5, [64, 128, 256, 512])
    assert (dcgan.model.generator_activation, dcgan.model.discriminator_batchnorm, dcgan.train.g_steps) == ("relu", True, 2)
    r3gan, stacked = load_preset("r3gan"), load_preset("stacked-r3gan")
    # Every evaluation counts modes on the papers' 26,000 samples: fewer cap the modes a run can show.
    for preset in (dcgan, pacgan, stacked):
        assert preset.train.eval_samples == preset.train.final_eval_samples == STACKED_SAMPLES
    assert stacked.data.dataset == "stacked-mnist" and r3gan.data.dataset == "mnist"
    assert stacked.model == r3gan.model and stacked.optim == r3gan.optim
    # On MNIST r3gan spaces its penalties out at half the batch; on Stacked MNIST, where R3GAN found
    # lazy penalties failed, they come every step at R3GAN's batch.
    assert stacked.loss == dataclasses.replace(r3gan.loss, penalty_interval=1)
    assert (r3gan.loss.penalty_interval, r3gan.loss.drift_penalty) == (4, 0.001)
    assert (stacked.train.batch_size, r3gan.train.batch_size) == (64, 32)
    # R3GAN's loss: relativistic with both penalties, Adam beta1 = 0, no normalisation.
    assert (r3gan.loss.adversarial, r3gan.loss.r1_gamma > 0, r3gan.loss.r2_gamma > 0) == ("relativistic", True, True)
    assert r3gan.optim.beta1 == 0 and r3gan.model.architecture == "resnet" and r3gan.train.ema_decay > 0
