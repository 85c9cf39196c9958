"""Sphinx configuration of npvae's documentation site.

Build it with ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (the ``docs``
extra: ``pip install -e ".[docs]"``). The pages:

* ``index.md``, the entry page; ``user-guide.md``, README.md at build time (see
  :func:`readme_as_user_guide`); ``guides.md``, the two guides (``gradients.md`` and
  ``fast-path.md``); ``tutorials.md``, the notebooks (``notebooks`` links to the repository's
  ``notebooks/``);
* ``api/``, the reference, from the docstrings (numpydoc).

The notebooks are executed during the build (myst-nb); the post's notebook trains for
``NPVAE_NB_EPOCHS`` epochs, 5 unless the environment says otherwise (the post's run is 50).
"""

import os
import re
from pathlib import Path

import npvae

ROOT = Path(__file__).resolve().parents[1]

project = "npvae"
author = "the npvae developers"
copyright = "the npvae developers"
release = npvae.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_nb",
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**/.ipynb_checkpoints"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# --- API pages: numpydoc renders the docstrings' sections; autodoc lists the members
# every name of a module's __all__, constants included, even where it has no docstring
autodoc_default_options = {"members": True, "undoc-members": True, "member-order": "bysource"}
autodoc_typehints = "none"            # the signatures carry no annotations; the docstrings say the types
autodoc_preserve_defaults = True     # defaults as written (dtype=np.float64), not their repr
numpydoc_show_class_members = False  # members come from autodoc, not from autosummary stubs
numpydoc_class_members_toctree = False

# --- Markdown (MyST): $...$ math as in docs/gradients.md, GitHub-style heading anchors
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 4

# --- notebooks: executed at every build that reads them; an error fails the build
os.environ.setdefault("NPVAE_NB_EPOCHS", "5")
nb_execution_mode = "force"
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True  # one box for a cell's printed lines (fit prints one per epoch)

# --- the theme
html_theme = "pydata_sphinx_theme"
html_title = f"npvae {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_show_sourcelink = False
# pages without sub-pages need no left sidebar (it would hold an empty "Section Navigation")
html_sidebars = {"index": [], "user-guide": []}


# --- README.md as the user guide
_LINK = re.compile(r"(!?\[[^\]]*\])\(([^)\s]+)\)")


def _repo_link(match):
    """A link of README.md made to work from docs/: ``docs/x`` -> ``x`` (a page of the site),
    another Markdown file -> ``path:../x`` (a download: it is no page of the site), an image or
    other file -> ``../x``; a link to a folder keeps only its text (a site lists no folders)."""
    label, target = match.groups()
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
        return match.group(0)
    path = target.split("#", 1)[0]
    if (ROOT / path).is_dir():
        return label[1:-1]
    if path.startswith("docs/"):
        return f"{label}({target[len('docs/'):]})"
    if path.endswith(".md") and not label.startswith("!"):
        return f"{label}(path:../{target})"     # a file of the repository, not a page of the site
    return f"{label}(../{target})"


def readme_as_user_guide(app, docname, source):
    """Append README.md, its title dropped and its links made relative to docs/, to the page
    ``user-guide`` (whose own text is its title), so that the README has one source."""
    if docname != "user-guide":
        return
    app.env.note_dependency(str(ROOT / "README.md"))   # an edit of the README rebuilds the page
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    body = readme.split("\n", 1)[1]               # drop "# npvae": the page has its own title
    source[0] += "\n" + _LINK.sub(_repo_link, body)


def setup(app):
    app.connect("source-read", readme_as_user_guide)
    return {"parallel_read_safe": True}
