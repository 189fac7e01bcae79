"""Every command the README and docs/ tell a user to type, as written, at tiny sizes.

Each command of a ```bash block is listed in tests/doc_commands.tsv with how it is tested:

  run     run as written (placeholders such as /path/to/images filled in) in one tiny project
  queue   dvc exp run --queue ...: queued as written (DVC parses every -S, our params check
          its values), then taken off the queue: its form runs for real under `run`
  dry     snakemake ... -n: the config, presets and profiles are read and validated, every job
          planned; the same forms run for real in the tests named
  parse   cannot run here (GPU, network, a cluster, this suite itself); split as the shell
          would, and the tool it calls exists

A command added to the docs fails the first test until it is listed; one that breaks fails the
second.
"""

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from s5cl.config.params import load_params

from .conftest import PBC, ROOT, SHARED, VENV_BIN, copy_project, needs_shared, run

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# how, why, command: one line per documented command (tab-separated)
TABLE = Path(__file__).with_name("doc_commands.tsv")


def how_table() -> dict[str, tuple[str, str]]:
    rows = [line.split("\t") for line in TABLE.read_text().splitlines() if not line.startswith("#")]
    return {command: (how, why) for how, why, command in rows}


def documented() -> dict[str, str]:
    """Every command of the pages' ```bash blocks as the shell splits it (comments dropped,
    continuations and for-loops joined) -> its text as written, in the pages' order."""
    found: dict[str, str] = {}
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            pending: list[str] = []
            for line in block.replace("\\\n", " ").splitlines():
                pending.append(line)
                words = shlex.split("\n".join(pending), comments=True)
                if not words or words.count("do") + words.count("do;") > words.count("done"):
                    if not words:
                        pending = []
                    continue
                found.setdefault(" ".join(words), "\n".join(pending))
                pending = []
    return found


def test_every_documented_command_is_tested_and_every_tested_one_documented():
    how, docs = how_table(), documented()
    missing = sorted(set(docs) - set(how))
    assert not missing, f"commands in the docs that {TABLE.name} does not list: {missing}"
    stale = sorted(set(how) - set(docs))
    assert not stale, f"{TABLE.name} lists commands the docs no longer give: {stale}"
    for command, (mode, why) in how.items():
        assert mode in ("run", "queue", "dry", "parse"), command
        assert mode in ("run", "queue") or why, f"{command}: say why it is not run"
        if mode == "queue":
            assert command.startswith("dvc exp run"), command


SET = "--params params.yaml --set split.labels_per_class=2"


def _fill(command: str, work: Path) -> str:
    """The placeholders a user replaces, replaced by real files."""
    return (
        command.replace("/path/to/new/cells", str(work / "cells"))
        .replace("/path/to/images", str(work / "images"))
        .replace("<stage>", "split")
        .replace("[--params params.yaml] [--set section.key=value ...]", SET)
    )


def _bash(command: str, project: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run(["bash", "-c", command], project, check=check)


def _queued(project: Path) -> list[str]:
    status = _bash("dvc queue status", project).stdout
    return re.findall(r"^\w+\s+(\S+)\s+.*Queued", status, re.M)


@pytest.mark.slow(330)
@needs_shared()
def test_the_documented_commands_run_as_written(tiny_repro, tmp_path, monkeypatch):
    project = copy_project(tiny_repro, tmp_path / "project")  # `dvc repro` of TINY, done
    for name in ("Makefile", "pyproject.toml"):  # for make -n
        shutil.copy(ROOT / name, project / name)
    work = tmp_path / "work"
    (work / "cells").mkdir(parents=True)
    jpgs = sorted(PBC.rglob("*.jpg"))
    for path in jpgs[::60][:4]:
        shutil.copy(path, work / "cells" / path.name)
    shutil.copy(jpgs[0], project / "a.jpg")
    shutil.copy(next(SHARED.glob("crc-tiles-tif/val7k/*/*.tif")), project / "b.tif")
    for path in jpgs[::8]:  # a folder dataset: a class per folder
        (work / "images" / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, work / "images" / path.parent.name / path.name)
    (project / "my-overrides.yaml").write_text("seed: 1\n")
    _bash("git config user.name t && git config user.email t@t", project)  # DVC's commits

    # The baseline: `make run`'s two commands, then dvc.lock committed as the project does.
    _bash("git add -A && git commit -qm run && dvc exp save -f -n baseline", project)
    assert "dvc exp save -f -n baseline" in _bash("make -n run", project).stdout
    how = how_table()
    queued = 0
    experiments = {" ".join(shlex.split(c)) for c in EXPERIMENTS}
    for command, written in documented().items():
        mode, _ = how[command]
        filled = _fill(written, work)
        if mode == "run" and command in experiments:
            continue  # below, in their order
        if mode == "run":
            where = project
            if command.startswith(ASIDE):  # in a copy: the project keeps dvc.lock's outputs
                where = tmp_path / "aside"  # and no remote, for the experiments below
                if not where.exists():
                    shutil.copytree(project, where, symlinks=True)
            ran = _bash(filled, where, check=False)
            assert ran.returncode == 0, f"{command}:\n{ran.stdout[-2000:]}\n{ran.stderr[-2000:]}"
        elif mode == "queue":  # DVC parses it; our params check its values
            said = _bash(filled.replace("dvc exp run", "dvc exp run --queue", 1), project).stdout
            assert "Queued experiment" in said, command
            queued += 1
            sets = [
                w.removeprefix("++")
                for w in shlex.split(filled, comments=True)[3:]
                if w not in ("-S", "--queue")
            ]
            with monkeypatch.context() as here:
                here.chdir(project)
                load_params("params.yaml", sets)  # a UserError names the value
        elif mode == "dry":
            planned = _bash(
                shlex.join([*shlex.split(filled, comments=True), "-n"]), project, check=False
            )
            assert planned.returncode == 0, f"{command}:\n{planned.stderr[-2000:]}"
        else:
            words = shlex.split(written, comments=True)
            assert shutil.which(words[0], path=f"{VENV_BIN}:/usr/bin:/bin"), command
            if words[0] == "make":
                _bash(f"make -n {words[1]}", project)

    assert len(_queued(project)) == queued  # one each, none run: their form runs below
    _bash("dvc queue remove --all", project)

    # What the run commands left: predictions with far flags, the folder dataset.
    assert "far_from_training" in pd.read_csv(project / "preds.csv").columns
    assert (tmp_path / "aside/data/packed/folder/images.u8").exists()
    _bash("git checkout -q params.yaml && dvc checkout -f -q", project)  # back to main's run

    # Experiments, in the docs' order. methods.md's loop queues four runs, each from main:
    _bash(EXPERIMENTS[0], project)
    assert sorted(_queued(project)) == ["ce", "fixmatch", "mpl", "supcon"]
    _bash("dvc queue remove --all", project)  # their form runs next
    for command in EXPERIMENTS[1:]:  # usage.md's two variants, run by README's line, ...
        _bash(command, project)
    table = _bash(EXPERIMENTS[4], project).stdout
    lines = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines() if line]
    values = {row[0].split()[-1].strip("[]"): dict(zip(lines[0], row, strict=True))
              for row in lines[2:]}  # fmt: skip
    main = values[lines[3][0]]  # the row of the commit, under the workspace's
    assert main["final.accuracy"] not in ("!", "-")  # the committed dvc.lock's outputs
    assert values["baseline"]["final.accuracy"] == main["final.accuracy"]
    assert values["labels10"]["split.labels_per_class"] == "10"
    assert values["labels10"]["s5cl.tau_u"] == "0.7"  # not the other variant's
    assert values["tau05"]["split.labels_per_class"] == "2"
    assert values["tau05"]["s5cl.tau_u"] == "0.5"
    for name in ("labels10", "tau05"):
        assert re.fullmatch(r"0\.\d+", values[name]["final.accuracy"]), values
    page = (project / "dvc_plots/index.html").read_text()
    assert "<script src=" not in page and "vegaEmbed" in page  # everything inlined: offline


# Run in a copy of the project: the stages on a folder without DVC, a DVC remote.
ASIDE = ("for s in", "dvc remote add", "git add .dvc/config")
# Run in this order after the rest: they queue, run and compare experiments.
EXPERIMENTS = [
    "for m in ce supcon fixmatch mpl; do dvc exp run --queue -S method=$m -n $m; done",
    "dvc exp run --queue -S split.labels_per_class=10 -n labels10",
    "dvc exp run --queue -S s5cl.tau_u=0.5 -S s5cl.tau_p=0.3 -n tau05",
    "dvc exp run --run-all -j 1 && dvc exp show",
    "dvc exp show --md --drop '.*' --keep 'Experiment|split\\.labels_per_class|s5cl\\.tau_|final\\.accuracy'",  # noqa: E501
    "dvc exp run --run-all -j 1",  # nothing left in the queue: a no-op
    "dvc exp show --md --drop '.*' --keep 'Experiment|method$|final\\.(accuracy|accuracy_low|accuracy_high|macro_f1)$'",  # noqa: E501
    "dvc plots diff baseline labels10 tau05",
]
