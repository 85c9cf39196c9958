"""npvae.serialization: the model file and the checkpoint in one module, their version
metadata, their old layouts, and the one check of a checkpoint's optimizer state."""

import ast
import warnings
from pathlib import Path

import numpy as np
import pytest

import npvae
from npvae import io, model, serialization, settings, train


@pytest.mark.parametrize("config", [dict(input_dim=4, hidden=(3,), latent_dim=2),
                                    dict(input_dim=9, hidden=(7, 5, 3), latent_dim=4),
                                    dict(input_dim=1, hidden=(1,), latent_dim=1)])
def test_the_shapes_it_checks_files_against_are_the_models(config):
    vae = npvae.VAE(**config)
    assert serialization._param_shapes(vae.config) == vae.param_shapes()


def test_it_imports_no_module_of_npvae_but_io_and_the_schema():
    # so that the model can import it: no import cycle, lazy or not
    tree = ast.parse(Path(serialization.__file__).read_text())
    relative = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level
                and node.module}
    relative |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level
                 and node.module is None for alias in node.names}
    assert relative == {"io", "params"}


def test_the_old_public_names_still_work(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.save_model is serialization.save_model and model.model_arrays is serialization.model_arrays
        assert (model.MODEL_FORMAT, model.MODEL_VERSION) == (serialization.MODEL_FORMAT, serialization.MODEL_VERSION)
        assert train.CHECKPOINT_FORMAT == serialization.CHECKPOINT_FORMAT
        vae = npvae.VAE(input_dim=4, hidden=(3,))
        path = model.save_model(vae, tmp_path / "m.npz")
        assert model.load_model(path).config == npvae.load(path).config == vae.config
        again = model.model_from_arrays(model.model_arrays(vae), "arrays")
        np.testing.assert_array_equal(again.params["enc.0.W"], vae.params["enc.0.W"])


def test_a_model_file_records_the_package_version(tmp_path):
    path = npvae.VAE(input_dim=4, hidden=(3,)).save(tmp_path / "m.npz")
    assert io.from_str_array(io.load_npz(path)["npvae_version"]) == npvae.__version__


def test_a_model_file_without_the_version_loads(tmp_path):
    # as npvae wrote model files before it recorded its version
    vae = npvae.VAE(input_dim=4, hidden=(3,), seed=1)
    arrays = serialization.model_arrays(vae)
    del arrays["npvae_version"]
    path = io.atomic_savez(tmp_path / "m.npz", arrays)
    np.testing.assert_array_equal(npvae.load(path).params["dec.out.W"], vae.params["dec.out.W"])


@pytest.mark.parametrize("change,words", [(dict(hidden="abc"), "input_dim, hidden, latent_dim: expected positive"),
                                          (dict(latent_dim=0), "got 4, [3], 0"),
                                          (dict(dtype="float16"), "dtype: expected 'float32' or 'float64'"),
                                          (dict(activation="sigmoid"), "activation: expected one of"),
                                          (dict(colour="red"), "unexpected keyword argument 'colour'")])
def test_a_stored_architecture_that_is_not_valid_is_named(tmp_path, change, words):
    arrays = serialization.model_arrays(npvae.VAE(input_dim=4, hidden=(3,)))
    arrays["config"] = io.to_json_array(dict(npvae.VAE(input_dim=4, hidden=(3,)).config, **change))
    path = io.atomic_savez(tmp_path / "m.npz", arrays)
    with pytest.raises(npvae.ModelFileError, match="the stored architecture is not valid") as exc:
        npvae.load(path)
    assert words in str(exc.value) and str(path) in str(exc.value)


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------
def make_data(n=120, d=6, seed=0):
    return np.random.default_rng(seed).random((n, d))


def small_model(seed=0):
    return npvae.VAE(input_dim=6, hidden=(5,), latent_dim=2, seed=seed, backend="numpy")


def old_layout(record):
    """A training record's settings as npvae wrote them before npvae.settings (train._settings):
    the architecture nested under "model", the optimizer a dict holding its name."""
    s = dict(record["settings"])
    old = {"model": {k: s.pop(k) for k in settings.ARCHITECTURE_SETTINGS}}
    old.update(s)
    old["optimizer"] = dict(old.pop("optimizer_config"), name=old["optimizer"])
    return dict(record, settings=old)


def test_a_checkpoint_of_the_old_layout_resumes_bit_for_bit(tmp_path):
    x = make_data()
    straight = small_model()
    h_straight = npvae.fit(straight, x, epochs=4, batch_size=32, mc_samples=2, validation_data=x[:20], verbose=0)

    ck = tmp_path / "ck.npz"
    npvae.fit(small_model(), x, epochs=2, batch_size=32, mc_samples=2, validation_data=x[:20], verbose=0,
              checkpoint=ck)
    arrays = io.load_npz(ck)
    arrays["train"] = io.to_json_array(old_layout(io.from_json_array(arrays["train"])))
    del arrays["npvae_version"]
    io.atomic_savez(ck, arrays)
    assert "model" in io.from_json_array(io.load_npz(ck)["train"])["settings"]

    resumed = small_model(seed=5)
    h_resumed = npvae.fit(resumed, x, epochs=4, batch_size=32, mc_samples=2, validation_data=x[:20], verbose=0,
                          checkpoint=ck, resume=True)
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in h_resumed] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in h_straight]
    for name in straight.params:
        np.testing.assert_array_equal(resumed.params[name], straight.params[name], err_msg=name)


def test_resuming_the_old_layout_with_other_settings_is_still_refused(tmp_path):
    x, ck = make_data(), tmp_path / "ck.npz"
    npvae.fit(small_model(), x, epochs=1, batch_size=32, verbose=0, checkpoint=ck)
    arrays = io.load_npz(ck)
    arrays["train"] = io.to_json_array(old_layout(io.from_json_array(arrays["train"])))
    io.atomic_savez(ck, arrays)
    with pytest.raises(settings.SettingsClash, match=r"optimizer_config: it has \{.*'lr': 0.001.*this run has"):
        npvae.fit(small_model(), x, epochs=2, batch_size=32, optimizer=npvae.optim.RMSprop(lr=0.01), verbose=0,
                  checkpoint=ck, resume=True)


def test_fit_refuses_to_resume_a_checkpoint_of_more_epochs_and_leaves_the_model_alone(tmp_path):
    x, ck = make_data(), tmp_path / "ck.npz"
    npvae.fit(small_model(), x, epochs=2, batch_size=32, verbose=0, checkpoint=ck)
    fresh = small_model(seed=7)
    before = {k: v.copy() for k, v in fresh.params.items()}
    with pytest.raises(ValueError, match=r"epochs: the checkpoint .* has 2 epochs done, more than the 1 asked for"):
        npvae.fit(fresh, x, epochs=1, batch_size=32, verbose=0, checkpoint=ck, resume=True)
    for name, p in before.items():
        np.testing.assert_array_equal(fresh.params[name], p)


def checkpoint_arrays(tmp_path):
    path = tmp_path / "ck.npz"
    npvae.fit(small_model(), make_data(), epochs=1, batch_size=32, verbose=0, checkpoint=path)
    return path, io.load_npz(path)


def test_an_optimizer_state_of_another_dtype_is_refused_before_reading(tmp_path):
    path, arrays = checkpoint_arrays(tmp_path)
    arrays["optim/v/enc.0.W"] = np.zeros((6, 5), np.float32)        # the model is float64
    io.atomic_savez(path, arrays)
    with pytest.raises(npvae.ModelFileError, match=r"optimizer state v/enc.0.W: declares dtype float32, "
                                                   r"expected float64 \(its parameter's\)"):
        train.load_checkpoint(path)


def test_an_optimizer_slot_missing_a_parameter_is_refused(tmp_path):
    path, arrays = checkpoint_arrays(tmp_path)
    del arrays["optim/v/dec.out.b"]
    io.atomic_savez(path, arrays)
    with pytest.raises(npvae.ModelFileError, match=r"optimizer state v: holds no array for the parameters "
                                                   r"\['dec.out.b'\]"):
        train.load_checkpoint(path)


def test_a_checkpoint_is_read_without_building_a_model(tmp_path):
    path, arrays = checkpoint_arrays(tmp_path)
    state = serialization.read_checkpoint(path)
    assert state["config"] == small_model().config and state["epoch"] == 1
    assert set(state["params"]) == set(small_model().params)
    assert state["settings"]["optimizer"] == "rmsprop" and state["settings"]["n_train"] == 120
    with pytest.raises(FileNotFoundError, match="none.npz"):
        serialization.read_checkpoint(tmp_path / "none.npz")
