"""The README is a landing page; the docs link to files that exist and cite nothing outside."""

import re

from .conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_is_a_landing_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_every_relative_link_resolves_and_nothing_cites_files_outside():
    for page in PAGES:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
        assert "DESIGN.md" not in text, page.name
    for path in [*ROOT.glob("bench/*.py"), *ROOT.glob("workflow/presets/*.yaml")]:
        assert "DESIGN.md" not in path.read_text(), path.name


# A quoted result: an interval of a score, a difference in points, a time or a rate, a ratio.
FIGURE = re.compile(
    r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]|[+−-]\d+\.\d pt|\d[\d,.]* (?:ms|img/s)\b|\b\d+\.\d+x\b"
)
COMMIT = re.compile(r"\b(?:commit|at|of)\s+`?[0-9a-f]{7,}\b")
MACHINE = re.compile(r"Xeon|EPYC|H100|H200|A100|GPU|CPU|\bcores?\b", re.I)
COMMAND = re.compile(
    r"`(?:make (?:run|test)|dvc [a-z]+|snakemake|python|s5cl|bench/|pytest|torchrun)[^`]*`"
    r"|```bash",
    re.S,
)


def sections(text: str) -> list[str]:
    """A page cut at its headings (# to ###), headings inside code blocks left alone."""
    found, current, fenced = [], [], False
    for line in text.splitlines():
        fenced ^= line.startswith("```")
        if not fenced and re.match(r"#{1,3} ", line) and current:
            found.append("\n".join(current))
            current = []
        current.append(line)
    return [*found, "\n".join(current)]


def test_every_quoted_figure_names_its_commit_machine_and_command():
    """Results differ between machines and commits: a section that quotes a measured figure
    says at which commit, on which machine and with which command it was measured."""
    for page in PAGES:
        for section in sections(page.read_text()):
            figures = FIGURE.findall(section)
            if not figures:
                continue
            missing = [name for name, pattern in (("commit", COMMIT), ("machine", MACHINE),
                       ("command", COMMAND)) if not pattern.search(section)]  # fmt: skip
            assert not missing, (
                f"{page.name}, section {section.splitlines()[0]!r} quotes {figures[:2]} "
                f"but names no {', '.join(missing)}"
            )
