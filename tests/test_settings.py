"""npvae.settings: one definition of each run setting, from which fit's defaults, the command
line, config.json and a checkpoint's settings all come, with one clash check."""

import inspect
import json

import numpy as np
import pytest

import npvae
from npvae import cli, datasets, objectives, ops, optim, settings
from npvae.runfolder import RunFolderError, read_config, write_config
from npvae.train import fit

#: config.json as ``npvae train`` wrote it before npvae.settings (no figures, no npvae_version).
OLD_CONFIG = {"epochs": 2, "batch_size": 100, "mc_samples": 1, "latent_dim": 2, "hidden": [256], "activation": "relu",
              "optimizer": "rmsprop", "lr": None, "objective": "elbo", "noise": "fresh", "binarize": "none", "seed": 0,
              "dtype": "float32", "kl": "analytic", "estimator": "standard"}


#: The settings added after OLD_CONFIG that a resumed run must match, at their defaults.
LATER_DEFAULTS = {"protocol": "none", "lr_schedule": "constant", "output_bias": "zero", "shuffle": True,
                  "outer": 1, "beta": 0.5}


def train_options():
    parser = cli.build_parser()
    return {a.dest: a for a in parser._subparsers._group_actions[0].choices["train"]._actions}


def test_fits_defaults_are_the_settings_defaults():
    params = inspect.signature(fit).parameters
    shared = [name for name in params if name in settings.SETTINGS]
    assert set(shared) >= {"epochs", "batch_size", "mc_samples", "objective", "optimizer", "noise", "binarize",
                           "seed", "kl", "estimator"}
    for name in shared:
        assert params[name].default == settings.default(name), name


def test_every_train_option_is_a_setting_with_its_choices_and_default_help():
    options = train_options()
    for name in settings.TRAIN_SETTINGS:
        action, setting = options[name], settings.SETTINGS[name]
        assert action.default is None, name          # unset options are told apart on --resume
        if setting.choices is not None:
            assert tuple(action.choices) == setting.choices, name
        assert "(default " in action.help or setting.default is None, name


def test_choices_come_from_the_modules_that_own_them():
    assert settings.SETTINGS["activation"].choices == tuple(ops.ACTIVATIONS)
    assert settings.SETTINGS["objective"].choices == objectives.OBJECTIVES
    assert settings.SETTINGS["kl"].choices == objectives.KL
    assert settings.SETTINGS["estimator"].choices == objectives.ESTIMATORS
    assert settings.SETTINGS["binarize"].choices == datasets.BINARIZE_METHODS
    for name in settings.OPTIMIZERS:
        assert optim.get_optimizer(name).name == name


def test_evaluate_shares_the_options_with_its_own_defaults():
    parser = cli.build_parser()
    args = parser.parse_args(["evaluate", "m.npz"])
    assert (args.mc_samples, args.objective, args.seed, args.batch_size, args.k) == (1, "elbo", 0, 500, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "m.npz", "--objective", "vae"])


def test_one_validator_gives_the_same_message_to_fit_and_to_config_json(tmp_path):
    with pytest.raises(ValueError) as from_fit:
        fit(npvae.VAE(input_dim=4, hidden=(3,)), np.full((8, 4), 0.5), noise="frozen", verbose=0)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(OLD_CONFIG, noise="frozen")))
    with pytest.raises(RunFolderError) as from_config:
        read_config(path)
    assert str(from_fit.value) == "noise: expected one of 'fresh', 'fixed', got 'frozen'"
    assert str(from_config.value) == f"{path}: {from_fit.value}"


def test_config_json_round_trips_and_records_the_package_version(tmp_path):
    values = dict(settings.run_defaults(), hidden=[32, 16], lr=0.01, figures=False)
    path = write_config(tmp_path / "config.json", values)
    assert read_config(path) == values
    assert json.loads(path.read_text())["npvae_version"] == npvae.__version__


def test_a_config_json_written_before_the_figures_setting_reads_with_its_default(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(OLD_CONFIG))
    assert read_config(path) == dict(OLD_CONFIG, figures=True, **LATER_DEFAULTS)


@pytest.mark.parametrize("change,words", [
    (dict(seed=True), "seed: expected an integer >= 0, got True"),
    (dict(hidden=256), "hidden: expected a non-empty list of positive integers, got 256"),
    (dict(hidden=[16, 0]), "hidden: expected an integer >= 1, got 0"),
    (dict(lr=-1), "lr: expected a positive number or None"),
    (dict(figures="no"), "figures: expected true or false, got 'no'"),
    (dict(colour="red"), "unknown key(s) ['colour']"),
])
def test_a_bad_config_names_the_key(change, words):
    with pytest.raises(ValueError) as exc:
        settings.check_config(dict(OLD_CONFIG, **change))
    assert words in str(exc.value)


def test_a_missing_required_key_is_named():
    config = dict(OLD_CONFIG)
    del config["seed"]
    with pytest.raises(ValueError, match="key 'seed' is missing"):
        settings.check_config(config)


def test_check_resume_names_every_difference_and_lets_epochs_and_figures_change():
    stored = dict(OLD_CONFIG, figures=True)
    settings.check_resume(stored, dict(epochs=9, figures=False, seed=0), "the run")
    with pytest.raises(settings.SettingsClash) as exc:
        settings.check_resume(stored, dict(seed=1, mc_samples=5, epochs=9), "the run")
    message = str(exc.value)
    assert message.startswith("resume: the run was written with other settings; ")
    assert "seed: it has 0, this run has 1" in message and "mc_samples: it has 1, this run has 5" in message
    assert "epochs" not in message


def test_a_checkpoints_settings_use_the_names_of_config_json():
    model = npvae.VAE(input_dim=4, hidden=(3,), dtype=np.float32)
    values = {name: settings.default(name) for name in ("epochs", "batch_size", "mc_samples", "objective", "kl",
                                                        "estimator", "noise", "binarize", "seed")}
    record = settings.checkpoint_settings(model.config, values, optim.RMSprop(lr=0.01), 20, None)
    assert set(record) - {"input_dim", "optimizer_config", "n_train", "n_val"} <= set(settings.TRAIN_SETTINGS)
    assert record["hidden"] == [3] and record["dtype"] == "float32" and record["optimizer"] == "rmsprop"
    assert record["optimizer_config"]["lr"] == 0.01 and "epochs" not in record


def test_old_checkpoint_settings_are_read_in_the_current_layout():
    # as train._settings wrote them before npvae.settings: the architecture nested, the
    # optimizer a dict with its name
    old = {"model": {"input_dim": 4, "hidden": [3], "latent_dim": 2, "activation": "relu", "dtype": "float32"},
           "n_train": 20, "n_val": None, "batch_size": 100, "mc_samples": 1, "objective": "elbo", "kl": "analytic",
           "estimator": "standard", "noise": "fresh", "binarize": "none", "seed": 0,
           "optimizer": {"lr": 0.01, "rho": 0.9, "epsilon": 1e-07, "name": "rmsprop"}}
    model = npvae.VAE(input_dim=4, hidden=(3,), dtype=np.float32)
    values = {k: old[k] for k in ("batch_size", "mc_samples", "objective", "kl", "estimator", "noise", "binarize",
                                  "seed")}
    values.update(LATER_DEFAULTS)      # an old checkpoint was trained at the defaults of later settings
    assert settings.upgrade_checkpoint_settings(old) == settings.checkpoint_settings(
        model.config, values, optim.RMSprop(lr=0.01), 20, None)


def test_check_epochs_refuses_to_shorten_a_run():
    settings.check_epochs(2, 2, "the run")
    settings.check_epochs(2, 5, "the run")
    with pytest.raises(ValueError, match=r"epochs: the run has 2 epochs done, more than the 1 asked for"):
        settings.check_epochs(2, 1, "the run")
