"""Tests for npvae.datasets: finding, downloading, verifying and decoding MNIST; binarize.

Real-data tests use the `mnist_dir` fixture (tests/conftest.py). Everything else runs on tiny
synthetic IDX files: their MD5s are passed to `load_mnist(checksums=...)`, and downloads come
from ``file://`` mirrors made in tmp_path. Network access is replaced by a stub for every test.
"""

import gzip
import hashlib
import os
import re
import struct
import urllib.error
import urllib.request
import zlib

import numpy as np
import pytest

from npvae import datasets
from npvae.datasets import DataError, binarize, cache_dir, load_mnist, read_idx

from _helpers import idx_bytes, peak_while  # noqa: E402

NAMES = tuple(datasets.MNIST_FILES)
TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = NAMES


# ---------------------------------------------------------------------------------------------
# helpers




def make_mnist(n_train=5, n_test=3, seed=0):
    """Uncompressed bytes of four tiny MNIST-shaped IDX files, keyed by canonical name."""
    rng = np.random.default_rng(seed)
    return {
        TRAIN_IMAGES: idx_bytes(rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)),
        TRAIN_LABELS: idx_bytes(rng.integers(0, 10, n_train, dtype=np.uint8)),
        TEST_IMAGES: idx_bytes(rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)),
        TEST_LABELS: idx_bytes(rng.integers(0, 10, n_test, dtype=np.uint8)),
    }


def md5s(files):
    return {name: hashlib.md5(data).hexdigest() for name, data in files.items()}


def write_mnist(folder, files, gz=True):
    """Write `files` into `folder`, gzipped (``name.gz``) or raw; `gz` may be per name."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        zipped = gz[name] if isinstance(gz, dict) else gz
        if zipped:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return folder


def expected_arrays(files):
    """What load_mnist should return for `files`, decoded independently of the module."""
    out = []
    for images, labels in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        n = struct.unpack(">I", files[images][4:8])[0]
        x = np.frombuffer(files[images], np.uint8, offset=16).reshape(n, 784)
        y = np.frombuffer(files[labels], np.uint8, offset=8)
        out.append((x.astype(np.float32) / np.float32(255), y.astype(np.int64)))
    return out


def assert_same_data(got, want):
    assert len(got) == len(want)
    for (x, y), (x_want, y_want) in zip(got, want):
        assert x.dtype == np.float32 and x.shape == x_want.shape
        assert y.dtype == np.int64 and y.shape == y_want.shape
        # np.array_equal first: assert_array_equal takes seconds on 47M pixels.
        if not (np.array_equal(x, x_want) and np.array_equal(y, y_want)):
            np.testing.assert_array_equal(x, x_want)
            np.testing.assert_array_equal(y, y_want)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No NPVAE_DATA, a private cache, no network (file:// still works), a clean MD5 memo."""
    monkeypatch.delenv("NPVAE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    real_urlopen = urllib.request.urlopen

    def offline_urlopen(url, *args, **kwargs):
        if str(url).startswith("file:"):
            return real_urlopen(url, *args, **kwargs)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution (test stub)")

    monkeypatch.setattr(urllib.request, "urlopen", offline_urlopen)
    monkeypatch.setattr(datasets, "_VERIFIED", {})


@pytest.fixture
def synth():
    return make_mnist()


# ---------------------------------------------------------------------------------------------
# real data


@pytest.fixture(scope="module")
def real_mnist(mnist_dir):
    return load_mnist(mnist_dir, download=False, progress=False)


def test_real_mnist_shapes_dtypes_and_ranges(real_mnist):
    (x_train, y_train), (x_test, y_test) = real_mnist
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert x_train.dtype == x_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int64
    for x in (x_train, x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    for y in (y_train, y_test):
        assert set(np.unique(y)) == set(range(10))


def test_real_mnist_known_values(real_mnist):
    (x_train, y_train), (x_test, y_test) = real_mnist
    assert list(y_train[:5]) == [5, 0, 4, 1, 9]
    assert list(y_test[:5]) == [7, 2, 1, 0, 4]
    # The mean pixel behind the familiar Normalize((0.1307,), (0.3081,)).
    assert abs(float(x_train.mean(dtype=np.float64)) - 0.1307) < 1e-4
    assert np.bincount(y_train).tolist()[:2] == [5923, 6742]
    # Every pixel is k/255 for an integer k.
    k = x_train[:100] * 255
    np.testing.assert_array_equal(k, np.round(k))


def test_read_idx_reads_real_gzipped_file(mnist_dir, real_mnist):
    if mnist_dir.is_file():
        pytest.skip("NPVAE_DATA points at mnist.npz, not the IDX files")
    labels_path = next(p for p in (mnist_dir / TEST_LABELS, mnist_dir / (TEST_LABELS + ".gz"))
                       if p.is_file())
    labels = read_idx(labels_path)
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, real_mnist[1][1])


def test_real_mnist_roundtrips_through_keras_npz(tmp_path, mnist_dir, real_mnist):
    # Full-size mnist.npz as Keras ships it, built from the real IDX files: checks the npz
    # path against the IDX path on 70000 real images, and the real shapes check.
    if mnist_dir.is_file():
        pytest.skip("NPVAE_DATA points at mnist.npz, not the IDX files")
    raw = {}
    for key, name in (("x_train", TRAIN_IMAGES), ("y_train", TRAIN_LABELS),
                      ("x_test", TEST_IMAGES), ("y_test", TEST_LABELS)):
        raw[key] = read_idx(next(p for p in (mnist_dir / name, mnist_dir / (name + ".gz"))
                                 if p.is_file()))
    np.savez(tmp_path / "mnist.npz", **raw)
    assert_same_data(load_mnist(tmp_path / "mnist.npz", download=False), real_mnist)


# ---------------------------------------------------------------------------------------------
# read_idx


def test_read_idx_decodes_images_and_labels_from_bytes():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_idx(idx_bytes(images)), images)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    got = read_idx(bytearray(idx_bytes(labels)))
    assert got.dtype == np.uint8 and got.shape == (3,)
    np.testing.assert_array_equal(got, labels)


@pytest.mark.parametrize(
    "type_code, dtype", [(0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32),
                         (0x0D, np.float32), (0x0E, np.float64)]
)
def test_read_idx_decodes_big_endian_types_to_native(type_code, dtype):
    array = np.array([[-2, 1], [300, -7]]).astype(dtype) if dtype != np.int8 else np.array(
        [[-2, 1], [3, -7]], dtype=np.int8)
    got = read_idx(idx_bytes(array, type_code))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_reads_gzipped_and_raw_files_alike(tmp_path, gz):
    labels = np.array([9, 8, 7], dtype=np.uint8)
    data = idx_bytes(labels)
    path = tmp_path / ("labels.gz" if gz else "labels")
    path.write_bytes(gzip.compress(data) if gz else data)
    np.testing.assert_array_equal(read_idx(path), labels)
    np.testing.assert_array_equal(read_idx(str(path)), labels)


def test_read_idx_rejects_bad_magic():
    data = b"\x00\x00\x07\x01" + struct.pack(">I", 2) + b"\x01\x02"
    with pytest.raises(DataError, match=r"bad IDX magic number 0x00000701.*0x00000803"):
        read_idx(data)
    with pytest.raises(DataError, match="magic"):
        read_idx(b"PK\x03\x04 not idx at all")


@pytest.mark.parametrize("cut", [1, 3, 10])
def test_read_idx_reports_truncated_data(cut):
    data = idx_bytes(np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="truncated"):
        read_idx(data[:-cut] if cut != 3 else data[:cut])


def test_read_idx_reports_trailing_bytes():
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(idx_bytes(np.zeros(4, np.uint8)) + b"\x00")


def test_read_idx_wraps_missing_file_and_rejects_other_types(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "nope")
    with pytest.raises(TypeError, match="path_or_bytes"):
        read_idx(123)


# ---------------------------------------------------------------------------------------------
# load_mnist: formats


@pytest.mark.parametrize(
    "gz", [True, False, {TRAIN_IMAGES: True, TRAIN_LABELS: False, TEST_IMAGES: False,
                         TEST_LABELS: True}],
    ids=["gz", "raw", "mixed"],
)
def test_load_mnist_reads_gzipped_raw_and_mixed_files(tmp_path, synth, gz):
    folder = write_mnist(tmp_path / "data", synth, gz=gz)
    got = load_mnist(folder, download=False, checksums=md5s(synth))
    assert_same_data(got, expected_arrays(synth))


def test_load_mnist_returns_fresh_writable_arrays(tmp_path, synth):
    folder = write_mnist(tmp_path / "data", synth)
    (x, y), _ = load_mnist(folder, download=False, checksums=md5s(synth))
    x[:] = 7
    y[:] = 7
    (x2, y2), _ = load_mnist(folder, download=False, checksums=md5s(synth))
    assert_same_data([(x2, y2)], expected_arrays(synth)[:1])


def test_load_mnist_pixels_are_uint8_over_255_in_float32(tmp_path):
    files = make_mnist(n_train=2)
    images = np.arange(2 * 784, dtype=np.int64).reshape(2, 28, 28) % 256
    files[TRAIN_IMAGES] = idx_bytes(images.astype(np.uint8))
    folder = write_mnist(tmp_path / "d", files)
    (x, _), _ = load_mnist(folder, download=False, checksums=md5s(files))
    np.testing.assert_array_equal(x, (images.reshape(2, 784) / 255).astype(np.float32))
    assert x.min() == 0 and x.max() == 1


@pytest.fixture
def small_npz(monkeypatch):
    """Shrink the shapes load_mnist demands of mnist.npz (60000/10000) to 6/4 for speed."""
    shapes = {"x_train": (6, 28, 28), "y_train": (6,), "x_test": (4, 28, 28), "y_test": (4,)}
    monkeypatch.setattr(datasets, "_NPZ_SHAPES", shapes)
    return shapes


def keras_npz(path, shapes, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        k: rng.integers(0, 256 if k.startswith("x") else 10, s, dtype=np.uint8)
        for k, s in shapes.items()
    }
    arrays["x_train"][0, 0, :5] = [0, 1, 128, 254, 255]
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize("as_file", [True, False], ids=["path-to-npz", "folder"])
def test_load_mnist_reads_keras_npz(tmp_path, small_npz, as_file):
    arrays = keras_npz(tmp_path / "mnist.npz", small_npz)
    (x_train, y_train), (x_test, y_test) = load_mnist(
        tmp_path / "mnist.npz" if as_file else tmp_path, download=False
    )
    assert x_train.shape == (6, 784) and x_test.shape == (4, 784)
    assert x_train.dtype == x_test.dtype == np.float32 and y_train.dtype == np.int64
    np.testing.assert_array_equal(x_train[0, :5], np.float32([0, 1, 128, 254, 255]) / 255)
    np.testing.assert_array_equal(x_test, arrays["x_test"].reshape(4, 784) / np.float32(255))
    np.testing.assert_array_equal(y_train, arrays["y_train"])
    np.testing.assert_array_equal(y_test, arrays["y_test"])


def test_idx_files_win_over_npz_in_the_same_folder(tmp_path, synth):
    folder = write_mnist(tmp_path / "d", synth)
    (folder / "mnist.npz").write_bytes(b"not even a zip")
    got = load_mnist(folder, download=False, checksums=md5s(synth))
    assert_same_data(got, expected_arrays(synth))


def test_npz_with_wrong_shape_names_key_and_expected_shape(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((5, 28, 28), np.uint8),
             y_train=np.zeros(5, np.uint8), x_test=np.zeros((2, 28, 28), np.uint8),
             y_test=np.zeros(2, np.uint8))
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "mnist.npz") in message
    assert "x_train has shape (5, 28, 28)" in message and "(60000, 28, 28)" in message
    assert "NPVAE_DATA" in message


def test_npz_missing_key_or_not_a_zip_is_a_data_error(tmp_path, small_npz):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(DataError, match="no array 'y_train'"):
        load_mnist(tmp_path / "mnist.npz", download=False)
    (tmp_path / "mnist.npz").write_bytes(b"garbage, not a zip file")
    with pytest.raises(DataError, match=r"cannot read it as an \.npz archive"):
        load_mnist(tmp_path / "mnist.npz", download=False)


def test_npz_with_pickled_objects_is_refused(tmp_path, small_npz):
    np.savez(tmp_path / "mnist.npz", x_train=np.array([{"a": 1}], dtype=object),
             y_train=np.zeros(1), x_test=np.zeros(1), y_test=np.zeros(1))
    with pytest.raises(DataError, match="x_train"):
        load_mnist(tmp_path / "mnist.npz", download=False)


# ---------------------------------------------------------------------------------------------
# load_mnist: where it looks


def test_cache_dir_follows_xdg_cache_home_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "npvae"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_dir() == tmp_path / "home" / ".cache" / "npvae"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / "home" / ".cache" / "npvae"


def test_search_order_is_path_then_npvae_data_then_cache(monkeypatch, tmp_path):
    # Three copies told apart by their sizes; all share one checksum table per copy.
    copies = {place: make_mnist(n_train=n, seed=n) for place, n in
              (("arg", 2), ("env", 3), ("cache", 4))}
    folders = {"arg": tmp_path / "arg", "env": tmp_path / "env", "cache": cache_dir()}
    for place, files in copies.items():
        write_mnist(folders[place], files)
    monkeypatch.setenv("NPVAE_DATA", str(folders["env"]))

    def n_loaded(place, path):
        (x, _), _ = load_mnist(path, download=False, checksums=md5s(copies[place]))
        return x.shape[0]

    assert n_loaded("arg", folders["arg"]) == 2
    assert n_loaded("env", None) == 3
    (tmp_path / "empty").mkdir()
    assert n_loaded("env", tmp_path / "empty") == 3    # a folder without the data falls through
    with pytest.raises(DataError, match=r"path: .*missing does not exist"):
        n_loaded("env", tmp_path / "missing")          # a path that does not exist (a typo) does not
    monkeypatch.delenv("NPVAE_DATA")
    assert n_loaded("cache", None) == 4


def test_npvae_data_may_name_an_npz_file(monkeypatch, tmp_path, small_npz):
    keras_npz(tmp_path / "keras.npz", small_npz)
    monkeypatch.setenv("NPVAE_DATA", str(tmp_path / "keras.npz"))
    (x, _), _ = load_mnist(download=False)
    assert x.shape == (6, 784)


def test_missing_files_without_download_list_every_folder_searched(monkeypatch, tmp_path, synth):
    partial = write_mnist(tmp_path / "env", {TRAIN_IMAGES: synth[TRAIN_IMAGES]})
    monkeypatch.setenv("NPVAE_DATA", str(partial))
    (tmp_path / "arg").mkdir()                           # exists, holds nothing
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path / "arg", download=False)
    message = str(info.value)
    assert "download=False" in message
    assert f"{tmp_path / 'arg'}  [the path argument]: holds no MNIST files" in message
    assert f"{partial}  [the NPVAE_DATA environment variable]: missing" in message
    assert f"{TRAIN_LABELS}[.gz]" in message and f"{TEST_LABELS}[.gz]" in message
    assert str(cache_dir()) in message
    assert "mnist.npz" in message and "set NPVAE_DATA" in message
    assert not cache_dir().exists()  # nothing created when download=False


def test_unset_npvae_data_is_still_mentioned(tmp_path):
    with pytest.raises(DataError, match=r"\(unset\)  \[the NPVAE_DATA environment variable\]"):
        load_mnist(download=False)


# ---------------------------------------------------------------------------------------------
# load_mnist: verification


def test_corrupt_file_message_names_file_and_expected_md5(tmp_path, synth):
    folder = write_mnist(tmp_path / "d", synth, gz=False)
    bad = bytearray(synth[TEST_IMAGES])
    bad[100] ^= 0xFF
    (folder / TEST_IMAGES).write_bytes(bytes(bad))
    with pytest.raises(DataError) as info:
        load_mnist(folder, download=False, checksums=md5s(synth))
    message = str(info.value)
    assert str(folder / TEST_IMAGES) in message
    assert md5s(synth)[TEST_IMAGES] in message and hashlib.md5(bad).hexdigest() in message
    assert "Delete or replace it" in message and "NPVAE_DATA" in message


def test_real_checksums_reject_synthetic_files(tmp_path, synth):
    folder = write_mnist(tmp_path / "d", synth)
    with pytest.raises(DataError, match=datasets.MNIST_FILES[TRAIN_IMAGES]):
        load_mnist(folder, download=False)


def test_truncated_gzip_file_is_named(tmp_path, synth):
    folder = write_mnist(tmp_path / "d", synth)
    gz_path = folder / (TRAIN_LABELS + ".gz")
    gz_path.write_bytes(gz_path.read_bytes()[:-12])
    with pytest.raises(DataError) as info:
        load_mnist(folder, download=False, checksums=md5s(synth))
    message = str(info.value)
    assert str(gz_path) in message and "truncated" in message
    assert md5s(synth)[TRAIN_LABELS] in message and "NPVAE_DATA" in message


def test_truncated_raw_file_is_called_truncated(tmp_path, synth):
    folder = write_mnist(tmp_path / "d", synth, gz=False)
    (folder / TRAIN_IMAGES).write_bytes(synth[TRAIN_IMAGES][:1000])
    with pytest.raises(DataError) as info:
        load_mnist(folder, download=False, checksums=md5s(synth))
    message = str(info.value)
    assert str(folder / TRAIN_IMAGES) in message
    assert "truncated" in message and "1000 bytes" in message
    assert md5s(synth)[TRAIN_IMAGES] in message


def test_bad_magic_is_reported_for_the_file(tmp_path, synth):
    # Images saved where the labels belong: valid IDX, right checksum, wrong magic.
    files = dict(synth)
    files[TEST_LABELS] = synth[TEST_IMAGES]
    folder = write_mnist(tmp_path / "d", files)
    with pytest.raises(DataError) as info:
        load_mnist(folder, download=False, checksums=md5s(files))
    message = str(info.value)
    assert str(folder / (TEST_LABELS + ".gz")) in message
    assert "0x00000803, expected 0x00000801" in message and "NPVAE_DATA" in message


def test_mismatched_counts_are_reported(tmp_path, synth):
    files = dict(synth)
    files[TRAIN_LABELS] = idx_bytes(np.zeros(4, np.uint8))  # 5 images, 4 labels
    folder = write_mnist(tmp_path / "d", files)
    with pytest.raises(DataError, match="5 images but 4 labels"):
        load_mnist(folder, download=False, checksums=md5s(files))


def test_verification_is_memoized_until_the_file_changes(monkeypatch, tmp_path, synth):
    folder = write_mnist(tmp_path / "d", synth, gz=False)
    calls = []
    real_md5 = datasets._md5
    monkeypatch.setattr(datasets, "_md5", lambda data: calls.append(1) or real_md5(data))
    load_mnist(folder, download=False, checksums=md5s(synth))
    assert len(calls) == 4
    load_mnist(folder, download=False, checksums=md5s(synth))
    assert len(calls) == 4  # second load trusts the memo

    # Same size, new mtime: the memo no longer applies and the corruption is caught.
    path = folder / TRAIN_LABELS
    bad = bytearray(synth[TRAIN_LABELS])
    bad[-1] = (bad[-1] + 1) % 10
    stat = path.stat()
    path.write_bytes(bytes(bad))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match=md5s(synth)[TRAIN_LABELS]):
        load_mnist(folder, download=False, checksums=md5s(synth))


# ---------------------------------------------------------------------------------------------
# load_mnist: downloading


def mirror(folder, files):
    """A file:// mirror serving ``name.gz`` for `files`."""
    write_mnist(folder, files, gz=True)
    return folder.as_uri() + "/"


def test_download_from_file_mirror_fills_cache_atomically(monkeypatch, tmp_path, synth, capsys):
    dead = (tmp_path / "no-such-mirror").as_uri() + "/"
    good = mirror(tmp_path / "mirror", synth)
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(datasets.os, "replace",
                        lambda src, dst: renames.append((src, dst)) or real_replace(src, dst))

    got = load_mnist(checksums=md5s(synth), mirrors=[dead, good])

    assert_same_data(got, expected_arrays(synth))
    cache = cache_dir()
    assert sorted(p.name for p in cache.iterdir()) == sorted(n + ".gz" for n in NAMES)
    assert len(renames) == 4
    for src, dst in renames:  # each file was written beside its target, then renamed
        assert os.path.dirname(src) == str(cache) and src.endswith(".part")
        assert dst.parent == cache
    err = capsys.readouterr().err
    assert good + TRAIN_IMAGES + ".gz" in err and "(100%)" in err

    # Second call: found in the cache, nothing downloaded.
    monkeypatch.setattr(urllib.request, "urlopen", pytest.fail)
    assert_same_data(load_mnist(checksums=md5s(synth), mirrors=[good]), expected_arrays(synth))


def test_progress_false_is_silent(tmp_path, synth, capsys):
    load_mnist(checksums=md5s(synth), mirrors=[mirror(tmp_path / "m", synth)], progress=False)
    assert capsys.readouterr().err == ""


def test_download_skips_a_mirror_serving_a_corrupt_file(tmp_path, synth):
    corrupt = dict(synth)
    corrupt[TRAIN_LABELS] = synth[TRAIN_LABELS][:-1] + b"\x09"
    bad = mirror(tmp_path / "bad", corrupt)
    good = mirror(tmp_path / "good", synth)
    got = load_mnist(checksums=md5s(synth), mirrors=[bad, good], progress=False)
    assert_same_data(got, expected_arrays(synth))


def test_download_fetches_only_files_missing_from_cache(monkeypatch, tmp_path, synth):
    write_mnist(cache_dir(), {TRAIN_IMAGES: synth[TRAIN_IMAGES]}, gz=False)
    fetched = []
    real_urlopen = urllib.request.urlopen
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, **kw: fetched.append(url.rsplit("/", 1)[1]) or
                        real_urlopen(url, **kw))
    load_mnist(checksums=md5s(synth), mirrors=[mirror(tmp_path / "m", synth)], progress=False)
    assert sorted(fetched) == sorted(n + ".gz" for n in NAMES if n != TRAIN_IMAGES)


def test_download_failure_on_all_mirrors_is_one_clear_error(tmp_path, synth):
    mirrors = [(tmp_path / "a").as_uri() + "/", (tmp_path / "b").as_uri()]
    with pytest.raises(DataError) as info:
        load_mnist(checksums=md5s(synth), mirrors=mirrors, progress=False)
    message = str(info.value)
    assert f"Could not download {TRAIN_IMAGES}.gz" in message
    assert mirrors[0] + TRAIN_IMAGES + ".gz" in message
    assert mirrors[1] + "/" + TRAIN_IMAGES + ".gz" in message
    assert md5s(synth)[TRAIN_IMAGES] in message
    assert str(cache_dir()) in message and "NPVAE_DATA" in message
    assert list(cache_dir().iterdir()) == []  # no partial files left behind


def test_no_network_with_default_mirrors_is_one_clear_error():
    # The autouse stub makes every http(s) URL fail as it would offline.
    with pytest.raises(DataError) as info:
        load_mnist(progress=False)
    message = str(info.value)
    for base in datasets.MIRRORS:
        assert base + TRAIN_IMAGES + ".gz" in message
    assert "name resolution" in message and "Without internet access" in message
    assert "NPVAE_DATA" in message


class _DyingResponse:
    """A response that sends some bytes and then loses the connection."""

    headers = {"Content-Length": "1000000"}

    def __init__(self):
        self.sent = False

    def read(self, size):
        if self.sent:
            raise ConnectionResetError("connection reset by peer")
        self.sent = True
        return b"\x1f\x8b" + b"\x00" * 100

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_interrupted_download_leaves_no_partial_file(monkeypatch, synth):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, **kw: _DyingResponse())
    with pytest.raises(DataError, match="connection reset by peer"):
        load_mnist(checksums=md5s(synth), mirrors=["https://example.invalid/"], progress=False)
    assert list(cache_dir().iterdir()) == []


def test_short_download_is_detected(monkeypatch, synth):
    class Short(_DyingResponse):
        def read(self, size):
            if self.sent:
                return b""
            self.sent = True
            return b"abc"

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, **kw: Short())
    with pytest.raises(DataError, match="got 3 of 1000000 bytes"):
        load_mnist(checksums=md5s(synth), mirrors=["https://example.invalid/"], progress=False)


def test_unusable_cache_folder_is_a_data_error(tmp_path, synth):
    cache_dir().parent.mkdir(parents=True)
    cache_dir().write_bytes(b"a file where the cache folder should be")
    with pytest.raises(DataError, match="Cannot create the cache folder.*XDG_CACHE_HOME"):
        load_mnist(checksums=md5s(synth), mirrors=[mirror(tmp_path / "m", synth)])


# ---------------------------------------------------------------------------------------------
# load_mnist: argument validation


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"path": 3}, TypeError, "path: expected"),
        ({"path": ""}, ValueError, "empty string"),
        ({"download": "yes"}, TypeError, "download: expected a bool, got str 'yes'"),
        ({"progress": 1}, TypeError, "progress: expected a bool"),
        ({"checksums": ["x"]}, TypeError, "checksums: expected a mapping"),
        ({"checksums": {TRAIN_IMAGES: "0" * 32}}, ValueError, "checksums: expected to have exactly"),
        ({"checksums": dict.fromkeys(NAMES, "xyz")}, ValueError, r"checksums\[.*32-character"),
        ({"mirrors": "https://example.org/"}, TypeError, "mirrors: expected a sequence"),
        ({"mirrors": []}, ValueError, "non-empty"),
    ],
)
def test_load_mnist_validates_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        load_mnist(**kwargs)


def test_path_to_a_non_npz_file_is_refused(tmp_path, synth):
    write_mnist(tmp_path, synth)
    with pytest.raises(ValueError, match="pass its folder instead"):
        load_mnist(tmp_path / (TRAIN_IMAGES + ".gz"))


def test_uppercase_checksums_are_accepted(tmp_path, synth):
    folder = write_mnist(tmp_path / "d", synth)
    upper = {k: v.upper() for k, v in md5s(synth).items()}
    (x, y), (xt, yt) = load_mnist(folder, download=False, checksums=upper)
    want = load_mnist(folder, download=False, checksums=md5s(synth))
    np.testing.assert_array_equal(x, want[0][0])
    np.testing.assert_array_equal(yt, want[1][1])
    assert x.shape == (5, 784) and xt.shape == (3, 784)
    wrong = dict(upper, **{TRAIN_IMAGES: "F" * 32})          # still verified, not just accepted
    with pytest.raises(DataError, match="checksum"):
        load_mnist(folder, download=False, checksums=wrong)


# ---------------------------------------------------------------------------------------------
# binarize


def test_binarize_none_returns_x_itself():
    x = np.linspace(0, 1, 7, dtype=np.float32)
    assert binarize(x, "none") is x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binarize_threshold_is_strictly_greater_and_keeps_dtype(dtype):
    x = np.array([[0.0, 0.49, 0.5, 0.51, 1.0]], dtype=dtype)
    got = binarize(x, "threshold")
    assert got.dtype == dtype and got.shape == x.shape
    np.testing.assert_array_equal(got, [[0, 0, 0, 1, 1]])
    np.testing.assert_array_equal(binarize(x, "threshold", threshold=0.25), [[0, 1, 1, 1, 1]])
    assert x[0, 1] == dtype(0.49)  # input untouched


def test_binarize_dynamic_is_reproducible_with_the_same_seed():
    x = np.random.default_rng(0).random((20, 784)).astype(np.float32)
    a = binarize(x, "dynamic", rng=np.random.default_rng(42))
    b = binarize(x, "dynamic", rng=np.random.default_rng(42))
    c = binarize(x, "dynamic", rng=np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32 and set(np.unique(a)) <= {0.0, 1.0}


def test_binarize_dynamic_draws_fresh_samples_per_call():
    rng = np.random.default_rng(0)
    x = np.full((10, 784), 0.5)
    assert not np.array_equal(binarize(x, "dynamic", rng=rng), binarize(x, "dynamic", rng=rng))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binarize_dynamic_is_bernoulli_of_x(dtype):
    rng = np.random.default_rng(1)
    p = np.array([0.0, 0.1, 0.5, 0.9, 1.0], dtype=dtype)
    x = np.tile(p, (20000, 1))
    got = binarize(x, "dynamic", rng=rng)
    assert got.dtype == dtype
    mean = got.mean(axis=0)
    assert mean[0] == 0 and mean[-1] == 1  # p = 0 never fires, p = 1 always does
    # 5 standard errors of a Bernoulli mean over 20000 draws
    np.testing.assert_allclose(mean[1:4], p[1:4], atol=5 * np.sqrt(0.25 / 20000))


def test_binarize_dynamic_requires_a_generator():
    x = np.full(3, 0.5)
    with pytest.raises(ValueError, match="rng is required for method='dynamic'"):
        binarize(x, "dynamic")
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        binarize(x, "dynamic", rng=np.random.RandomState(0))
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        binarize(x, "dynamic", rng=0)


@pytest.mark.parametrize("method", ["Dynamic", "bernoulli", "", None])
def test_binarize_rejects_unknown_method(method):
    with pytest.raises(ValueError, match="method: expected one of 'none', 'threshold', 'dynamic'"):
        binarize(np.zeros(3), method)


def test_binarize_rejects_bad_inputs():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="floating-point.*uint8"):
        binarize(np.zeros(3, np.uint8), "threshold")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binarize(np.array([0.2, 1.5]), "dynamic", rng=rng)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binarize(np.array([0.2, np.nan]), "dynamic", rng=rng)
    with pytest.raises(ValueError, match="threshold: expected a finite number"):
        binarize(np.zeros(3), "threshold", threshold=float("nan"))



# ---------------------------------------------------------------------------------------------
# gzip bombs: decompression stops at the size the IDX header (and MNIST) allows


def gzip_stream(head, zeros):
    """gzip of `head` followed by `zeros` zero bytes, compressed in 1 MB pieces."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container
    parts = [packer.compress(head)]
    for start in range(0, zeros, 1 << 20):
        parts.append(packer.compress(bytes(min(1 << 20, zeros - start))))
    return b"".join(parts) + packer.flush()




def idx_header(type_and_ndim, *dims):
    return bytes([0, 0, *type_and_ndim]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize(
    "head, match",
    [
        # 5 images declared, 50 MB inflated: stops one byte past 16 + 5 * 784
        (idx_header((0x08, 3), 5, 28, 28), "more than the 3936 bytes its IDX header gives"),
        # declares more images than MNIST has: refused from the header alone
        (idx_header((0x08, 3), 10**6, 28, 28), r"shape \(1000000, 28, 28\), i.e. 784000016 bytes, "
                                               "more than the 47040016 bytes"),
        # no IDX header to size it by: stops at the canonical file's size
        (b"\x00" * 16, "more than 47040016 bytes, the size of the MNIST file of this name"),
    ],
    ids=["trailing", "declared", "headerless"],
)
def test_gzip_bomb_under_an_mnist_name_is_refused_without_inflating_it(tmp_path, synth, head, match):
    folder = write_mnist(tmp_path / "d", synth)
    bomb = folder / (TRAIN_IMAGES + ".gz")
    bomb.write_bytes(gzip_stream(head, 50 * 10**6))
    assert bomb.stat().st_size < 1 << 20
    error, peak = peak_while(lambda: load_mnist(folder, download=False, checksums=md5s(synth)))
    assert isinstance(error, DataError)
    assert str(bomb) in str(error)
    assert re.search(match, str(error)), str(error)
    # the headerless case reads up to the 47 MB an MNIST training-image file may hold
    assert peak < (100 << 20 if head == b"\x00" * 16 else 4 << 20)


def test_read_idx_stops_inflating_at_the_headers_size():
    data = gzip_stream(idx_header((0x08, 1), 4) + bytes(4), 50 * 10**6)
    error, peak = peak_while(lambda: read_idx(data))
    assert isinstance(error, DataError) and "more than the 12 bytes its IDX header gives" in str(error)
    assert peak < 4 << 20
    # the same header without the bomb still decodes
    np.testing.assert_array_equal(read_idx(gzip.compress(idx_header((0x08, 1), 4) + bytes(4))),
                                  np.zeros(4, np.uint8))


def test_download_of_a_gzip_bomb_is_refused_and_the_next_mirror_tried(tmp_path, synth):
    bombs = tmp_path / "bombs"
    write_mnist(bombs, synth)
    (bombs / (TRAIN_LABELS + ".gz")).write_bytes(gzip_stream(idx_header((0x08, 1), 5), 50 * 10**6))
    bad = bombs.as_uri() + "/"
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: decompresses to more than "
                                        "the 13 bytes its IDX header gives"):
        load_mnist(checksums=md5s(synth), mirrors=[bad], progress=False)
    assert not (cache_dir() / (TRAIN_LABELS + ".gz")).exists()
    got = load_mnist(checksums=md5s(synth), mirrors=[bad, mirror(tmp_path / "good", synth)],
                     progress=False)
    assert_same_data(got, expected_arrays(synth))


def test_locate_mnist_follows_load_mnists_order_and_passes_over_an_empty_folder(mnist_dir, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(datasets, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setenv("NPVAE_DATA", str(mnist_dir))
    assert datasets.holds_mnist(mnist_dir) and not datasets.holds_mnist(empty)
    assert datasets.locate_mnist(mnist_dir) == (mnist_dir, "path argument")
    assert datasets.locate_mnist(empty) == (mnist_dir, "NPVAE_DATA")        # as load_mnist, it passes over it
    monkeypatch.setenv("NPVAE_DATA", str(empty))
    assert datasets.locate_mnist(None) == (None, "cache")                   # nowhere yet: load_mnist downloads
