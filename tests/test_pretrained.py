"""Pretrained generators (zoo.py, api.pretrained): export from a run, the registry's SHA-256 check, float16 storage,
and the commands that list, sample and evaluate them. A tiny run of this session stands in for shipped weights."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import mnistgan
from mnistgan import zoo
from mnistgan.api import export_pretrained
from mnistgan.cli import main

from conftest import TINY_MLP


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny conditional run, trained for one epoch."""
    out = tmp_path_factory.mktemp("pretrained") / "run"
    mnistgan.train("mlp-gan", overrides={**TINY_MLP, "model.conditional": True}, out=out, progress=False)
    return out


@pytest.fixture
def shipped(trained_run, tmp_path, monkeypatch):
    """The run exported (float16) into a pretrained folder of its own and registered as "tiny"."""
    monkeypatch.setattr(zoo, "FOLDER", tmp_path)
    entry = export_pretrained(trained_run, tmp_path / "tiny.safetensors")
    monkeypatch.setattr(zoo, "REGISTRY", {"tiny": entry})
    return entry


def one_error_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_export_stores_float16_weights_with_the_runs_config_and_registers_the_files_sha256(trained_run, shipped):
    from mnistgan.metrics.evaluator import sha256_of

    assert shipped.file == "tiny.safetensors" and shipped.card == "docs/pretrained/tiny.md"
    assert shipped.sha256 == sha256_of(shipped.path) and shipped.description == "mlp-gan, conditional, 1 epoch on mnist"
    with safe_open(str(shipped.path), framework="pt") as handle:
        config, epoch = json.loads(handle.metadata()["config"]), handle.metadata().get("epoch")
        dtypes = {handle.get_tensor(name).dtype for name in handle.keys()}
    assert config == mnistgan.load(trained_run).config.to_dict() and epoch == "1"  # the run's full config, its epochs
    assert torch.float16 in dtypes and torch.float32 not in dtypes


def test_a_pretrained_generator_is_a_run_in_float32_that_samples_as_the_run_does(trained_run, shipped):
    gan = mnistgan.pretrained("tiny")
    run = mnistgan.load(trained_run)
    assert gan.config.model == run.config.model
    assert all(p.dtype == torch.float32 for p in gan.generator.parameters())
    # float16 keeps about 3 significant digits: the same images, to under one grey level of 255
    torch.testing.assert_close(gan.sample(32, seed=3, digit=7), run.sample(32, seed=3, digit=7), atol=2 / 255, rtol=0)
    assert gan.sample_digits(4, seed=1).shape == (40, 1, 28, 28)
    assert gan.grid(4, digit="all").size == (2 * (4 * 30 + 2), 2 * (10 * 30 + 2))
    assert gan.interpolate(rows=2, steps=3, morph=(3, 8)).shape == (6, 1, 28, 28)
    assert gan.evaluate(200, device="cpu")["n"] == 200


def test_full_precision_export_samples_exactly_as_the_run_from_a_file_about_twice_the_size(trained_run, shipped, monkeypatch):
    full = export_pretrained(trained_run, shipped.path.with_name("full.safetensors"), half=False)
    monkeypatch.setitem(zoo.REGISTRY, "full", full)
    assert torch.equal(mnistgan.pretrained("full").sample(16, seed=2), mnistgan.load(trained_run).sample(16, seed=2))
    assert full.path.stat().st_size > 1.8 * shipped.path.stat().st_size


def test_a_damaged_or_missing_file_and_an_unknown_name_are_one_clear_line(shipped, capsys, tmp_path, monkeypatch):
    data = bytearray(shipped.path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, inside the weights
    shipped.path.write_bytes(bytes(data))
    with pytest.raises(mnistgan.UserError, match="SHA-256 .* expected .*damaged or was replaced"):
        mnistgan.pretrained("tiny")
    line = one_error_line(capsys, ["sample", "--pretrained", "tiny", "--out", str(tmp_path / "x.png")])
    assert "tiny.safetensors" in line and "SHA-256" in line and "reinstall mnistgan" in line
    shipped.path.unlink()
    line = one_error_line(capsys, ["evaluate", "--pretrained", "tiny"])
    assert "'tiny' is not installed" in line and "reinstall" in line
    line = one_error_line(capsys, ["sample", "--pretrained", "nope", "--out", str(tmp_path / "x.png")])
    assert "unknown pretrained generator 'nope'" in line and "choose one of: tiny" in line
    monkeypatch.setattr(zoo, "REGISTRY", {})
    assert "ships none" in one_error_line(capsys, ["interpolate", "--pretrained", "nope"])


def test_the_listing_names_each_generator_its_size_and_description(shipped, capsys, monkeypatch):
    missing = zoo.Pretrained("gone.safetensors", "0" * 64, "a generator not installed", "docs/pretrained/gone.md")
    monkeypatch.setitem(zoo.REGISTRY, "gone", missing)
    assert main(["pretrained"]) == 0
    tiny, gone = capsys.readouterr().out.splitlines()
    assert tiny.startswith("tiny") and " MB" in tiny and shipped.description in tiny and shipped.card in tiny
    assert gone.startswith("gone") and "not installed" in gone
    monkeypatch.setattr(zoo, "REGISTRY", {})
    assert main(["pretrained"]) == 0
    assert "no pretrained generators ship" in capsys.readouterr().out


def test_sample_and_evaluate_take_a_pretrained_generator(shipped, capsys, tmp_path):
    assert main(["sample", "--pretrained", "tiny", "--digit", "7", "--n", "5", "--out", str(tmp_path / "sevens.npy")]) == 0
    assert main(["sample", "--pretrained", "tiny", "--digit", "all", "--n", "3", "--out", str(tmp_path / "digits.png")]) == 0
    assert "wrote 30 samples" in capsys.readouterr().out
    assert main(["evaluate", "--pretrained", "tiny", "--n", "200", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 200 and "conditional_accuracy" in result and result["weights"] == str(shipped.path)
    line = one_error_line(capsys, ["sample", "--pretrained", "tiny", "--run", "r"])
    assert "not allowed with" in line


def test_the_export_command_prints_the_sha256_and_the_entry_to_register(trained_run, capsys, tmp_path):
    from mnistgan.metrics.evaluator import sha256_of

    out = tmp_path / "digits-v1.safetensors"
    assert main(["pretrained", "--export", str(trained_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"sha256 {sha256_of(out)}" in printed
    assert f"'digits-v1': Pretrained(file='digits-v1.safetensors', sha256='{sha256_of(out)}'" in printed
    assert "--out" in one_error_line(capsys, ["pretrained", "--export", str(trained_run), "--out", str(tmp_path / "x.pt")])
    assert "--out" in one_error_line(capsys, ["pretrained", "--export", str(trained_run)])


# What `mnistgan evaluate --pretrained NAME --n 2000 --device cpu` measured for each shipped generator
# when it was added (its card in docs/pretrained/ has the numbers at 10,000 samples). A different
# file, evaluator or sampling path would move them; floating-point differences between CPUs do not.
SHIPPED_AT_2000 = {
    "recommended": {"fd": 0.7616, "precision": 0.889, "recall": 0.7567, "conditional_accuracy": 0.995},
    "unconditional": {"fd": 2.9940, "precision": 0.8265, "recall": 0.7862},
}


@pytest.mark.parametrize("name", sorted(zoo.REGISTRY))
def test_each_shipped_generator_reproduces_the_numbers_of_its_card(name):
    result = mnistgan.pretrained(name).evaluate(2000, device="cpu", save=False)
    for key, expected in SHIPPED_AT_2000[name].items():
        assert result[key] == pytest.approx(expected, rel=0.01, abs=1e-3), key


def test_every_shipped_generator_has_its_file_its_card_and_its_check():
    assert set(SHIPPED_AT_2000) == set(zoo.REGISTRY)
    for name, entry in zoo.REGISTRY.items():
        assert entry.path.is_file() and entry.path.stat().st_size < 4_000_000, name  # small enough to ship
        assert (Path(__file__).parents[1] / entry.card).is_file(), entry.card
