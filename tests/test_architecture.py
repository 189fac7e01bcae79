"""The library's layers (docs/architecture.md): the page names every module, no two modules or
top-level functions share a name, the import-linter contract holds and catches a break, and the
data stages' code holds nothing of the network or its training."""

import ast
import os
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

from s5cl.pipeline import stages

from .conftest import ROOT, VENV_BIN

SRC = ROOT / "src/s5cl"
MODULES = sorted(p for p in SRC.rglob("*.py") if p.name != "__init__.py")


def test_the_architecture_page_names_every_module_once():
    page = (ROOT / "docs/architecture.md").read_text()
    tree = page[page.index("```\ns5cl/") : page.index("```", page.index("```\ns5cl/") + 3)]
    named, folder = [], ""
    for line in tree.splitlines()[2:]:
        item = line.strip().split()[0] if line.strip() else ""
        if item.endswith("/"):
            folder = item
        elif item.endswith(".py"):
            top = len(line) - len(line.lstrip()) == 2  # s5cl/'s own files
            named.append(item if top else folder + item)
    assert sorted(named) == sorted(p.relative_to(SRC).as_posix() for p in MODULES)


def test_one_name_per_concept():
    """No two modules of one name in different folders, no two top-level functions or classes
    of one name, no module of ours imported under another name."""
    by_name = defaultdict(list)
    for path in MODULES:
        by_name[path.stem].append(path)
    assert {n: p for n, p in by_name.items() if len(p) > 1} == {}
    defined, renamed = defaultdict(list), []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                defined[node.name].append(path.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("s5cl"):
                renamed += [f"{path.name}: {a.name} as {a.asname}" for a in node.names if a.asname]
    assert {n: p for n, p in defined.items() if len(p) > 1} == {}
    assert renamed == []


def _lint_imports(src: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}  # this copy's s5cl first
    return subprocess.run(
        [str(VENV_BIN / "lint-imports"), "--config", str(ROOT / "pyproject.toml")],
        cwd=src.parent,
        env=env,
        capture_output=True,
        text=True,
    )


def test_the_layers_contract_holds_and_an_upward_import_breaks_it(tmp_path):
    kept = _lint_imports(ROOT / "src")
    assert kept.returncode == 0 and "1 kept, 0 broken" in kept.stdout, kept.stdout
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "src", copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    losses = copy / "s5cl/training/losses.py"  # the library reaching up into the pipeline
    losses.write_text(losses.read_text() + "\nfrom s5cl.pipeline import stages  # noqa\n")
    broken = _lint_imports(copy)
    assert broken.returncode != 0
    assert re.search(r"s5cl\.training is not allowed to import s5cl\.pipeline", broken.stdout)


def test_the_data_stages_run_no_network_or_training_code():
    for name in ("download", "prepare", "split"):
        code = stages.code_deps(stages.get(name))
        assert not [f for f in code if re.match(r"src/s5cl/(training|model)/", f)], name
    assert "src/s5cl/training/loop.py" in stages.code_deps(stages.get("warmup"))
