"""The package as a dependency: `import npvae` needs only NumPy, and stays light; its version is
setup.cfg's one literal, read back from the installed metadata."""

import configparser
import re
import shutil
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

import npvae


def run_python(code):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_does_not_load_numba_or_matplotlib():
    out = run_python("""
        import sys, npvae
        print(sorted(m for m in ("numba", "matplotlib", "scipy", "torch") if m in sys.modules))
    """)
    assert out.strip() == "[]"


def test_trains_and_saves_with_numpy_alone(tmp_path):
    out = run_python(f"""
        import sys, warnings
        for name in ("numba", "matplotlib", "scipy", "torch"):
            sys.modules[name] = None      # importing any of them now raises ImportError
        warnings.simplefilter("ignore")  # the one "numba is not installed" notice, if any
        import numpy as np, npvae
        rng = np.random.default_rng(0)
        x = rng.random((64, 10))
        model = npvae.VAE(input_dim=10, hidden=(8,), latent_dim=2)
        history = npvae.fit(model, x, epochs=2, batch_size=16, mc_samples=3, verbose=0)
        model.save({str(tmp_path / 'm.npz')!r})
        loaded = npvae.load({str(tmp_path / 'm.npz')!r})
        print(len(history), history["loss"][-1] < history["loss"][0], loaded.config == model.config)
    """)
    assert out.split() == ["2", "True", "True"]


def test_public_api_is_listed():
    import npvae
    for name in ("VAE", "fit", "load", "load_mnist", "gradcheck", "History"):
        assert name in npvae.__all__ and hasattr(npvae, name)


# --------------------------------------------------------------------------
# The version: one literal in setup.cfg, read back from the package metadata
# --------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
# PEP 440's canonical public version (its Appendix B), without local labels
PEP440 = re.compile(r"^([1-9][0-9]*!)?(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*((a|b|rc)(0|[1-9][0-9]*))?"
                    r"(\.post(0|[1-9][0-9]*))?(\.dev(0|[1-9][0-9]*))?$")
# Run before `import npvae`: the package then looks as if it were not installed.
NOT_INSTALLED = """
    from importlib import metadata
    def version(name):
        raise metadata.PackageNotFoundError(name)
    metadata.version = version
"""


def setup_cfg():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    return parser


def requirement_names(text):
    return [re.split(r"[\s<>=!~;\[]", line.strip(), maxsplit=1)[0].lower()
            for line in text.splitlines() if line.strip()]


def test_setup_cfg_version_is_a_literal_pep440_version():
    version = setup_cfg()["metadata"]["version"]
    assert PEP440.match(version), f"setup.cfg: [metadata] version {version!r} is not a literal PEP 440 version"


def test_version_is_the_installed_metadata_version():
    try:
        installed = metadata.version("npvae")
    except metadata.PackageNotFoundError:
        pytest.skip("npvae is not installed here (run from a source tree); pip install -e . to check this")
    assert npvae.__version__ == installed


def test_version_from_a_source_tree_not_installed_is_setup_cfg_version():
    out = run_python(NOT_INSTALLED + "\n    import npvae; print(npvae.__version__)\n")
    assert out.strip() == setup_cfg()["metadata"]["version"]


def test_version_without_metadata_or_setup_cfg_says_unknown(tmp_path):
    shutil.copytree(ROOT / "npvae", tmp_path / "npvae", ignore=shutil.ignore_patterns("__pycache__"))
    out = run_python(NOT_INSTALLED + f"""
    import sys; sys.path.insert(0, {str(tmp_path)!r})
    import npvae; print(npvae.__file__.startswith({str(tmp_path)!r}), npvae.__version__)
    """)
    assert out.split() == ["True", "0+unknown"]


def test_core_install_needs_numpy_alone_and_tools_live_in_extras():
    cfg = setup_cfg()
    assert requirement_names(cfg["options"]["install_requires"]) == ["numpy"]
    docs = set(requirement_names(cfg["options.extras_require"]["docs"]))
    assert {"sphinx", "numpydoc", "pydata-sphinx-theme", "myst-nb", "nbclient", "ipykernel", "matplotlib"} <= docs
