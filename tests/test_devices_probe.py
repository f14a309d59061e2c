"""precision = "auto": CUDA by architecture; the CPU by a cached probe of the run's own networks.

No test here depends on how fast anything runs: the probe's timer is injected (or, through
``resolve_precision``, monkeypatched on the module), and native bf16 is forced on or off.
"""

from __future__ import annotations

import json

import pytest
import torch

from mnistgan import devices
from mnistgan.config import load_preset

from conftest import TINY_DCGAN, TINY_MLP

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


class FakeTimer:
    """Stands in for ``devices.measure_step_seconds``: fixed seconds per step, and how often it ran."""

    def __init__(self, fp32: float, bf16: float, rounds: int = 5):
        self.seconds = {"fp32": fp32, "bf16": bf16}
        self.rounds = rounds
        self.calls = 0

    def __call__(self, config, precisions):
        self.calls += 1
        assert precisions == ["fp32", "bf16"]
        return {precision: [self.seconds[precision]] * self.rounds for precision in precisions}


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: True)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty user cache for this test: the default cache path points into tmp_path."""
    monkeypatch.setenv("MNISTGAN_CACHE_DIR", str(tmp_path / "cache" / "mnist"))
    path = devices.precision_cache_path()
    assert path == tmp_path / "cache" / "precision.json"
    return path


@pytest.mark.parametrize("preset", ["tf-dcgan-tutorial", "mlp-gan"])
def test_bf16_measured_faster_is_chosen_and_slower_is_not(native_bf16, cache, preset):
    config = load_preset(preset)
    faster = FakeTimer(fp32=0.0121, bf16=0.0060)
    assert devices.choose_precision(config, CPU, timer=faster, cache_path=cache.with_name("a.json")) == \
        ("bf16", "measured 6.0 ms bf16 vs 12.1 ms fp32 per probe step")
    slower = FakeTimer(fp32=0.0121, bf16=0.0179)
    assert devices.choose_precision(config, CPU, timer=slower, cache_path=cache.with_name("b.json")) == \
        ("fp32", "measured 12.1 ms fp32 vs 17.9 ms bf16 per probe step")
    # A tie (within BF16_MARGIN) keeps fp32, the more accurate.
    tie = FakeTimer(fp32=0.0100, bf16=0.0099)
    assert devices.choose_precision(config, CPU, timer=tie, cache_path=cache.with_name("c.json"))[0] == "fp32"


def test_the_choice_is_cached_and_reused_without_probing(native_bf16, cache):
    config = load_preset("vanilla-gan")
    timer = FakeTimer(fp32=0.008, bf16=0.004)
    assert devices.choose_precision(config, CPU, timer=timer)[0] == "bf16"
    assert timer.calls == 1 and cache.is_file()
    stored = json.loads(cache.read_text())
    assert stored["version"] == devices.CACHE_VERSION and len(stored["entries"]) == 1
    entry = next(iter(stored["entries"].values()))
    assert entry["precision"] == "bf16" and entry["preset"] == "vanilla-gan" and entry["batch_size"] == 64

    precision, reason = devices.choose_precision(config, CPU, timer=timer)
    assert (precision, timer.calls) == ("bf16", 1)  # no second probe
    assert reason == "cached: measured 4.0 ms bf16 vs 8.0 ms fp32 per probe step"
    # resolve_precision (what existing callers use) reads the same cache through the default path.
    assert devices.resolve_precision(config, CPU) == "bf16"

    # Another network shape, batch size or thread count is another entry, probed on its own.
    for other in (config.replace({"model.generator_widths": [64, 128]}), config.replace({"train.batch_size": 32})):
        assert devices.choose_precision(other, CPU, timer=FakeTimer(fp32=0.004, bf16=0.008))[0] == "fp32"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        other_threads = FakeTimer(fp32=0.004, bf16=0.008)
        assert devices.choose_precision(config, CPU, timer=other_threads)[0] == "fp32" and other_threads.calls == 1
    finally:
        torch.set_num_threads(threads)
    assert len(json.loads(cache.read_text())["entries"]) == 4
    assert devices.choose_precision(config, CPU, timer=timer) == ("bf16", reason)  # the first entry is kept


@pytest.mark.parametrize("damage", [b"", b"{not json", b"\xff\xfe\x00garbage", b"[1, 2]", b'{"version": 1, "entries": []}',
                                    b'{"version": 999, "entries": {}}', "entry"])
def test_a_damaged_cache_file_is_ignored_and_replaced(native_bf16, cache, damage):
    config = load_preset("vanilla-gan")
    if damage == "entry":  # the right key, a nonsense value
        devices.choose_precision(config, CPU, timer=FakeTimer(fp32=0.008, bf16=0.004))
        stored = json.loads(cache.read_text())
        stored["entries"] = {key: {"precision": "fp8", "reason": 3} for key in stored["entries"]}
        cache.write_text(json.dumps(stored))
    else:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(damage)
    timer = FakeTimer(fp32=0.004, bf16=0.008)
    assert devices.choose_precision(config, CPU, timer=timer) == ("fp32", "measured 4.0 ms fp32 vs 8.0 ms bf16 per probe step")
    assert timer.calls == 1
    assert devices.choose_precision(config, CPU, timer=timer)[1].startswith("cached: ")  # rewritten, readable again
    assert timer.calls == 1


def test_an_unwritable_cache_costs_nothing_but_the_next_probe(native_bf16, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = blocker / "precision.json"  # its folder cannot be created
    timer = FakeTimer(fp32=0.008, bf16=0.004)
    config = load_preset("vanilla-gan")
    assert devices.choose_precision(config, CPU, timer=timer, cache_path=path)[0] == "bf16"
    assert devices.choose_precision(config, CPU, timer=timer, cache_path=path)[0] == "bf16"
    assert timer.calls == 2 and not path.exists()


def test_rounds_that_disagree_are_not_cached(native_bf16, cache):
    def noisy(config, precisions):  # bf16 faster in the median, but only 3 of 5 rounds say so
        return {"fp32": [0.010, 0.010, 0.010, 0.010, 0.010], "bf16": [0.005, 0.006, 0.007, 0.020, 0.030]}

    precision, reason = devices.choose_precision(load_preset("vanilla-gan"), CPU, timer=noisy)
    assert precision == "bf16" and "not cached" in reason
    assert not cache.exists()


@pytest.mark.parametrize("rounds", [1, 2])
def test_too_few_rounds_are_not_cached(native_bf16, cache, rounds):
    # A big network, or a busy machine, leaves time for a round or two before the probe's deadline: one
    # unlucky round would otherwise decide every later run of these networks.
    timer = FakeTimer(fp32=0.8, bf16=1.4, rounds=rounds)
    precision, reason = devices.choose_precision(load_preset("stacked-dcgan"), CPU, timer=timer)
    assert precision == "fp32" and reason.endswith(f"{rounds} round{'s' if rounds > 1 else ''} only, not cached"), reason
    assert not cache.exists()
    timer = FakeTimer(fp32=0.8, bf16=1.4, rounds=devices.PROBE_MIN_ROUNDS)
    assert devices.choose_precision(load_preset("stacked-dcgan"), CPU, timer=timer)[1].startswith("measured")
    assert cache.exists()


def test_without_native_bf16_nothing_is_probed(monkeypatch, cache):
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: False)

    def no_probe(config, precisions):
        raise AssertionError("the probe ran")

    monkeypatch.setattr(devices, "measure_step_seconds", no_probe)
    for preset in ("tf-dcgan-tutorial", "mlp-gan"):
        precision, reason = devices.choose_precision(load_preset(preset), CPU)
        assert precision == "fp32" and "no native bf16" in reason
        assert devices.resolve_precision(load_preset(preset), CPU) == "fp32"
    assert not cache.exists()


def test_forced_precision_and_cuda_need_no_probe(monkeypatch, cache):
    def no_probe(config, precisions):
        raise AssertionError("the probe ran")

    monkeypatch.setattr(devices, "measure_step_seconds", no_probe)
    for native in (True, False):
        monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: native)
        for preset in ("tf-dcgan-tutorial", "mlp-gan"):
            config = load_preset(preset)
            for forced in ("fp32", "bf16"):
                assert devices.choose_precision(config.replace({"performance.precision": forced}), CPU) == \
                    (forced, "set by performance.precision")
    assert devices.resolve_precision(load_preset("tf-dcgan-tutorial"), CUDA) == "bf16"
    assert devices.resolve_precision(load_preset("keras-dcgan"), CUDA) == "bf16"
    assert devices.resolve_precision(load_preset("mlp-gan"), CUDA) == "fp32"  # TF32 beats bf16 at batch 64
    assert devices.resolve_precision(load_preset("recommended"), CUDA) == "fp32"
    assert not cache.exists()


@pytest.mark.parametrize("overrides", [TINY_MLP, TINY_DCGAN, {**TINY_MLP, "model.conditional": True,
                                                               "model.discriminator_dropout": 0.3}])
def test_the_probe_leaves_torchs_rng_alone_and_times_both_precisions(monkeypatch, overrides):
    """The real probe on tiny networks: torch's global RNG is where it was, and each precision has a
    positive time for each round (how large is not tested)."""
    monkeypatch.setattr(devices, "PROBE_SECONDS", 0.0)  # the minimum number of rounds
    config = load_preset("tf-dcgan-tutorial" if overrides is TINY_DCGAN else "mlp-gan").replace(overrides)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    expected_next = torch.rand(3)
    torch.set_rng_state(before)
    rounds = devices.measure_step_seconds(config, ["fp32", "bf16"])
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(torch.rand(3), expected_next)
    assert set(rounds) == {"fp32", "bf16"}
    # At most the minimum rounds; fewer when a round of emulated bf16 runs past the probe's deadline.
    assert all(1 <= len(seconds) <= devices.PROBE_MIN_ROUNDS and min(seconds) > 0 for seconds in rounds.values())


def test_choose_precision_with_the_real_probe_leaves_the_rng_alone(native_bf16, cache, monkeypatch):
    monkeypatch.setattr(devices, "PROBE_SECONDS", 0.0)
    config = load_preset("mlp-gan").replace({**TINY_MLP, "performance.precision": "auto"})
    torch.manual_seed(99)
    before = torch.get_rng_state()
    precision, reason = devices.choose_precision(config, CPU)
    assert precision in ("fp32", "bf16") and reason.startswith("measured ")
    assert torch.equal(torch.get_rng_state(), before)


def test_cpu_description_names_the_cpu_and_its_bf16_flags(monkeypatch):
    cpu = devices.cpu_description()
    assert cpu["model_name"] and cpu["threads"] == torch.get_num_threads()
    assert set(cpu["flags"]) <= set(devices.CPU_FLAGS)
    line = devices.describe_cpu(cpu)
    assert cpu["model_name"] in line and f"{cpu['threads']} threads" in line
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: False)
    assert "no native bf16" in devices.describe_cpu(devices.cpu_description())


def test_slow_networks_are_probed_for_one_round_only(monkeypatch):
    """No round starts past PROBE_DEADLINE (warm-up included), but there is always one."""
    monkeypatch.setattr(devices, "PROBE_DEADLINE", 0.0)
    rounds = devices.measure_step_seconds(load_preset("mlp-gan").replace(TINY_MLP), ["fp32", "bf16"])
    assert {precision: len(seconds) for precision, seconds in rounds.items()} == {"fp32": 1, "bf16": 1}
