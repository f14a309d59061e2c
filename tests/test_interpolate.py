"""Latent walks (``Run.interpolate``, ``mnistgan interpolate``): the pictures, their determinism, and one
clear line for each bad input. The generators are untrained: a walk's inputs, not its looks, are tested."""

import pytest
import torch
from PIL import Image

import mnistgan
from mnistgan.checkpoint import save_generator
from mnistgan.cli import main
from mnistgan.config import load_preset
from mnistgan.models import build_generator

from conftest import TINY_DCGAN, TINY_MLP

def make_run(folder, preset, tiny, **model):
    """A run folder as training leaves it, with a freshly initialised generator: its config and generator file."""
    config = load_preset(preset).replace({**tiny, **{f"model.{key}": value for key, value in model.items()}})
    folder.mkdir()
    (folder / "config.toml").write_text(config.to_toml())
    torch.manual_seed(0)
    save_generator(build_generator(config.model), config.to_dict(), folder / "generator.safetensors", "raw")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("walks")
    return {
        "normal": make_run(folder / "normal", "mlp-gan", TINY_MLP),
        "uniform": make_run(folder / "uniform", "mlp-gan", TINY_MLP, latent_distribution="uniform"),
        "conditional": make_run(folder / "conditional", "tf-dcgan-tutorial", TINY_DCGAN, conditional=True),
    }


def one_error_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("kind", ["normal", "uniform"])
def test_each_row_walks_from_one_sample_to_another(runs, kind):
    run = mnistgan.load(runs[kind])
    walks = run.interpolate(rows=3, steps=5, seed=2)
    assert walks.shape == (15, 1, 28, 28) and walks.dtype == torch.float32
    walks = walks.view(3, 5, 1, 28, 28)
    assert all(not torch.equal(walks[:, step], walks[:, step + 1]) for step in range(4))  # every step moves
    assert torch.equal(run.interpolate(rows=3, steps=5, seed=2).view(3, 5, 1, 28, 28), walks)
    assert not torch.equal(run.interpolate(rows=3, steps=5, seed=3).view(3, 5, 1, 28, 28), walks)


def test_a_conditional_walk_draws_one_digit_and_a_morph_goes_from_one_digit_to_another(runs):
    run = mnistgan.load(runs["conditional"])
    sevens = run.interpolate(rows=2, steps=4, seed=1, digit=7).view(2, 4, 1, 28, 28)
    morph = run.interpolate(rows=2, steps=4, seed=1, morph=(3, 8)).view(2, 4, 1, 28, 28)
    # A morph's ends are its digits, drawn from the row's noise.
    z = torch.randn(2, run.config.model.latent_dim, generator=torch.Generator().manual_seed(1))
    network = run.generator
    with torch.no_grad():
        torch.testing.assert_close(morph[:, 0], network(z, torch.tensor([3, 3])))
        torch.testing.assert_close(morph[:, -1], network(z, torch.tensor([8, 8])))
    assert not torch.equal(sevens, morph)
    default = run.interpolate(rows=2, steps=4, seed=1).view(2, 4, 1, 28, 28)  # row r draws digit r
    assert not torch.equal(default[0], default[1])


def test_the_command_writes_a_grid_and_a_gif_the_same_every_time(runs, tmp_path, capsys):
    for name in ("a", "b"):
        assert main(["interpolate", "--run", str(runs["normal"]), "--rows", "3", "--steps", "4", "--seed", "9",
                     "--out", str(tmp_path / f"{name}.png")]) == 0
        assert main(["interpolate", "--run", str(runs["conditional"]), "--rows", "2", "--steps", "5", "--morph", "1", "7",
                     "--out", str(tmp_path / f"{name}.gif")]) == 0
    assert "wrote 3 walks of 4 steps" in capsys.readouterr().out
    for suffix in ("png", "gif"):
        assert (tmp_path / f"a.{suffix}").read_bytes() == (tmp_path / f"b.{suffix}").read_bytes()
    # Images of 28 pixels, 2 apart, drawn twice as large: 60 pixels each, plus the border.
    assert Image.open(tmp_path / "a.png").size == (4 * 60 + 4, 3 * 60 + 4)  # steps across, rows down
    animation = Image.open(tmp_path / "a.gif")
    assert animation.n_frames == 2 * 5 - 2  # there and back, the ends once each
    assert animation.size == (2 * 60 + 4, 60 + 4)  # each frame: the two rows' images at one step


@pytest.mark.parametrize("argv, words", [
    (["interpolate", "--rows", "0"], ("--rows", "0", "at least 1")),
    (["interpolate", "--steps", "1"], ("--steps", "1", "at least 2")),
    (["interpolate", "--out", "walk.jpg"], ("--out", "walk.jpg", ".png", ".gif")),
    (["interpolate", "--out", "/nonexistent/walk.png"], ("--out", "/nonexistent", "does not exist")),
    (["interpolate"], ("give", "--run", "--pretrained")),
    (["interpolate", "--run", "r", "--pretrained", "p"], ("--pretrained", "not allowed with", "--run")),
    (["interpolate", "--digit", "all"], ("--digit", "'all'", "not a whole number")),
])
def test_bad_input_is_one_clear_line(capsys, argv, words):
    line = one_error_line(capsys, argv)
    assert all(word in line for word in words), line


@pytest.mark.parametrize("kind, options, words", [
    ("normal", ["--digit", "3"], ("--digit", "needs a conditional run", "--conditional")),
    ("normal", ["--morph", "3", "8"], ("--morph", "needs a conditional run", "--conditional")),
    ("conditional", ["--digit", "10"], ("--digit", "0-9", "10")),
    ("conditional", ["--morph", "3", "12"], ("--morph", "0-9", "12")),
    ("conditional", ["--morph", "3", "8", "--digit", "3"], ("--digit", "--morph", "not both")),
])
def test_a_walk_the_generator_cannot_draw_is_one_clear_line(runs, tmp_path, capsys, kind, options, words):
    line = one_error_line(capsys, ["interpolate", "--run", str(runs[kind]), *options, "--out", str(tmp_path / "w.png")])
    assert all(word in line for word in words), line
    assert not (tmp_path / "w.png").exists()
