"""model.save / npvae.load: versioned .npz files and their failure modes."""

import numpy as np
import pytest

import npvae
from npvae import io
from npvae.model import model_arrays


def test_save_load_round_trip(tmp_path):
    model = npvae.VAE(input_dim=9, hidden=(5, 4), latent_dim=3, activation="tanh", seed=2, dtype=np.float32)
    model.params["dec.out.b"][:] = 0.25
    path = model.save(tmp_path / "m.npz")
    loaded = npvae.load(path)
    assert loaded.config == model.config
    for k in model.params:
        np.testing.assert_array_equal(loaded.params[k], model.params[k])
        assert loaded.params[k].dtype == np.float32
    x = np.full((2, 9), 0.5, dtype=np.float32)
    np.testing.assert_array_equal(loaded.encode(x)[0], model.encode(x)[0])


def test_file_is_plain_npz_without_pickles(tmp_path):
    path = npvae.VAE(input_dim=4, hidden=(3,)).save(tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as f:
        assert "config" in f.files and "param/enc.0.W" in f.files


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        npvae.load(tmp_path / "nope.npz")


def test_damaged_file(tmp_path):
    path = npvae.VAE(input_dim=4, hidden=(3,)).save(tmp_path / "m.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(npvae.ModelFileError, match="damaged"):
        npvae.load(path)


def test_unknown_version(tmp_path):
    model = npvae.VAE(input_dim=4, hidden=(3,))
    arrays = model_arrays(model)
    arrays["version"] = np.array(99)
    io.atomic_savez(tmp_path / "m.npz", arrays)
    with pytest.raises(npvae.ModelFileError, match="version 99 is not supported"):
        npvae.load(tmp_path / "m.npz")


def test_other_architecture(tmp_path):
    model = npvae.VAE(input_dim=4, hidden=(3,))
    arrays = model_arrays(model)
    arrays["param/enc.0.W"] = np.zeros((4, 7))
    io.atomic_savez(tmp_path / "m.npz", arrays)
    with pytest.raises(npvae.ModelFileError, match=r"param 'enc.0.W': expected shape \(4, 3\)"):
        npvae.load(tmp_path / "m.npz")


def test_not_a_model_file(tmp_path):
    io.atomic_savez(tmp_path / "m.npz", {"a": np.zeros(3)})
    with pytest.raises(npvae.ModelFileError, match="not an npvae model file"):
        npvae.load(tmp_path / "m.npz")
