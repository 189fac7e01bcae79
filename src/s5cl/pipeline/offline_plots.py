"""`dvc plots show` and `dvc plots diff` pages that open without the network.

DVC's page loads vega, vega-lite and vega-embed from a CDN, so offline (a cluster node, a
train) it stays blank. DVC takes an HTML template instead (`plots.html_template` in
.dvc/config, relative to .dvc/): this writes one, .dvc/plots.html, with the copies of the three
libraries that Snakemake ships (same major versions as DVC's) inlined. `make setup` runs it;
`python -m s5cl.pipeline.offline_plots [PATH]` does it by hand.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

LIBRARIES = ("vega/vega.js", "vega-lite/vega-lite.js", "vega-embed/vega-embed.js")
TEMPLATE = Path(".dvc/plots.html")  # .dvc/config: [plots] html_template = plots.html

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot (s5cl, offline)</title>
    SCRIPTS
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def page() -> str:
    """The template: DVC's own page (dvc_render.html.PAGE_HTML) with the libraries inlined
    where DVC would add its CDN <script> tags (no {scripts} placeholder, so it adds none)."""
    assets = files("snakemake") / "assets" / "data"
    scripts = "\n".join(
        f"<script>\n{(assets / name).read_text(encoding='utf-8')}\n</script>" for name in LIBRARIES
    )
    return PAGE.replace("SCRIPTS", scripts)


def write_template(argv: list[str]) -> None:
    target = Path(argv[0]) if argv else TEMPLATE
    target.write_text(page(), encoding="utf-8")
    print(f"wrote {target}: dvc plots pages open offline")


if __name__ == "__main__":
    write_template(sys.argv[1:])
