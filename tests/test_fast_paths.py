"""The fast training step computes what the plain loop computes.

CPU: mnistgan's step (device-side batching, one D pass for real and fake, fused optimizers, one G
forward, channels-last convolutions) against the benchmark's naive loop (DataLoader, separate
passes, unfused optimizers), and bf16 autocast against fp32.
CUDA (skipped without a GPU): CUDA graphs, bf16 autocast and compiled networks against eager fp32.
Both sides start from the same weights and see the same images in the same order and the same
noise; dropout is off so that the random streams cannot differ.
"""

import sys
from pathlib import Path

import pytest
import torch

from mnistgan.config import load_preset
from mnistgan.data import load_mnist
from mnistgan.step import build_training, epoch_order, real_batches_per_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from naive import NaiveLoop, unsupported  # noqa: E402

SMALL = {"model.discriminator_dropout": 0.0, "model.generator_dropout": 0.0, "train.batch_size": 32, "train.seed": 3}
CASES = {
    "tf-dcgan-tutorial": {**SMALL, "model.generator_widths": [32, 16, 8], "model.discriminator_widths": [8, 16]},
    "keras-dcgan": {**SMALL, "model.generator_widths": [32, 16, 8], "model.discriminator_widths": [8, 16]},
    "mlp-gan": {**SMALL, "model.generator_widths": [64, 128], "model.discriminator_widths": [128, 64]},
    "vanilla-gan": {**SMALL, "model.generator_widths": [64, 128], "model.discriminator_widths": [128, 64]},
}
STEPS = 6


def run_fast_parts(config, device, images, labels, order, noise_bank, steps, precision="fp32", change=None):
    """mnistgan's step for ``steps`` steps; returns the training parts. ``change``: (after how many steps,
    a function of the parts), applied between steps as the training loop applies its per-epoch settings
    (learning rates, the EMA's weight) at an epoch's start."""
    steps_per_epoch = images.shape[0] // (config.train.batch_size * real_batches_per_step(config))
    parts = build_training(config, device, images.to(device), labels.to(device), config.train.batch_size,
                           steps_per_epoch, precision)
    parts.step.order.copy_(order[: parts.step.order.numel()])
    bank = noise_bank.to(device)
    counter = torch.zeros(1, dtype=torch.long, device=device)

    def noise():  # device-side indexing, so that it can be captured in a CUDA graph too
        z = bank.index_select(0, counter).squeeze(0)
        counter.add_(1)
        return z, None

    parts.step._noise = noise
    done = 0
    while done < steps:
        if change and done == change[0]:
            change[1](parts)
        done += parts.runner.run(steps - done)
    return parts


def run_fast(config, device, images, labels, order, noise_bank, steps, precision="fp32", change=None):
    """The (steps, 4) statistics of ``run_fast_parts``."""
    parts = run_fast_parts(config, device, images, labels, order, noise_bank, steps, precision, change)
    return parts.step.stats[:steps].cpu()


def same_inputs(config, count, steps):
    """The first ``count`` training images, their epoch order and ``steps`` batches of noise."""
    split = load_mnist("train")
    noise_bank = torch.randn(steps, config.train.batch_size, config.model.latent_dim, generator=torch.Generator().manual_seed(0))
    return split.images[:count], split.labels[:count], epoch_order(0, 1, count), noise_bank


def eager_and_graphed_on_cuda(config, count, steps, change=None):
    """The inputs of ``steps`` steps, and their statistics on CUDA eager and in CUDA graphs, both in true fp32."""
    inputs = same_inputs(config, count, steps)
    torch.backends.cuda.matmul.allow_tf32 = False  # true fp32 on both sides (training itself would use TF32)
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda")
    eager = run_fast(config.replace({"performance.cuda_graphs": False}), device, *inputs, steps, change=change)
    graphed = run_fast(config, device, *inputs, steps, change=change)
    return inputs, eager, graphed


@pytest.mark.parametrize("preset", sorted(CASES))
def test_fast_step_matches_the_naive_loop_on_cpu(preset):
    config = load_preset(preset).replace({**CASES[preset], "performance.device": "cpu"})
    images, labels, order, noise_bank = same_inputs(config, 512, STEPS)

    fast = run_fast(config, torch.device("cpu"), images, labels, order, noise_bank, STEPS)
    bank = iter(noise_bank)
    naive = NaiveLoop(config, torch.device("cpu"), images, labels, order=order, noise=lambda: next(bank))
    for _ in range(STEPS):
        naive.step()
    expected = torch.tensor(naive.history)
    torch.testing.assert_close(fast[:, :2], expected, rtol=1e-4, atol=1e-5)
    assert not torch.equal(fast[0], fast[-1])  # training moved


@pytest.mark.parametrize("preset", sorted(CASES))
def test_bf16_autocast_on_cpu_computes_the_fp32_losses(preset):
    # Where the CPU has bf16 instructions, 'auto' trains in bf16 there; elsewhere this runs emulated.
    config = load_preset(preset).replace({**CASES[preset], "performance.device": "cpu"})
    images, labels, order, noise_bank = same_inputs(config, 512, STEPS)
    fp32 = run_fast(config, torch.device("cpu"), images, labels, order, noise_bank, STEPS, precision="fp32")
    bf16 = run_fast(config, torch.device("cpu"), images, labels, order, noise_bank, STEPS, precision="bf16")
    torch.testing.assert_close(bf16[:, :2], fp32[:, :2], rtol=5e-2, atol=2e-2)
    assert not torch.equal(bf16[:, :2], fp32[:, :2])  # the autocast did change the arithmetic


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("preset", sorted(CASES))
def test_cuda_graphs_and_bf16_compute_the_plain_losses(preset):
    config = load_preset(preset).replace({**CASES[preset], "performance.device": "cuda"})
    steps = 3 + 2 * config.performance.steps_per_graph + 2  # warm-up, two multi-step graphs, two 1-step graphs
    inputs, eager, graphed = eager_and_graphed_on_cuda(config, 2048, steps)
    torch.testing.assert_close(graphed, eager, rtol=1e-3, atol=1e-3)  # graphs replay the eager kernels
    graphed_bf16 = run_fast(config, torch.device("cuda"), *inputs, steps, precision="bf16")
    torch.testing.assert_close(graphed_bf16[:, :2], eager[:, :2], rtol=5e-2, atol=2e-2)
    # And the plain CPU computation agrees with the CUDA one.
    cpu = run_fast(config.replace({"performance.device": "cpu"}), torch.device("cpu"), *inputs, steps)
    torch.testing.assert_close(eager, cpu, rtol=1e-3, atol=1e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_with_penalties_at_intervals_compute_the_eager_losses():
    # The penalties' double backward inside captured graphs, and a graph per phase of the interval:
    # 3 does not divide steps_per_graph, so graphs start at different phases.
    config = load_preset("mlp-gan").replace({**CASES["mlp-gan"], "performance.device": "cuda", "loss.r1_gamma": 1.0,
                                             "loss.penalty_interval": 3})
    steps = 3 + 3 * config.performance.steps_per_graph + 2
    _, eager, graphed = eager_and_graphed_on_cuda(config, 4096, steps)
    torch.testing.assert_close(graphed, eager, rtol=1e-3, atol=1e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_learning_rates_changed_between_graph_replays_reach_the_graphed_steps():
    # A captured graph holds the learning rates it was captured with (optim.lr_decay_epochs changes
    # them at epoch starts). Ten times the rates after the first multi-step graph: graphs that kept the
    # old ones would be far outside the tolerance (the losses move by up to 1.2 in these steps, eager on the CPU).
    config = load_preset("mlp-gan").replace({**CASES["mlp-gan"], "performance.device": "cuda"})
    steps = 3 + 3 * config.performance.steps_per_graph + 2
    change = (3 + config.performance.steps_per_graph, lambda parts: parts.runner.set_learning_rates(2e-3, 2e-3))
    _, eager, graphed = eager_and_graphed_on_cuda(config, 4096, steps, change)
    torch.testing.assert_close(graphed, eager, rtol=1e-3, atol=1e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_an_ema_weight_changed_between_graph_replays_reaches_the_graphed_ema():
    # train.ema_rampup changes the EMA's decay at epoch starts by filling a device tensor in place, which
    # the captured graphs read, so they are not captured again. The EMA copies G (weight 1) until the
    # change, then averages with weight 0.25: graphs that kept the old weight would leave it equal to G.
    config = load_preset("mlp-gan").replace({**CASES["mlp-gan"], "performance.device": "cuda", "train.ema_decay": 0.75,
                                             "optim.generator_lr": 2e-3, "optim.discriminator_lr": 2e-3})
    steps = 3 + 3 * config.performance.steps_per_graph + 2
    change = (3 + config.performance.steps_per_graph, lambda parts: parts.step.ema_weight.fill_(0.25))
    inputs = same_inputs(config, 4096, steps)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda")
    eager = run_fast_parts(config.replace({"performance.cuda_graphs": False}), device, *inputs, steps, change=change)
    graphed = run_fast_parts(config, device, *inputs, steps, change=change)
    for mine, reference in zip(graphed.ema.parameters(), eager.ema.parameters()):
        torch.testing.assert_close(mine, reference, rtol=1e-3, atol=1e-4)
    lag = max((e - g).abs().max().item() for e, g in zip(graphed.ema.parameters(), graphed.generator.parameters()))
    assert lag > 1e-3, f"the EMA is within {lag:.1e} of G: the comparison above could not tell the weights apart"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("interval", [1, 4])  # stacked-r3gan's penalties every step, r3gan's every 4th
def test_the_r3gan_recipe_in_cuda_graphs_and_bf16_computes_the_eager_losses(interval):
    # The relativistic loss with R1 + R2 on residual networks: the penalties' double backward inside
    # captured graphs, and under the bf16 autocast that "auto" chooses on CUDA for these networks.
    # R3GAN's 2e-4, not the preset's 1e-3: at 1e-3 a bf16 rounding grows into another trajectory
    # within 20 steps (on the CPU's bf16 too), and the comparison would say nothing about the kernels.
    config = load_preset("r3gan").replace({**SMALL, "performance.device": "cuda", "loss.penalty_interval": interval,
                                           "model.generator_widths": [32, 16, 8], "model.discriminator_widths": [8, 16, 32],
                                           "optim.generator_lr": 2e-4, "optim.discriminator_lr": 2e-4})
    steps = 3 + 2 * config.performance.steps_per_graph + 2
    inputs, eager, graphed = eager_and_graphed_on_cuda(config, 2048, steps)
    torch.testing.assert_close(graphed, eager, rtol=1e-3, atol=1e-3)
    graphed_bf16 = run_fast(config, torch.device("cuda"), *inputs, steps, precision="bf16")
    assert torch.isfinite(graphed_bf16).all()
    torch.testing.assert_close(graphed_bf16[:, :2], eager[:, :2], rtol=5e-2, atol=2e-2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("preset", ["tf-dcgan-tutorial", "mlp-gan"])
def test_compiled_networks_inside_cuda_graphs_compute_the_plain_losses(preset):
    config = load_preset(preset).replace({**CASES[preset], "performance.device": "cuda"})
    steps = 3 + config.performance.steps_per_graph + 1
    images, labels, order, noise_bank = same_inputs(config, 2048, steps)
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    eager = run_fast(config.replace({"performance.cuda_graphs": False}), device, images, labels, order, noise_bank, steps)
    compiled = run_fast(config.replace({"performance.compile": True}), device, images, labels, order, noise_bank, steps)
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)


def test_compiled_networks_train_on_cpu_dropout_included():
    # Without dropout the compiled step computes the eager losses; with it, the compiled networks
    # draw their own masks (TorchInductor's), so only a working, changed result can be checked.
    config = load_preset("mlp-gan").replace({**CASES["mlp-gan"], "performance.device": "cpu"})
    steps, device = 3, torch.device("cpu")
    images, labels, order, noise_bank = same_inputs(config, 512, steps)
    eager = run_fast(config, device, images, labels, order, noise_bank, steps)
    compiled = run_fast(config.replace({"performance.compile": True}), device, images, labels, order, noise_bank, steps)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    dropout = config.replace({"performance.compile": True, "model.discriminator_dropout": 0.3})
    with_dropout = run_fast(dropout, device, images, labels, order, noise_bank, steps)
    assert torch.isfinite(with_dropout).all()
    assert not torch.allclose(with_dropout[:, :2], compiled[:, :2], rtol=1e-3, atol=1e-3)


def test_the_naive_loop_says_which_presets_it_cannot_reproduce():
    for name in ("recommended", "vanilla-gan", "tf-dcgan-tutorial", "compact-dcgan"):
        assert unsupported(load_preset(name)) is None, name
    assert unsupported(load_preset("r3gan")) == "the R2 penalty, the relativistic loss, penalties at intervals, the drift penalty"
    assert unsupported(load_preset("stacked-r3gan")) == "the R2 penalty, the relativistic loss, the drift penalty, the stacked-mnist dataset"
    assert "a packed discriminator" in unsupported(load_preset("stacked-pacgan"))
    assert unsupported(load_preset("stacked-dcgan")) == "several G updates a step, the stacked-mnist dataset"
    assert unsupported(load_preset("compact-dcgan").replace({"train.g_steps": 2})) == "several G updates a step"
