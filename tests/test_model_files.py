"""model.save / npvae.load: versioned .npz files and their failure modes."""

import io as _io
import tracemalloc
import zipfile

import numpy as np
import pytest

import npvae
from npvae import io
from npvae.model import model_arrays

from _helpers import peak_while  # noqa: E402


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




def test_param_of_the_wrong_shape_is_refused_before_reading_the_arrays(tmp_path):
    # 32 MB of zeros in the wrong shape, deflated to a small file: without the header
    # check they would be allocated and inflated before the shape is compared
    arrays = model_arrays(npvae.VAE(input_dim=4, hidden=(3,)))
    arrays["param/enc.0.W"] = np.zeros((4, 10**6))
    path = io.atomic_savez(tmp_path / "m.npz", arrays, compress=True)
    del arrays
    error, peak = peak_while(lambda: npvae.load(path))
    assert isinstance(error, npvae.ModelFileError)
    assert str(path) in str(error)
    assert "param 'enc.0.W': expected shape (4, 3) dtype float64" in str(error)
    assert "got shape (4, 1000000) dtype float64" in str(error)
    assert peak < 4 << 20


def test_param_declaring_a_huge_shape_is_refused_naming_file_and_member(tmp_path):
    # a well-formed zip whose enc.0.W header declares 10**12 floats over its 96 bytes
    path = tmp_path / "m.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for key, a in model_arrays(npvae.VAE(input_dim=4, hidden=(3,))).items():
            buf = _io.BytesIO()
            if key == "param/enc.0.W":
                np.lib.format.write_array_header_1_0(
                    buf, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
                buf.write(a.tobytes())
            else:
                np.lib.format.write_array(buf, a)
            zf.writestr(key + ".npy", buf.getvalue())
    error, peak = peak_while(lambda: npvae.load(path))
    assert isinstance(error, npvae.ModelFileError)
    assert str(path) in str(error)
    assert "'param/enc.0.W' declares shape (1000000000000,) dtype float64" in str(error)
    assert peak < 4 << 20


def test_load_reads_only_what_a_model_needs_from_a_bigger_file(tmp_path):
    # a checkpoint holds a model and more; npvae.load leaves the rest unread
    model = npvae.VAE(input_dim=4, hidden=(3,))
    arrays = dict(model_arrays(model), **{"optim/big": np.zeros(4 * 10**6)})
    path = io.atomic_savez(tmp_path / "ckpt.npz", arrays, compress=True)
    del arrays
    loaded, peak = None, 0
    tracemalloc.start()
    try:
        loaded = npvae.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(loaded.params["enc.0.W"], model.params["enc.0.W"])
    assert peak < 4 << 20


def test_oversized_metadata_is_refused(tmp_path):
    arrays = model_arrays(npvae.VAE(input_dim=4, hidden=(3,)))
    arrays["config"] = np.array("x" * (1 << 19))  # 2 MB of UTF-32 text
    path = io.atomic_savez(tmp_path / "m.npz", arrays, compress=True)
    with pytest.raises(npvae.ModelFileError, match=r"m\.npz.*more than max_bytes=1048576.*'config'"):
        npvae.load(path)


# --------------------------------------------------------------------------
# Training checkpoints: what they declare is checked before it is read
# --------------------------------------------------------------------------
def small_checkpoint(tmp_path):
    """A real checkpoint of a tiny model after one epoch, and its arrays."""
    from npvae.train import fit
    model = npvae.VAE(input_dim=4, hidden=(3,), seed=0)
    x = np.random.default_rng(0).random((20, 4))
    path = tmp_path / "ckpt.npz"
    fit(model, x, epochs=1, batch_size=10, seed=0, checkpoint=path, verbose=False)
    return path, io.load_npz(path)


def test_a_checkpoint_round_trips_through_load_checkpoint(tmp_path):
    from npvae.train import load_checkpoint
    path, arrays = small_checkpoint(tmp_path)
    state = load_checkpoint(path)
    assert state["epoch"] == 1
    np.testing.assert_array_equal(state["model"].params["enc.0.W"], arrays["param/enc.0.W"])
    assert set(state["optimizer_state"]) == {k[len("optim/"):] for k in arrays if k.startswith("optim/")}


@pytest.mark.parametrize("key,declared,words", [
    ("optim/v/enc.0.W", (4, 10**6), "optimizer state v/enc.0.W: declares shape (4, 1000000), expected (4, 3)"),
    ("optim/v/nonesuch", (10**6,), "optimizer state v/nonesuch"),
    ("optim/iterations", (10**6,), "optimizer state iterations: declares shape (1000000,), expected ()"),
])
def test_a_checkpoint_declaring_a_big_optimizer_state_is_refused_before_reading(tmp_path, key, declared, words):
    from npvae.train import load_checkpoint
    path, arrays = small_checkpoint(tmp_path)
    arrays[key] = np.zeros(declared, dtype=arrays.get(key, np.zeros(0)).dtype)
    io.atomic_savez(path, arrays, compress=True)
    del arrays
    error, peak = peak_while(lambda: load_checkpoint(path))
    assert isinstance(error, npvae.ModelFileError)
    assert str(path) in str(error) and words in str(error)
    assert peak < 4 << 20


def test_a_checkpoint_whose_training_record_exceeds_the_cap_is_refused(tmp_path, monkeypatch):
    # the cap is 256 MiB; lowered here so that the record of one epoch exceeds it
    from npvae import serialization, train
    path, arrays = small_checkpoint(tmp_path)
    size = arrays["train"].dtype.itemsize
    monkeypatch.setattr(serialization, "_MAX_RECORD_BYTES", size - 4)
    with pytest.raises(npvae.ModelFileError, match=r"ckpt\.npz.*train: declares shape \(\) dtype <U\d+, "
                                                   rf"expected one JSON string of at most {size - 4} bytes"):
        train.load_checkpoint(path)
    monkeypatch.setattr(serialization, "_MAX_RECORD_BYTES", size)
    assert train.load_checkpoint(path)["epoch"] == 1


def test_a_model_file_is_not_taken_for_a_checkpoint(tmp_path):
    from npvae.train import load_checkpoint
    path = npvae.VAE(input_dim=4, hidden=(3,)).save(tmp_path / "m.npz")
    with pytest.raises(npvae.ModelFileError, match="is not an npvae training checkpoint"):
        load_checkpoint(path)
