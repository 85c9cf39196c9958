"""Tests for npvae.io: round trips, atomicity under failure, refusing pickles, and clear
errors for missing or damaged files."""

import hashlib
import io
import os
import pickle
import stat
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

from npvae import io as nio
from npvae.io import (
    ModelFileError,
    atomic_savez,
    atomic_write_text,
    from_json_array,
    from_str_array,
    load_npz,
    to_json_array,
    to_str_array,
)


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return {
        "enc/w1": rng.standard_normal((20, 7)).astype(np.float32),
        "b": rng.standard_normal(7),
        "iterations": np.array(12, dtype=np.int64),
        "nesterov": np.array(True),
        "name": np.array("adam"),
        "meta": to_json_array({"lr": 1e-3, "layers": [784, 200, 50], "note": "é ✓"}),
        "empty": np.zeros((0, 3)),
        "fortran": np.asfortranarray(rng.standard_normal((3, 4))),
    }


def assert_same(got, want):
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        np.testing.assert_array_equal(got[k], want[k])


def leftovers(directory):
    """Anything but the expected files: temporaries are named .<name>.*.tmp"""
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


# ----------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
def test_savez_round_trip_keeps_keys_dtypes_shapes_and_values(tmp_path, arrays, compress):
    path = atomic_savez(tmp_path / "model.npz", arrays, compress=compress)
    assert path == tmp_path / "model.npz"
    got = load_npz(path)
    assert_same(got, arrays)
    assert all(a.flags.writeable for a in got.values())  # models update them in place
    assert leftovers(tmp_path) == []


def test_saved_file_loads_with_plain_numpy_and_no_pickle(tmp_path, arrays):
    path = atomic_savez(str(tmp_path / "model.npz"), arrays)
    with np.load(path, allow_pickle=False) as f:
        assert_same({k: f[k] for k in f.files}, arrays)


def test_compression_makes_redundant_data_smaller(tmp_path):
    big = {"zeros": np.zeros(100_000)}
    plain = atomic_savez(tmp_path / "plain.npz", big)
    packed = atomic_savez(tmp_path / "packed.npz", big, compress=True)
    assert packed.stat().st_size < plain.stat().st_size / 10
    with zipfile.ZipFile(packed) as zf:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist())


def test_keys_that_clash_with_savez_keywords_are_fine(tmp_path):
    # np.savez(file, **arrays) would fail on these names
    arrays = {"file": np.ones(2), "allow_pickle": np.zeros(1), "args": np.arange(3)}
    assert_same(load_npz(atomic_savez(tmp_path / "k.npz", arrays)), arrays)


def test_equal_arrays_give_byte_identical_files(tmp_path, arrays):
    a = atomic_savez(tmp_path / "a.npz", arrays)
    b = atomic_savez(tmp_path / "b.npz", dict(arrays))
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def test_path_is_used_as_given_and_parents_are_created(tmp_path):
    path = tmp_path / "runs" / "exp1" / "checkpoint"  # no .npz added
    atomic_savez(path, {"x": np.ones(1)})
    assert path.is_file() and not path.with_suffix(".npz").exists()


def test_savez_replaces_an_existing_file(tmp_path):
    path = tmp_path / "m.npz"
    atomic_savez(path, {"x": np.ones(3)})
    atomic_savez(path, {"y": np.zeros(2)})
    assert_same(load_npz(path), {"y": np.zeros(2)})
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_new_files_get_default_permissions_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_savez(tmp_path / "m.npz", {"x": np.ones(1)})
        text = atomic_write_text(tmp_path / "m.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(text.stat().st_mode) == 0o644


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_replacing_a_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "m.npz"
    atomic_savez(path, {"x": np.ones(1)})
    os.chmod(path, 0o600)
    atomic_savez(path, {"x": np.zeros(1)})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# ----------------------------------------------------------------------------------------
# Atomicity
# ----------------------------------------------------------------------------------------

def test_failed_rename_leaves_the_original_untouched_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    atomic_savez(path, {"x": np.ones(3)})
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(nio.os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_savez(path, {"x": np.zeros(3)})
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_failure_halfway_through_writing_leaves_the_original_untouched(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    atomic_savez(path, {"x": np.ones(3)})
    before = path.read_bytes()

    # the first array is written into the temporary file, the second one fails
    real_write_array = np.lib.format.write_array
    calls = []

    def write_array_then_fail(fp, array, **kwargs):
        calls.append(array.shape)
        if len(calls) == 2:
            raise OSError("simulated disk full")
        real_write_array(fp, array, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_array_then_fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_savez(path, {"a": np.arange(1000.0), "b": np.zeros(5)})
    assert len(calls) == 2
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_interrupt_while_writing_removes_the_temp_file(tmp_path, monkeypatch):
    def interrupted(fp, array, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np.lib.format, "write_array", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_savez(tmp_path / "new.npz", {"a": np.ones(2)})
    assert os.listdir(tmp_path) == []


def test_failed_text_write_leaves_the_original_untouched(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    atomic_write_text(path, '{"lr": 0.001}\n')
    monkeypatch.setattr(nio.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("EIO")))
    with pytest.raises(OSError, match="EIO"):
        atomic_write_text(path, '{"lr": 0.1}\n')
    assert path.read_text() == '{"lr": 0.001}\n'
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------
# Refusing pickles
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    np.array([{"a": 1}], dtype=object),
    np.array([1, "two"], dtype=object),
    np.zeros(2, dtype=[("x", "f8"), ("o", "O")]),  # structured with an object field
    [np.ones(2), np.ones(3)],  # ragged: an object array in old NumPy, an error in new
])
def test_object_arrays_are_refused_naming_the_key(tmp_path, value):
    path = tmp_path / "m.npz"
    with pytest.raises(ValueError, match=r"arrays\['bad'\]: expected an array"):
        atomic_savez(path, {"ok": np.ones(2), "bad": value})
    assert os.listdir(tmp_path) == []  # nothing written, not even a temporary


@pytest.mark.parametrize("arrays, match", [
    ({1: np.ones(1)}, "arrays: expected non-empty string keys, got 1"),
    ({"": np.ones(1)}, "arrays: expected non-empty string keys, got ''"),
    ([("x", np.ones(1))], "arrays: expected a dict"),
])
def test_bad_arrays_argument_raises(tmp_path, arrays, match):
    with pytest.raises(ValueError, match=match):
        atomic_savez(tmp_path / "m.npz", arrays)


def test_atomic_write_text_round_trip_and_type_check(tmp_path):
    text = '{\n  "name": "vae",\n  "note": "é ✓"\n}\n'
    path = atomic_write_text(tmp_path / "sub" / "config.json", text)
    assert path.read_bytes() == text.encode("utf-8")  # no newline translation
    with pytest.raises(ValueError, match="text: expected a str, got bytes"):
        atomic_write_text(path, b"{}")


# ----------------------------------------------------------------------------------------
# Missing and damaged files
# ----------------------------------------------------------------------------------------

def test_missing_file_raises_file_not_found_naming_the_path(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError) as info:
        load_npz(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_truncated_file_raises_a_clear_error(tmp_path, arrays, compress, fraction):
    path = atomic_savez(tmp_path / "m.npz", arrays, compress=compress)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelFileError, match="is damaged or is not an npvae .npz file") as info:
        load_npz(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_every_truncation_and_many_bit_flips_raise_only_model_file_error(tmp_path):
    # whatever zipfile, zlib or numpy trip over, the caller sees one error type
    # (a flip in an unused byte of the archive may leave it loadable, which is fine)
    rng = np.random.default_rng(1)
    path = atomic_savez(tmp_path / "m.npz", {"a": rng.standard_normal((8, 5)), "s": np.array("x")})
    data = path.read_bytes()
    damaged = [data[:n] for n in range(0, len(data), 5)]
    for _ in range(150):
        b = bytearray(data)
        b[rng.integers(len(b))] ^= 1 << int(rng.integers(8))
        damaged.append(bytes(b))
    failures = 0
    for d in damaged:
        path.write_bytes(d)
        try:
            load_npz(path)
        except ModelFileError:
            failures += 1
    assert failures > len(data) // 5


@pytest.mark.parametrize("content", [
    b"",
    b"this is not an npz file\n",
    pickle.dumps({"weights": [1, 2, 3]}),
], ids=["empty", "text", "pickle"])
def test_foreign_files_raise_model_file_error(tmp_path, content):
    path = tmp_path / "m.npz"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="m.npz"):
        load_npz(path)


def test_a_lone_npy_file_is_not_an_npz(tmp_path):
    path = tmp_path / "w.npy"
    np.save(path, np.ones(3))
    with pytest.raises(ModelFileError, match="not an .npz archive"):
        load_npz(path)


def test_npz_with_pickled_objects_is_refused_on_load(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))  # numpy's own writer pickles
    with pytest.raises(ModelFileError, match="evil.npz") as info:
        load_npz(path)
    assert "allow_pickle" in str(info.value)


# ----------------------------------------------------------------------------------------
# String and JSON metadata
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("s", ["", "adam", "é ✓ 漢字", "a\x00b", "line\nbreak"])
def test_str_array_round_trip_through_a_file(tmp_path, s):
    a = to_str_array(s)
    assert a.shape == () and a.dtype.kind == "U"
    path = atomic_savez(tmp_path / "m.npz", {"s": a})
    assert from_str_array(load_npz(path)["s"]) == s


def test_to_str_array_rejects_what_would_not_round_trip():
    with pytest.raises(ValueError, match="s: expected a str, got int"):
        to_str_array(3)
    with pytest.raises(ValueError, match="NUL"):
        to_str_array("abc\x00")


@pytest.mark.parametrize("a", [np.array(3), np.array(["a", "b"]), "adam", np.array(b"x")])
def test_from_str_array_rejects_non_string_arrays(a):
    with pytest.raises(ValueError, match="a: expected a 0-d unicode array"):
        from_str_array(a)


def test_json_array_round_trip_of_nested_metadata(tmp_path):
    meta = {
        "format_version": 1,
        "model": {"layers": [784, 200, 200, 50], "likelihood": "bernoulli"},
        "optimizer": {"name": "rmsprop", "lr": 1e-3, "rho": 0.9},
        "history": [{"epoch": 1, "loss": 101.25}, {"epoch": 2, "loss": 98.5}],
        "notes": None,
        "unicode": "μ, σ²",
    }
    path = atomic_savez(tmp_path / "m.npz", {"meta": to_json_array(meta)})
    assert from_json_array(load_npz(path)["meta"]) == meta
    # sorted keys: insertion order does not change the stored text
    assert from_str_array(to_json_array({"b": 1, "a": 2})) == '{"a": 2, "b": 1}'


def test_json_array_errors_name_the_argument():
    with pytest.raises(ValueError, match="obj: expected JSON-serializable"):
        to_json_array({"w": np.ones(2)})
    with pytest.raises(ValueError, match="a: expected JSON text"):
        from_json_array(to_str_array("{not json"))


@pytest.mark.skipif(sys.version_info < (3, 10), reason="needs sys.stdlib_module_names")
def test_module_imports_with_only_numpy_and_the_standard_library():
    # load the file on its own, in a fresh interpreter, so the package __init__ (and
    # whatever it may import) does not count
    path = os.path.abspath(nio.__file__)
    code = (
        "import importlib.util, sys\n"
        "before = set(sys.modules)\n"
        f"spec = importlib.util.spec_from_file_location('npvae_io_alone', {path!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "top = {m.partition('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(top - set(sys.stdlib_module_names) - {'numpy'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------
# Hostile sizes: headers are checked before anything is allocated or inflated
# ----------------------------------------------------------------------------------------

def npy_header(shape, descr="<f8"):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def write_member(path, name, chunks, compression=zipfile.ZIP_STORED):
    """A one-member zip whose member is the concatenation of `chunks`, streamed."""
    info = zipfile.ZipInfo(name)
    info.compress_type = compression
    with zipfile.ZipFile(path, "w") as zf:
        with zf.open(info, "w") as member:
            for chunk in chunks:
                member.write(chunk)
    return path


def patch_entry(path, **fields):
    """Overwrite the one member's CRC/sizes in its local header and the central directory."""
    data = bytearray(path.read_bytes())
    cd = data.rfind(b"PK\x01\x02")
    local = {"crc": 14, "compress_size": 18, "file_size": 22}
    for field, value in fields.items():
        struct.pack_into("<I", data, local[field], value)
        struct.pack_into("<I", data, cd + local[field] + 2, value)
    path.write_bytes(bytes(data))


def peak_while(f):
    """(exception raised by f(), peak bytes traced while it ran)."""
    tracemalloc.start()
    try:
        f()
    except Exception as exc:  # noqa: BLE001 - returned for the test to check
        error = exc
    else:
        error = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, peak


@pytest.mark.parametrize("reader", [load_npz, nio.npz_headers])
def test_member_declaring_a_huge_shape_is_refused_before_allocating(tmp_path, reader):
    path = write_member(tmp_path / "m.npz", "w.npy", [npy_header((10**12,)), b"\0" * 80])
    error, peak = peak_while(lambda: reader(path))
    assert isinstance(error, ModelFileError)
    message = str(error)
    assert str(path) in message and "'w'" in message and "(1000000000000,)" in message
    assert "more than the 80 bytes" in message and "\n" not in message
    assert peak < 4 << 20


def test_member_declaring_less_than_it_stores_is_refused(tmp_path):
    path = write_member(tmp_path / "m.npz", "w.npy", [npy_header((3,)), b"\0" * 32])
    with pytest.raises(ModelFileError, match=r"'w' declares shape \(3,\).*24 bytes, not all of the 32"):
        load_npz(path)


def test_zip_bomb_member_is_refused_without_inflating_it(tmp_path):
    # the entry records 1,000 bytes (and their CRC) but its stream inflates to 64 MB;
    # zipfile alone would hand over the first 1,000 bytes as a valid array
    header = npy_header((109,))
    recorded = header + b"\0" * (1000 - len(header))
    path = write_member(tmp_path / "bomb.npz", "a.npy", [header] + [b"\0" * (1 << 20)] * 64,
                        compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1 << 20
    patch_entry(path, file_size=len(recorded), crc=zlib.crc32(recorded))
    error, peak = peak_while(lambda: load_npz(path))
    assert isinstance(error, ModelFileError)
    assert str(path) in str(error) and "'a' inflates beyond the 1000 bytes" in str(error)
    assert peak < 4 << 20


def test_entry_recording_more_than_deflate_can_produce_is_refused(tmp_path):
    # deflate expands at most 1032:1, so this entry's recorded size is a lie
    path = write_member(tmp_path / "m.npz", "a.npy", [npy_header((10,)), b"\0" * 80],
                        compression=zipfile.ZIP_DEFLATED)
    patch_entry(path, file_size=10**9)
    error, peak = peak_while(lambda: load_npz(path))
    assert isinstance(error, ModelFileError)
    assert str(path) in str(error) and "'a' records 1000000000 uncompressed bytes" in str(error)
    assert peak < 4 << 20


def test_entries_claiming_more_compressed_bytes_than_the_file_has_are_refused(tmp_path):
    path = write_member(tmp_path / "m.npz", "a.npy", [npy_header((10,)), b"\0" * 80])
    patch_entry(path, compress_size=10**9, file_size=10**9)
    with pytest.raises(ModelFileError, match="record 1000000000 compressed bytes but the file has only"):
        load_npz(path)


def test_members_compressed_other_than_numpy_does_are_refused(tmp_path):
    path = write_member(tmp_path / "m.npz", "a.npy", [npy_header((10,)), b"\0" * 80],
                        compression=zipfile.ZIP_BZIP2)
    with pytest.raises(ModelFileError, match=r"'a' is compressed with zip method 12"):
        load_npz(path)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("n", [50, 10_000])  # read whole with the header by zipfile, or not
def test_damaged_payload_fails_the_crc_check(tmp_path, compress, n):
    path = atomic_savez(tmp_path / "m.npz", {"a": np.arange(float(n))}, compress=compress)
    if compress:  # damage the stored CRC instead: a damaged deflate stream may not decode
        with zipfile.ZipFile(path) as zf:
            crc = zf.getinfo("a.npy").CRC
        data = path.read_bytes().replace(struct.pack("<I", crc), struct.pack("<I", crc ^ 1))
    else:
        data = path.read_bytes().replace(np.array([n - 3.0]).tobytes(), np.array([-1.0]).tobytes())
    path.write_bytes(data)
    # zipfile's own check fires for a small member, load_npz's for a big one
    which = "'a' fails its CRC-32 check" if n > 1000 else "Bad CRC-32 for file 'a.npy'"
    with pytest.raises(ModelFileError, match=rf"m\.npz.*is damaged.*{which}"):
        load_npz(path)


def test_max_bytes_caps_the_total_before_reading(tmp_path, monkeypatch):
    path = atomic_savez(tmp_path / "m.npz", {"a": np.zeros(10), "b": np.zeros(5, np.float32)})
    assert list(load_npz(path, max_bytes=100)) == ["a", "b"]  # exactly 80 + 20
    monkeypatch.setattr(np.lib.format, "read_array", pytest.fail)
    with pytest.raises(ModelFileError, match=r"more than max_bytes=99 bytes \(member 'b' declares shape \(5,\)"):
        load_npz(path, max_bytes=99)
    for bad in (-1, 1.5, True, "100"):
        with pytest.raises(ValueError, match="max_bytes: expected a non-negative int or None"):
            load_npz(path, max_bytes=bad)


def test_keys_reads_only_those_members(tmp_path):
    path = atomic_savez(tmp_path / "m.npz", {"meta": to_str_array("x"), "big": np.zeros(10**4)})
    got = load_npz(path, keys=["meta", "absent"], max_bytes=100)
    assert list(got) == ["meta"] and from_str_array(got["meta"]) == "x"


def test_npz_headers_gives_shapes_and_dtypes_without_reading_arrays(tmp_path, arrays, monkeypatch):
    path = atomic_savez(tmp_path / "m.npz", arrays, compress=True)
    monkeypatch.setattr(np.lib.format, "read_array", pytest.fail)
    headers = nio.npz_headers(path)
    assert list(headers) == list(arrays)
    assert headers == {k: (a.shape, a.dtype) for k, a in arrays.items()}


def test_a_failed_write_names_the_destination_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno as errno_
    target = tmp_path / "ck.npz"
    real_fsync = nio.os.fsync

    def full(fd):                                   # the disk fills while the file is flushed
        raise OSError(errno_.ENOSPC, "No space left on device")

    monkeypatch.setattr(nio.os, "fsync", full)
    with pytest.raises(OSError) as info:
        nio.atomic_savez(target, {"a": np.ones(3)})
    assert info.value.errno == errno_.ENOSPC and info.value.filename == str(target)
    monkeypatch.setattr(nio.os, "fsync", real_fsync)
    assert list(tmp_path.iterdir()) == []
