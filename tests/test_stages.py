"""The stage table: what is generated from it, each stage's code dependencies, a new stage."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from s5cl.config.phases import PHASE_NAMES
from s5cl.pipeline import generate, stages

from .conftest import ROOT, TINY, run, write_params

# A stage added the way a developer would: one table entry and its function.
TOY_ENTRY = """
STAGES += (
    Stage(
        name="toy",
        run="s5cl.pipeline.toy:toy",
        doc="count the labeled images per class",
        deps=(SPLIT,),
        outs=(),
        params=("split.labels_per_class",),
        metrics=("metrics/toy.json",),
    ),
)
"""
TOY_FUNCTION = """
import pandas as pd

from s5cl import layout
from s5cl.io import write_json


def toy(params):
    split = pd.read_parquet(layout.SPLIT)
    counts = split[split["role"] == "labeled"]["label"].value_counts().sort_index()
    write_json("metrics/toy.json", {str(k): int(v) for k, v in counts.items()})
    return f"{len(counts)} classes, {int(counts.sum())} labeled"
"""


def test_generated_files_are_up_to_date():
    """dvc.yaml, the stage scripts, the Snakemake schema and docs/params.md are written from
    the stage table and the params models: the committed files must be what they write."""
    for path, text in generate.generated_files().items():
        assert (ROOT / path).read_text() == text, (
            f"{path}: run python -m s5cl.pipeline.generate write"
        )
    scripts = {p.name for p in (ROOT / "stages").glob("*.py")}
    assert scripts == {f"{s.name}.py" for s in stages.STAGES}  # none left over


def test_table_facts_hold_together():
    names = [s.name for s in stages.STAGES]
    assert len(set(names)) == len(names)
    assert tuple(s.name for s in stages.STAGES if s.phase) == PHASE_NAMES
    for stage in stages.STAGES:
        assert callable(stages.function(stage.name)), stage.run
        assert stage.multi_process == (stage.phase is not None)
    # every path a stage reads is written by an earlier stage
    written: set[str] = set(stages.INPUTS)
    for stage in stages.STAGES:
        for dep in stage.deps:
            assert any(dep == out or dep.startswith(out) for out in written), (stage.name, dep)
        written |= set(stage.outputs())


# The other packages the stages use, loaded once before the forks: what a stage module loads
# of this package does not depend on whether they are loaded already.
PRELOAD = "torch, torchvision, timm, sklearn.metrics, scipy.stats, pandas, matplotlib.pyplot"
PRELOAD += ", dvclive"
LOADED = """
import importlib, json, os, sys
import {preload}
import s5cl.pipeline.runner
found = {{}}
for module in sys.argv[1:]:
    read, write = os.pipe()
    if os.fork() == 0:  # a fresh copy of this interpreter imports one stage module
        importlib.import_module(module)
        files = [m.__file__ for n, m in sys.modules.items()
                 if (n == "s5cl" or n.startswith("s5cl.")) and getattr(m, "__file__", None)]
        os.write(write, json.dumps(files).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        found[module] = json.loads(pipe.read())
    os.wait()
print(json.dumps(found))
"""


def _runtime_imports(modules: list[str]) -> dict[str, set[str]]:
    """Per module, the package's files an interpreter has loaded after importing the runner
    and it: the oracle for modulefinder's closure (which also sees lazy imports)."""
    code = LOADED.format(preload=PRELOAD)
    out = subprocess.run(
        [sys.executable, "-c", code, *modules], capture_output=True, text=True, check=True
    )
    return {
        module: {Path(f).resolve().relative_to(ROOT).as_posix() for f in files}
        for module, files in json.loads(out.stdout).items()
    }


def test_code_deps_hold_every_module_a_stage_runs():
    modules = list(dict.fromkeys(s.module for s in stages.STAGES))
    for module, loaded in _runtime_imports(modules).items():
        closure = set(stages.module_files(stages.RUNNER, module))
        assert f"src/{module.replace('.', '/')}.py" in loaded  # the fork did import it
        assert loaded <= closure, f"{module}: not in its closure: {sorted(loaded - closure)}"
    # lazy imports count: the s5cl command imports predict only inside a function
    assert "src/s5cl/evaluation/predict.py" in stages.module_files("s5cl.cli")
    # and the closure is finer than the whole package
    assert "src/s5cl/training/loop.py" not in stages.code_deps(stages.get("download"))


def test_a_new_stage_is_one_table_entry_and_its_function(project):
    """Append a toy stage to the table, add its function, regenerate: DVC has a stage that
    runs, Snakemake a rule, and the script exists; nothing else was edited."""
    (project / "src/s5cl/pipeline/stages.py").write_text(
        (project / "src/s5cl/pipeline/stages.py")
        .read_text()
        .replace("\n# The sweep's rules", TOY_ENTRY + "\n# The sweep's rules")
    )
    (project / "src/s5cl/pipeline/toy.py").write_text(TOY_FUNCTION)
    write_params(project, TINY)
    env = {**os.environ, "PYTHONPATH": str(project / "src")}  # this copy's s5cl, not ROOT's

    def in_copy(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)

    written = in_copy(sys.executable, "-m", "s5cl.pipeline.generate", "write")
    assert written.returncode == 0, written.stderr
    assert "dvc.yaml" in written.stdout and "stages/toy.py" in written.stdout
    toy = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]["toy"]
    assert toy["cmd"] == "python stages/toy.py"
    assert toy["params"] == ["split.labels_per_class"]
    assert "src/s5cl/pipeline/toy.py" in toy["deps"]
    assert "data/splits/split.parquet" in toy["deps"]

    repro = in_copy("dvc", "repro", "toy")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert "toy: 10 classes, 20 labeled" in repro.stdout
    assert "Running stage 'warmup'" not in repro.stdout  # only what toy needs
    assert (
        json.loads((project / "metrics/toy.json").read_text())["3"] == 2
    )  # split.labels_per_class

    dry = in_copy("snakemake", "-n", "--forceall", "metrics/toy.json")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "rule toy:" in dry.stdout
    assert "logs/toy.log" in dry.stdout
    shutil.rmtree(project / ".snakemake", ignore_errors=True)


def test_snakemake_rules_are_the_table(project):
    listed = run(["snakemake", "--list-rules"], project).stdout.split()
    assert set(listed) == {"all", "sweep", *stages.RULES}
