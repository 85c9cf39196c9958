"""The guides under docs/: their examples run, their links resolve, every op is derived.

* Every ```python fenced block of every ``docs/*.md`` runs; the blocks of one file run in
  order in one namespace (a guide builds on its earlier examples), so an example cannot drift
  from the code. A failing block names its file, its number and its first line.
* Every relative link that points into the repository (``../npvae/ops.py``) names a file that
  exists, and every test named in a guide (```test_...```) is defined under tests/.
* Every ``x_forward`` / ``x_backward`` pair of :mod:`npvae.ops` and :mod:`npvae.objectives` is
  mentioned in docs/gradients.md, so a new op cannot arrive without its derivation.
"""

import re
import traceback
from pathlib import Path

import pytest

from npvae import gradcheck, objectives, ops

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDES = sorted(DOCS.glob("*.md"))

# [text](target) and reference definitions "[label]: target"
_INLINE_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")     # http:, https:, mailto:, ...


def python_blocks(text):
    """``(first line number, code)`` of every ```python fenced block of a Markdown text.

    The fence may be indented (inside a list); the code is dedented by the fence's indent.
    """
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("```") and stripped[3:].strip() == "python":
            indent = len(lines[i]) - len(lines[i].lstrip())
            start, body = i + 2, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                line = lines[i]
                body.append(line[indent:] if not line[:indent].strip() else line.lstrip())
                i += 1
            if i == len(lines):
                raise AssertionError(f"unclosed ```python block starting at line {start - 1}")
            blocks.append((start, "\n".join(body) + "\n"))
        i += 1
    return blocks


def relative_links(text):
    """The link targets of a Markdown text that are neither URLs nor in-page anchors, without fragments."""
    targets = _INLINE_LINK.findall(text) + _REFERENCE_LINK.findall(text)
    paths = [t.split("#", 1)[0] for t in targets if not _EXTERNAL.match(t) and not t.startswith("#")]
    return [p for p in paths if p]


def test_the_gradient_guide_exists():
    assert (DOCS / "gradients.md") in GUIDES


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_every_python_block_of_a_guide_runs(guide, monkeypatch):
    monkeypatch.chdir(ROOT)
    namespace = {"__name__": f"docs_{guide.stem}"}
    for number, (line, code) in enumerate(python_blocks(guide.read_text(encoding="utf-8")), start=1):
        try:
            # Padding with newlines makes a traceback's line numbers those of the Markdown file.
            exec(compile("\n" * (line - 1) + code, str(guide), "exec"), namespace)
        except Exception:
            pytest.fail(f"docs/{guide.name}: python block {number} (line {line}) failed:\n"
                        f"{traceback.format_exc()}", pytrace=False)


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_relative_links_name_files_that_exist(guide):
    missing = []
    for target in relative_links(guide.read_text(encoding="utf-8")):
        path = (guide.parent / target).resolve()
        if ROOT not in path.parents and path != ROOT:
            missing.append(f"{target} (outside the repository)")
        elif not path.exists():
            missing.append(target)
    assert not missing, f"docs/{guide.name}: links to missing files: {missing}"


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_tests_named_in_a_guide_exist(guide):
    defined = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        defined.update(re.findall(r"^\s*def (test_\w+)\(", path.read_text(encoding="utf-8"), re.MULTILINE))
    named = set(re.findall(r"`(test_\w+)`", guide.read_text(encoding="utf-8")))
    assert not named - defined, f"docs/{guide.name} names tests that do not exist: {sorted(named - defined)}"


@pytest.mark.parametrize("module", [ops, objectives], ids=lambda m: m.__name__)
def test_every_op_pair_is_derived_in_the_gradient_guide(module):
    text = (DOCS / "gradients.md").read_text(encoding="utf-8")
    prefix = module.__name__.rsplit(".", 1)[-1]
    pairs = gradcheck.op_pairs(module)
    assert pairs, f"no x_forward / x_backward pairs found in {module.__name__}"
    missing = [f"{prefix}.{name}_{half}" for name in pairs for half in ("forward", "backward")
               if f"{prefix}.{name}_{half}" not in text]
    assert not missing, f"docs/gradients.md does not derive {missing}"


# ---------------------------------------------------------------------------
# The helpers themselves: they must find what they look for
# ---------------------------------------------------------------------------
def test_python_blocks_are_found_with_their_line_numbers():
    text = "intro\n```python\na = 1\n```\n```\nnot python\n```\n- item\n  ```python\n  b = a + 1\n  ```\n"
    assert python_blocks(text) == [(3, "a = 1\n"), (10, "b = a + 1\n")]


def test_a_failing_block_names_its_file_and_number(tmp_path, monkeypatch):
    guide = tmp_path / "broken.md"
    guide.write_text("```python\nx = 1\n```\ntext\n```python\nassert x == 2, 'x is 1'\n```\n")
    with pytest.raises(pytest.fail.Exception, match=r"docs/broken.md: python block 2 \(line 6\)") as info:
        test_every_python_block_of_a_guide_runs(guide, monkeypatch)
    assert "x is 1" in str(info.value)


def test_relative_links_skip_urls_and_anchors():
    text = ("[a](../npvae/ops.py) [b](https://example.org/x.py) [c](#notation) "
            "[d](../tests/test_ops.py#L3)\n[e]: ../README.md\n")
    assert relative_links(text) == ["../npvae/ops.py", "../tests/test_ops.py", "../README.md"]
