import pytest

from mnistgan.config import Config, load_preset, load_toml, parse_overrides, preset_names
from mnistgan.errors import UserError

REFERENCE_PRESETS = ["keras-dcgan", "tf-dcgan-tutorial", "mlp-gan", "vanilla-gan", "mlp-gan-dropout"]


def test_the_five_reference_presets_exist_and_load():
    assert set(REFERENCE_PRESETS) <= set(preset_names())
    for name in REFERENCE_PRESETS:
        config = load_preset(name)
        assert config.preset == name and config.description


def test_preset_values_are_their_references():
    tf = load_preset("tf-dcgan-tutorial")
    assert (tf.train.epochs, tf.train.batch_size, tf.train.update) == (50, 256, "simultaneous")
    assert (tf.optim.generator_lr, tf.optim.discriminator_lr, tf.optim.eps) == (1e-4, 1e-4, 1e-7)
    assert (tf.model.leaky_slope, tf.model.batchnorm_momentum, tf.model.batchnorm_eps) == (0.3, 0.01, 1e-3)
    keras = load_preset("keras-dcgan")
    assert (keras.train.epochs, keras.train.batch_size, keras.optim.beta1, keras.optim.generator_lr) == (20, 256, 0.5, 2e-4)
    mlp = load_preset("mlp-gan")
    assert (mlp.train.epochs, mlp.train.batch_size, mlp.model.generator_widths) == (550, 64, [256, 512, 1024])
    assert load_preset("vanilla-gan").optim.optimizer == "sgd"
    dropout = load_preset("mlp-gan-dropout")
    assert (dropout.model.latent_distribution, dropout.model.generator_dropout, dropout.model.discriminator_dropout) == ("uniform", 0.3, 0.3)
    assert (dropout.optim.generator_lr, dropout.loss.label_smoothing) == (2e-4, 0.1)  # changed from 0.002: preset comment


def test_overrides_are_typed():
    overrides = parse_overrides(["train.epochs=3", "optim.generator_lr=1e-3", "model.conditional=true",
                                 "loss.adversarial=hinge", "model.generator_widths=[32, 64]"])
    config = load_preset("mlp-gan").replace(overrides)
    assert config.train.epochs == 3 and config.optim.generator_lr == 1e-3 and config.model.conditional is True
    assert config.loss.adversarial == "hinge" and config.model.generator_widths == [32, 64]


def test_an_integer_is_accepted_where_a_float_is_expected():
    assert Config().replace({"optim.generator_lr": 1}).optim.generator_lr == 1.0


@pytest.mark.parametrize("override, message", [
    ({"train.epoch": 3}, "unknown config key 'train.epoch' \\(did you mean train.epochs\\?\\)"),
    ({"training.epochs": 3}, "unknown config key 'training.epochs'"),
    ({"train.epochs": 0}, "train.epochs = 0 is out of range; it must be >= 1"),
    ({"train.epochs": 2.5}, "train.epochs must be an integer"),
    ({"train.batch_size": 0}, "train.batch_size = 0 is out of range"),
    ({"optim.generator_lr": -0.1}, "optim.generator_lr = -0.1 is out of range; it must be > 0"),
    ({"optim.generator_lr": 0}, "it must be > 0"),
    ({"optim.generator_lr": "fast"}, "optim.generator_lr must be a number"),
    ({"model.conditional": "yes"}, "model.conditional must be true or false"),
    ({"loss.adversarial": "wgan"}, "choose one of minimax, non-saturating"),
    ({"model.generator_widths": []}, "must be a non-empty list"),
    ({"model.generator_widths": [0, 3]}, "positive integers"),
    ({"model.generator_strides": [1, 2]}, "one stride per transposed conv"),
    ({"model.generator_strides": [3, 2, 2]}, "cannot grow 3x3 into 7x7"),
    ({"model.generator_widths": [64, 32, 16, 8], "model.generator_strides": [2, 2, 2, 2], "model.kernel_size": 4},
     "cannot grow 4x4 into 7x7"),  # an even kernel makes only even sizes at stride 2
    ({"train.update": "simultaneous", "train.d_steps": 2}, "needs train.update = 'alternating'"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(UserError, match=message):
        load_preset("tf-dcgan-tutorial").replace(override)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown preset 'dcgan'; choose one of: .*tf-dcgan-tutorial"):
        load_preset("dcgan")


def test_set_syntax():
    with pytest.raises(UserError, match="not of the form"):
        parse_overrides(["train.epochs"])
    assert parse_overrides(["performance.device=cuda:1"]) == {"performance.device": "cuda:1"}


def test_config_round_trips_through_toml(tmp_path):
    from mnistgan.config import load_toml

    config = load_preset("keras-dcgan").replace({"train.epochs": 7})
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml())
    assert load_toml(path) == config


def test_stored_configs_from_before_a_key_keep_their_behaviour(tmp_path):
    """A run's config.toml holds every key; one written before model.feature_order existed ran "chw"."""
    stored = load_preset("keras-dcgan").to_toml()
    assert 'feature_order = "hwc"' in stored
    old = tmp_path / "config.toml"
    old.write_text(stored.replace('feature_order = "hwc"\n', ""))
    assert load_toml(old, stored=True).model.feature_order == "chw"
    assert load_toml(old).model.feature_order == "hwc"  # a user's partial file gets today's default
    assert load_toml(old, stored=True).replace({"model.feature_order": "hwc"}) == load_preset("keras-dcgan")
    new = tmp_path / "new.toml"
    new.write_text(stored)
    assert load_toml(new, stored=True).model.feature_order == "hwc"


def test_a_stored_config_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(UserError) as caught:
        load_toml(path, stored=True)
    message = str(caught.value)
    assert str(path) in message and "not UTF-8" in message and "\n" not in message, message


# -- preset names are names; a user's own preset is a file loaded as one ---------------------------

def test_an_empty_preset_name_is_an_error_listing_the_presets():
    for name in ("", "  "):
        with pytest.raises(UserError) as caught:
            load_preset(name)
        message = str(caught.value)
        assert "empty" in message and "choose one of: " in message and "recommended" in message


@pytest.mark.parametrize("name", ["presets/recommended", "recommended.toml", ".", "..", "/etc/passwd", "recommended/",
                                  "..\\recommended"])
def test_a_preset_name_that_looks_like_a_path_is_an_error_listing_the_presets(name):
    with pytest.raises(UserError) as caught:
        load_preset(name)
    message = str(caught.value)
    assert f"unknown preset {name!r}" in message and "not a path" in message and "choose one of: " in message
    assert "recommended" in message.split("choose one of: ")[1]


def test_a_preset_name_never_reads_a_file_outside_the_presets_folder(tmp_path):
    import os

    from mnistgan.config import PRESET_DIR

    outside = tmp_path / "outside.toml"
    outside.write_text('description = "read from outside the presets folder"\n')
    name = os.path.relpath(tmp_path / "outside", PRESET_DIR)  # ../../../tmp/...
    with pytest.raises(UserError, match="not a path; choose one of: "):
        load_preset(name)


def test_a_preset_suffixed_with_toml_suggests_the_name():
    with pytest.raises(UserError, match="did you mean 'recommended'\\?"):
        load_preset("recommended.toml")


def test_preset_names_are_the_shipped_files(tmp_path, monkeypatch):
    from mnistgan import config as config_module

    for name in ("mine.toml", ".hidden.toml", "with space.toml", "notes.txt"):
        (tmp_path / name).write_text("")
    (tmp_path / "folder.toml").mkdir()
    monkeypatch.setattr(config_module, "PRESET_DIR", tmp_path)
    assert preset_names() == ["mine"]


def test_a_preset_file_loads_over_the_defaults(tmp_path):
    from mnistgan.config import load_preset_file

    path = tmp_path / "my-gan.toml"
    path.write_text(load_preset("keras-dcgan").replace({"train.epochs": 7}).to_toml())
    config = load_preset_file(path)
    assert config.preset == "my-gan" and config.train.epochs == 7
    assert config.replace({"preset": "keras-dcgan", "train.epochs": load_preset("keras-dcgan").train.epochs}) == load_preset("keras-dcgan")
    partial = tmp_path / "partial.toml"
    partial.write_text("[train]\nepochs = 3\n")
    assert load_preset_file(str(partial)) == Config(preset="partial").replace({"train.epochs": 3})


PRESET_FILE_PROBLEMS = {  # what the file is -> words its one-line error must hold
    "missing": (lambda path: None, "does not exist"),
    "folder": (lambda path: path.mkdir(), "is a folder"),
    "not-toml": (lambda path: path.write_text("[train\nepochs = 3\n"), "not valid TOML"),
    "binary": (lambda path: path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00"), "not a text file"),
    "unknown-key": (lambda path: path.write_text("[train]\nepoch = 3\n"), "unknown config key 'train.epoch'"),
    "unknown-section": (lambda path: path.write_text("[training]\nepochs = 3\n"), "unknown config section(s) training"),
    "bad-value": (lambda path: path.write_text("[train]\nepochs = -1\n"), "train.epochs = -1 is out of range"),
    "huge": (lambda path: path.write_bytes(b"# " + b"x" * 2_000_000 + b"\n"), "too large"),
}


@pytest.mark.parametrize("problem", sorted(PRESET_FILE_PROBLEMS))
def test_a_bad_preset_file_is_one_line_naming_it(tmp_path, problem):
    from mnistgan.config import load_preset_file

    make, words = PRESET_FILE_PROBLEMS[problem]
    path = tmp_path / "mine.toml"
    make(path)
    with pytest.raises(UserError) as caught:
        load_preset_file(path)
    message = str(caught.value)
    assert message.startswith(f"preset file {path}") and words in message and "\n" not in message, message


def test_penalties_at_intervals_need_a_penalty_to_space_out():
    config = load_preset("r3gan")
    assert config.replace({"loss.penalty_interval": 4}).loss.penalty_interval == 4
    with pytest.raises(UserError, match="loss.penalty_interval = 4 spaces out R1 and R2, which are off: set loss.r1_gamma"):
        load_preset("mlp-gan").replace({"loss.penalty_interval": 4})


@pytest.mark.parametrize("preset, overrides, named", [
    ("r3gan", {}, "loss.r1_gamma, loss.r2_gamma"),
    ("mlp-gan", {"loss.adversarial": "wasserstein-gp"}, "wasserstein-gp's loss.gp_lambda"),
])
def test_compiling_refuses_gradient_penalties_in_one_line(preset, overrides, named):
    # torch.compile's autograd fails at the first penalised step (a double backward): say so before training.
    with pytest.raises(UserError) as caught:
        load_preset(preset).replace({**overrides, "performance.compile": True})
    message = str(caught.value)
    assert f"performance.compile cannot train with gradient penalties ({named})" in message, message
    assert "set performance.compile = false" in message and "\n" not in message
    assert load_preset("mlp-gan").replace({"performance.compile": True}).performance.compile  # no penalty: allowed
    assert load_preset(preset).replace({**overrides, "loss.r1_gamma": 0.0, "loss.r2_gamma": 0.0, "loss.gp_lambda": 0.0,
                                        "loss.penalty_interval": 1, "performance.compile": True}).performance.compile


def test_an_ema_ramp_up_needs_an_ema():
    assert load_preset("r3gan").replace({"train.ema_rampup": 0.05}).train.ema_rampup == 0.05
    with pytest.raises(UserError, match="train.ema_rampup shortens the EMA of G, which is off: set train.ema_decay"):
        load_preset("mlp-gan").replace({"train.ema_rampup": 0.05})


def test_packing_needs_unconditional_models_and_whole_packs_per_batch():
    config = load_preset("mlp-gan")
    assert config.replace({"model.pack": 4, "train.batch_size": 64}).model.pack == 4
    with pytest.raises(UserError, match="train.batch_size 63 must be a multiple of model.pack 2"):
        config.replace({"model.pack": 2, "train.batch_size": 63})
    with pytest.raises(UserError, match="no single label; set model.conditional = false or model.pack = 1"):
        config.replace({"model.pack": 2, "model.conditional": True})
