"""Shared fixtures: real data only (scikit-learn's digits, ../shared/data)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from .kills import Kill, kill_during, summarise_rerun

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PBC = SHARED / "pbc-240"
VENV_BIN = Path(sys.executable).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first: the `slow(seconds)` tests by their time, then the quick ones in file
    order. pytest-xdist hands each worker one test at a time (pyproject's addopts), so the
    long ones run side by side while the short ones fill the gaps at the end."""

    def seconds(item: pytest.Item) -> float:
        slow = item.get_closest_marker("slow")
        return slow.args[0] if slow else 0

    items.sort(key=seconds, reverse=True)  # stable: file order among equals


def needs_shared() -> pytest.MarkDecorator:
    return pytest.mark.skipif(not PBC.is_dir(), reason=f"{PBC} is absent (../shared not here)")


@pytest.fixture
def digits_labels():
    from sklearn.datasets import load_digits

    return load_digits().target


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A temp copy of the project's tracked pipeline files, as its own git + DVC repo."""
    return make_project(tmp_path / "project")


def make_project(dest: Path) -> Path:
    dest.mkdir()
    for name in ("stages", "src", "workflow", "labels"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / name, dest / name)
    run(["git", "init", "-q"], dest)
    run(["dvc", "init", "-q"], dest)
    for name in (".dvcignore", ".dvc/config", ".dvc/.gitignore"):
        shutil.copy(ROOT / name, dest / name)
    run(
        ["python", "-m", "s5cl.pipeline.offline_plots", ".dvc/plots.html"], dest
    )  # as make setup does
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], dest)
    return dest


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if os.environ.get("S5CL_TEST_TIMES"):  # where the suite's time goes: one line a command
        test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
        with open(os.environ["S5CL_TEST_TIMES"], "a") as log:
            log.write(f"{time.perf_counter() - start:.1f}\t{test}\t{shlex.join(map(str, cmd))}\n")
    if check and result.returncode != 0:
        raise AssertionError(
            f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def in_process(project: Path, monkeypatch, *names: str, sets: tuple[str, ...] = ()) -> None:
    """Run stages inside pytest (whose torch is already loaded): for the stages a test only
    needs the outputs of. The project needs only params.yaml (and labels/ for split)."""
    from s5cl.config.params import load_params
    from s5cl.pipeline import stages

    monkeypatch.chdir(project)
    params = load_params(project / "params.yaml", list(sets))
    for name in names:
        stages.function(name)(params)


@dataclass
class Ran:
    code: int
    out: str
    err: str  # progress bars and warnings, then any error

    @property
    def last(self) -> str:
        lines = self.err.strip().splitlines()
        return lines[-1] if lines else ""


def capture(capsys, call: Callable[[], None]) -> Ran:
    capsys.readouterr()
    code = 0
    old_showwarning = warnings.showwarning
    try:
        call()
    except SystemExit as exit_:
        code = int(exit_.code)
    finally:
        warnings.showwarning = old_showwarning
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return Ran(code, out, err)


def stage(name: str, capsys, *args: str) -> Ran:
    """Run stage `name` in-process exactly as `python stages/<name>.py ARGS` would."""

    from s5cl.pipeline.runner import run_stage

    def call() -> None:
        old = sys.argv
        sys.argv = [f"stages/{name}.py", *args]
        try:
            run_stage(name)
        finally:
            sys.argv = old

    return capture(capsys, call)


class Interrupted(BaseException):
    """Stands for a kill in the in-process tests: raised right after the first checkpoint."""


def stop_after_first_checkpoint(project: Path, monkeypatch, stage: str, sets=()) -> None:
    """Run `stage` in-process and stop it right after it writes its first checkpoint."""
    from s5cl.training.resume import Resume

    save = Resume.save

    def save_then_die(self, state):
        save(self, state)
        raise Interrupted

    monkeypatch.setattr(Resume, "save", save_then_die)
    with pytest.raises(Interrupted):
        in_process(project, monkeypatch, stage, sets=sets)
    monkeypatch.setattr(Resume, "save", save)


TINY = {
    "data.size": 32,
    "warmup.steps": 4,
    "warmup.eval_every": 2,
    "s5cl.steps": 3,
    "s5cl.batch_unlabeled": 16,
    "s5cl.eval_every": 3,
    "retrain.steps": 3,
    "pseudolabel.threshold": 0.0,
    # Compiling the augmentations costs ~8 s a process even from Inductor's disk cache; the
    # fused views are tested against the eager ones (test_augment), and `make run` uses them.
    "compute.fuse_augment": False,
}


@dataclass(frozen=True)
class TinyRun:
    project: Path  # never changed: tests work in their own copy (copy_project)
    stdout: str  # what every `dvc repro` printed, one after the other (killed ones too)
    last: str  # what the last one, which finished, printed on stdout
    stderr: str  # its progress bars, warnings
    kills: list[Kill]  # the SIGKILLs, each with what was running when it landed
    said: list[str]  # what each killed `dvc repro` printed, summarised (tests/kills.py)
    attempts: int  # plain `dvc repro` runs after the last kill until one finished
    rerun: str  # what the one that finished printed, summarised


KILLS = (("prepare", 0.5), ("warmup", 0.1), ("s5cl", 0.1), ("retrain", 0.0))


@pytest.fixture(scope="session")
def tiny_repro(tmp_path_factory, worker_id) -> TinyRun:
    """The TINY config's run, shared by the tests that need a whole one (the docs' commands,
    the end-to-end tests), made the hard way: `dvc repro` killed with SIGKILL in a data stage
    and in each training stage right after its first checkpoint (each kill in the rerun of the
    one before), then plain `dvc repro` until done. test_pipeline_e2e.py checks the kills and
    that the results equal an uninterrupted run's bit for bit. Made once a session: whichever
    pytest-xdist worker asks first makes it, the others wait for it and read it."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # xdist: each worker has its own basetemp under the session's
        shared = shared.parent
    folder, record = shared / "tiny", shared / "tiny" / "run.json"
    with FileLock(shared / "tiny.lock"):
        if not record.exists():
            folder.mkdir()
            project = make_project(folder / "project")
            write_params(project, {**TINY, "checkpoint.every": 1})  # not a cache key
            logs, kills, said = [], [], []
            for stage, at in KILLS:
                kill = Kill(stage, at)
                if not kill_during(project, kill, ["dvc", "repro"]):
                    kill.landed = "nothing: the run ended first"
                logs.append((project / ".kill.log").read_text())
                kills.append(kill)
                said.append(summarise_rerun(logs[-1]))
            (project / ".kill.log").unlink()
            for attempts in range(1, 4):  # more than one is a failure, reported
                done = run(["dvc", "repro"], project, check=attempts == 3)
                logs.append(done.stdout)
                if done.returncode == 0:
                    break
            write_params(project, {"checkpoint.every": _default("checkpoint.every")})
            kept = {"kills": [vars(k) for k in kills], "said": said, "attempts": attempts}
            kept |= {"logs": logs, "stderr": done.stderr}
            kept["rerun"] = summarise_rerun(done.stdout + done.stderr)
            record.write_text(json.dumps(kept))
    kept = json.loads(record.read_text())
    return TinyRun(folder / "project", "".join(kept["logs"]), kept["logs"][-1],
                   kept["stderr"], [Kill(**k) for k in kept["kills"]], kept["said"],
                   kept["attempts"], kept["rerun"])  # fmt: skip


def _default(dotted: str):
    """A param's value in the project's params.yaml."""
    import yaml

    section, key = dotted.split(".")
    return yaml.safe_load((ROOT / "params.yaml").read_text())[section][key]


def copy_project(tiny: TinyRun, dest: Path) -> Path:
    """A copy of the shared TINY run's project (workspace, git, DVC cache) at `dest`."""
    shutil.copytree(tiny.project, dest, symlinks=True)
    return dest


def write_params(project: Path, overrides: dict) -> None:
    """Apply dotted overrides to the project's params.yaml."""
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        params[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


class FileServer:
    """What the loopback server serves, and what it was asked for."""

    def __init__(self, url: str):
        self.url = url
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}  # name -> bytes to send before dropping, once
        self.log: list[tuple[str, str | None, int]] = []  # (name, Range header, bytes sent)


@pytest.fixture
def file_server():
    """An HTTP server on 127.0.0.1 (started here, no network) that honours Range requests and
    can drop a connection part-way, like a flaky host."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state: FileServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            name = self.path.lstrip("/").split("?")[0]
            data = state.files.get(name)
            ranged = self.headers.get("Range")
            if data is None:
                state.log.append((name, ranged, 0))
                self.send_error(404)
                return
            start = int(ranged.removeprefix("bytes=").split("-")[0]) if ranged else 0
            if start >= len(data):
                state.log.append((name, ranged, 0))
                self.send_error(416)
                return
            self.send_response(206 if ranged else 200)
            if ranged:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            sent = body[: state.cut.pop(name, len(body))]
            self.wfile.write(sent)
            state.log.append((name, ranged, len(sent)))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = FileServer(f"http://127.0.0.1:{server.server_port}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def zip_tree(tree: dict[str, bytes]) -> bytes:
    """A zip (in memory) holding `tree`'s {member name: bytes}."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in tree.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def digit_views(seed: int = 0):
    """A real batch: 16 labeled digits (4 per class, as m-per-class would draw them) and 16
    unlabeled ones, with weak and strong views, normalised."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    from s5cl.config.params import AugmentParams
    from s5cl.data.augment import normalize, strong_view, to_float, weak_view

    digits = load_digits()
    rng = np.random.default_rng(seed)
    labeled = np.concatenate([rng.choice(np.flatnonzero(digits.target == c), 4) for c in range(4)])
    unlabeled = rng.choice(len(digits.target), 16, replace=False)
    u8 = torch.from_numpy((digits.images / 16 * 255).astype(np.uint8))
    gen = torch.Generator().manual_seed(seed)

    def views(idx):
        x = u8[idx][:, None].expand(-1, 3, 8, 8)
        x = torch.nn.functional.interpolate(to_float(x.contiguous()), size=32, mode="bilinear")
        return [weak_view(x, AugmentParams(), gen), strong_view(x, AugmentParams(), gen)]

    x = normalize(torch.cat(views(labeled) + views(unlabeled)), [0.2] * 3, [0.3] * 3)
    return x, torch.from_numpy(digits.target[labeled])
