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
