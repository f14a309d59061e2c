"""Where and how training computes (devices.py): the device a name means, the precision "auto"
chooses, and the backend flags training sets. No GPU needed: CUDA's presence is simulated.

The CPU precision probe and its cache in detail: tests/test_devices_probe.py."""

import pytest
import torch

from mnistgan import devices
from mnistgan.config import load_preset
from mnistgan.errors import UserError

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.fixture
def no_real_probe_and_no_user_cache(monkeypatch, tmp_path):
    """The precision tests never time real networks (minutes on 2 cores) nor write the user's cache."""
    def real_probe(*args, **kwargs):
        raise AssertionError("the real precision probe ran")

    monkeypatch.setattr(devices, "measure_step_seconds", real_probe)
    monkeypatch.setattr(devices, "precision_cache_path", lambda: tmp_path / "precision.json")


def simulate_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def assert_names(error, *words):
    for word in words:
        assert word in str(error), (word, str(error))


# -- the device ----------------------------------------------------------------------------------


def test_auto_and_bare_cuda_resolve_to_an_indexed_device(monkeypatch):
    """CUDA RNG state calls need an index: 'auto' and 'cuda' must become cuda:N."""
    simulate_gpus(monkeypatch, 1)
    for name in ("auto", "cuda", "cuda:0"):
        assert devices.resolve_device(name) == torch.device("cuda", 0)
    with pytest.raises(UserError) as missing:
        devices.resolve_device("cuda:3")
    assert_names(missing.value, "cuda:3", "does not exist", "1 GPU")


def test_auto_is_the_cpu_without_a_gpu_and_cuda_then_says_what_to_use(monkeypatch):
    simulate_gpus(monkeypatch, 0)
    assert devices.resolve_device("auto") == CPU and devices.resolve_device("cpu") == CPU
    with pytest.raises(UserError) as no_gpu:
        devices.resolve_device("cuda")
    assert_names(no_gpu.value, "cuda", "no CUDA GPU", "use cpu")


@pytest.mark.parametrize("name, words", [
    ("tpu", ("'tpu'", "unknown device", "auto, cpu, cuda")),
    ("cpu:5", ("cpu:5", "takes no index", "use cpu")),
    ("meta", ("meta", "not supported")),
])
def test_devices_training_cannot_use_are_refused_by_name(name, words):
    with pytest.raises(UserError) as refused:
        devices.resolve_device(name)
    assert_names(refused.value, *words)


def test_only_convolutional_networks_go_channels_last():
    dcgan, mlp = load_preset("tf-dcgan-tutorial"), load_preset("mlp-gan")
    assert devices.uses_channels_last(dcgan) and not devices.uses_channels_last(mlp)
    assert not devices.uses_channels_last(dcgan.replace({"performance.channels_last": False}))


# -- the precision -------------------------------------------------------------------------------


def rounds(fp32_ms: float, bf16_ms: float, count: int = 5) -> dict[str, list[float]]:
    return {"fp32": [fp32_ms / 1e3] * count, "bf16": [bf16_ms / 1e3] * count}


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_precision_is_bf16_only_where_measured_faster(monkeypatch, tmp_path, native_bf16, no_real_probe_and_no_user_cache):
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: native_bf16)
    measured = {"tf-dcgan-tutorial": rounds(20.0, 10.0),  # bf16 twice as fast
                "mlp-gan": rounds(10.0, 9.9)}  # bf16 1% faster: within the margin, fp32's accuracy wins
    probed = []

    def timer(config, precisions):
        probed.append(config.preset)
        return measured[config.preset]

    cache = tmp_path / "cache.json"
    for preset, faster in (("tf-dcgan-tutorial", "bf16"), ("mlp-gan", "fp32")):
        config = load_preset(preset)
        precision, reason = devices.choose_precision(config, CPU, timer=timer, cache_path=cache)
        assert precision == (faster if native_bf16 else "fp32"), reason
        forced = config.replace({"performance.precision": "fp32"})
        assert devices.choose_precision(forced, CPU, timer=timer, cache_path=cache)[0] == "fp32"
        assert devices.resolve_precision(forced, CPU) == "fp32"
    # Without native bf16 nothing is timed (emulated bf16 is far slower); with it, each network once.
    assert probed == (["tf-dcgan-tutorial", "mlp-gan"] if native_bf16 else [])
    if native_bf16:  # the measurement is remembered: the next run of the same network does not probe
        precision, reason = devices.choose_precision(load_preset("tf-dcgan-tutorial"), CPU, timer=timer, cache_path=cache)
        assert precision == "bf16" and "cached" in reason and len(probed) == 2
    else:
        assert devices.resolve_precision(load_preset("tf-dcgan-tutorial"), CPU) == "fp32"
    # CUDA: bf16 for the conv nets; TF32 beats bf16 for the MLPs at batch 64. Nothing is timed.
    assert devices.resolve_precision(load_preset("tf-dcgan-tutorial"), CUDA) == "bf16"
    assert devices.resolve_precision(load_preset("mlp-gan"), CUDA) == "fp32"
    assert devices.resolve_precision(load_preset("mlp-gan").replace({"performance.precision": "bf16"}), CUDA) == "bf16"


def test_auto_precision_is_full_fp32_for_the_losses_blind_to_the_logits_level(monkeypatch, tmp_path, no_real_probe_and_no_user_cache):
    # The relativistic loss's logits drift, and bf16 or TF32 then round away the differences it learns
    # from: fp32 without a probe, even on a CPU whose bf16 would measure faster, unless a drift term
    # holds the level (measured on a CPU and on a GPU).
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: True)

    def bf16_faster(config, precisions):
        return rounds(20.0, 10.0)

    def fp32_faster(config, precisions):
        return rounds(10.0, 20.0)

    unheld = load_preset("r3gan").replace({"loss.drift_penalty": 0.0})
    assert devices.needs_full_fp32(unheld)
    for device in (CPU, CUDA):
        precision, reason = devices.choose_precision(unheld, device, timer=bf16_faster)
        assert precision == "fp32" and "relativistic" in reason and "drift_penalty" in reason, reason
        forced = unheld.replace({"performance.precision": "bf16"})
        precision, reason = devices.choose_precision(forced, device)
        assert precision == "bf16" and reason.startswith("set by performance.precision") and "drift" in reason  # kept; a caution

    held = load_preset("stacked-r3gan")  # the level held, R1 and R2 on every D update
    assert held.loss.drift_penalty > 0 and held.loss.penalty_interval == 1 and not devices.needs_full_fp32(held)
    assert devices.bf16_caution(held, "bf16") == ""
    assert devices.choose_precision(held, CPU, timer=bf16_faster, cache_path=tmp_path / "held-a.json")[0] == "bf16"  # the probe decides
    assert devices.choose_precision(held, CPU, timer=fp32_faster, cache_path=tmp_path / "held-b.json")[0] == "fp32"
    assert devices.choose_precision(held, CUDA, timer=fp32_faster) == ("bf16", "auto on CUDA for convolutional networks")

    # R1 and R2 spaced out, as r3gan has them: bf16 broke it after ~40 epochs, its level held, on both devices.
    spaced = load_preset("r3gan")
    assert spaced.loss.drift_penalty > 0 and spaced.loss.penalty_interval == 4 and devices.needs_full_fp32(spaced)
    for device in (CPU, CUDA):
        precision, reason = devices.choose_precision(spaced, device, timer=bf16_faster, cache_path=tmp_path / "spaced.json")
        assert precision == "fp32" and "no TF32" in reason and "loss.penalty_interval = 4" in reason, reason
    assert "loss.penalty_interval" in devices.bf16_caution(spaced, "bf16")
    assert not devices.needs_full_fp32(spaced.replace({"loss.penalty_interval": 1}))
    assert not devices.needs_full_fp32(load_preset("tf-dcgan-tutorial").replace(  # measured for the relativistic loss only
        {"loss.r1_gamma": 1.0, "loss.penalty_interval": 4}))

    # With labels the held run still trained worse in bf16 (two seeds, training images): full fp32 again.
    labelled = load_preset("r3gan").replace({"model.conditional": True})
    assert labelled.loss.drift_penalty > 0 and devices.needs_full_fp32(labelled)
    for device in (CPU, CUDA):
        precision, reason = devices.choose_precision(labelled, device, timer=bf16_faster, cache_path=tmp_path / "labelled.json")
        assert precision == "fp32" and "with labels" in reason, reason
    forced = labelled.replace({"performance.precision": "bf16"})
    assert devices.choose_precision(forced, CPU)[0] == "bf16" and "with labels" in devices.bf16_caution(forced, "bf16")

    for preset in ("tf-dcgan-tutorial", "recommended", "mlp-gan"):
        assert not devices.needs_full_fp32(load_preset(preset))
    assert not devices.needs_full_fp32(load_preset("compact-dcgan"))  # labels, but a loss that pins the level
    # WGAN-GP's critic loss is blind to the level too; the losses that pin it through a sigmoid or a margin are not.
    for loss, full in (("relativistic", True), ("wasserstein-gp", True), ("non-saturating", False), ("hinge", False),
                       ("least-squares", False), ("minimax", False)):
        dcgan = load_preset("tf-dcgan-tutorial").replace({"loss.adversarial": loss})
        assert devices.needs_full_fp32(dcgan) == full, loss  # no drift term in this preset
        assert devices.resolve_precision(dcgan, CUDA) == ("fp32" if full else "bf16"), loss
        assert devices.resolve_precision(dcgan.replace({"loss.drift_penalty": 0.001}), CUDA) == "bf16", loss


# -- backend flags -------------------------------------------------------------------------------


FLAGS = ((torch.backends.cudnn, "benchmark"), (torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"))


@pytest.fixture
def backend_flags():
    """Reads the process-wide flags; puts them back as they were after the test."""
    saved = [getattr(module, name) for module, name in FLAGS]

    def read():
        return tuple(getattr(module, name) for module, name in FLAGS)
    yield read
    for (module, name), value in zip(FLAGS, saved):
        setattr(module, name, value)


def test_cuda_training_autotunes_convolutions_and_uses_tf32_only_in_fp32(backend_flags):
    dcgan = load_preset("tf-dcgan-tutorial")
    devices.configure_backends(dcgan, CUDA, "fp32")
    assert backend_flags() == (True, True, True)
    devices.configure_backends(dcgan, CUDA, "bf16")
    assert backend_flags() == (True, False, False)  # bf16 asked for: no silent TF32 on the fp32 parts
    unheld = load_preset("r3gan").replace({"loss.drift_penalty": 0.0})
    devices.configure_backends(unheld, CUDA, "fp32")
    assert backend_flags() == (True, False, False)  # full fp32 (devices.needs_full_fp32)
    devices.configure_backends(load_preset("stacked-r3gan"), CUDA, "fp32")
    assert backend_flags() == (True, True, True)  # the drift term holds the level: TF32 is fine
    devices.configure_backends(load_preset("r3gan"), CUDA, "fp32")
    assert backend_flags() == (True, False, False)  # the level held, but its spaced penalties broke in bf16: full fp32


def test_cpu_training_leaves_the_cuda_flags_alone(backend_flags):
    for (module, name), value in zip(FLAGS, (False, False, True)):
        setattr(module, name, value)
    before = backend_flags()
    for precision in ("fp32", "bf16"):
        devices.configure_backends(load_preset("tf-dcgan-tutorial"), CPU, precision)
        assert backend_flags() == before
