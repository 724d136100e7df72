"""The explainers point at real things: every linked figure exists and every `file.py: name`
reference names a function, class or constant defined in that file of the package."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "RELIABILITY.md", ROOT / "VAE" / "README.md",
        ROOT / "diffusion" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]
IMAGE = re.compile(r"\[[^\]]*\]\(([^)\s]+\.png)\)")
CODE = re.compile(r"`([\w/]+\.py): ([A-Za-z_][\w.]*)")


def source_file(name: str) -> Path | None:
    """`diffusion/sampling.py` or `vae.py` -> the file under src/sdlab (or bench/, diffusers/)."""
    for base in (ROOT / "src" / "sdlab", ROOT / "src" / "sdlab" / "diffusion", ROOT / "src" / "sdlab" / "recipes",
                 ROOT / "src" / "sdlab" / "cli", ROOT / "src" / "sdlab" / "kernels", ROOT):
        if (base / name).is_file():
            return base / name
    return None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_linked_figure_exists(doc):
    missing = [link for link in IMAGE.findall(doc.read_text()) if not (doc.parent / link).is_file()]
    assert not missing, missing


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_code_reference_resolves(doc):
    broken = []
    for path, name in CODE.findall(doc.read_text()):
        file = source_file(path)
        top = name.split(".")[0]
        defined = file is not None and re.search(rf"^\s*(def|class) {top}\b|^{top}\s*[:=]", file.read_text(), re.M)
        if not defined:
            broken.append(f"{path}: {name}")
    assert not broken, broken


COMMAND = re.compile(r"python (diffusers|bench)/\w+\.py|\bsdlab-[a-z-]+|bash bench/\w+\.sh|--visualize")


def sections(text: str) -> list[str]:
    """The text cut at its headings (a figure's command must be named in its own section)."""
    return re.split(r"^#{1,3} ", text, flags=re.M)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_linked_figure_names_the_command_that_makes_it(doc):
    silent = [link for section in sections(doc.read_text()) for link in IMAGE.findall(section)
              if not COMMAND.search(section)]
    assert not silent, silent
