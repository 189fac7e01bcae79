"""Every pipeline stage, declared once: the table `STAGES` below.

Everything else is derived from it:

- `dvc.yaml` and the scripts `stages/<stage>.py`, written by `python -m s5cl.pipeline.generate
write`
  (a test keeps the committed files equal to what it writes);
- the Snakemake rules, made in a loop over the table (workflow/rules/stages.smk);
- each stage's code dependencies: its script plus the import closure, inside `src/s5cl`, of the
  runner (`s5cl.pipeline.runner`) and of the module holding its function (`code_deps`);
- the resume checkpoints' fingerprints (`params`, `deps`), the phases of the training loop
  (`phase`), which stages torchrun may run (`multi_process`), the sweep's stages (`sweep`), the
  rules' default resources (`resources`, read by s5cl.config.params).

To add a stage: one `Stage(...)` entry here and its function, then `python -m
s5cl.pipeline.generate write`.

This module imports nothing heavy (the Snakefile reads it): a stage's function is named as
"module:function" and imported only when the stage runs.
"""

from __future__ import annotations

import functools
import importlib
import modulefinder
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from s5cl import layout
from s5cl.config.params import FEATURES_MADE_FROM
from s5cl.config.phases import PHASE_NAMES, phase
from s5cl.errors import UserError
from s5cl.io import set_writer_lookup

if TYPE_CHECKING:
    from s5cl.config.params import Params, RuleResources
    from s5cl.config.phases import Phase


def directory(path: Path | str) -> str:
    """A path that names a folder: the table marks it with a trailing slash."""
    return f"{path}/"


DATASET = "{dataset}"  # stands for data.name in the table's paths
RAW, PACKED = directory(layout.raw_dir(DATASET)), directory(layout.packed_dir(DATASET))
SPLIT, PSEUDO = str(layout.SPLIT), str(layout.PSEUDO)
FEATURES = directory(layout.FEATURES)
COLDSTART, LABELS = directory(layout.COLDSTART), directory(layout.LABELS)
INPUTS = (LABELS,)  # what people write, not a stage (kept in git with a README, so it exists)
CURVES = {"x": "step"}  # dvclive's per-step training curves, as DVC plots


@dataclass(frozen=True)
class Stage:
    name: str
    run: str  # "module:function": takes Params, returns the one-line summary (None on rank > 0)
    doc: str  # what it does, one line
    deps: tuple[str, ...]  # data it reads; code dependencies are added by code_deps
    outs: tuple[str, ...]
    params: tuple[str, ...]  # params (sections or dotted keys) whose change reruns it
    metrics: tuple[str, ...] = ()
    plots: dict[str, dict[str, str]] = field(default_factory=dict)  # path -> DVC plot props
    phase: Phase | None = None  # a phase of the training loop (config.phases)
    sweep: bool = True  # part of each run of the sweep (download and prepare are shared)
    local: bool = False  # Snakemake runs it on the submitting host (it needs the internet)
    # DVC runs it on every `dvc repro` (always_changed): what it lists (a folder of your images)
    # can change without any file DVC tracks changing; unchanged outputs stop the rerun there
    always: bool = False
    resources: dict[str, int] = field(default_factory=dict)  # default resources.rules entry

    @property
    def module(self) -> str:
        return self.run.partition(":")[0]

    @property
    def multi_process(self) -> bool:
        """torchrun may run it, one process per GPU: the training phases (the other stages
        read or write whole files)."""
        return self.phase is not None

    @property
    def script(self) -> str:
        return f"stages/{self.name}.py"

    def outputs(self) -> tuple[str, ...]:
        """Everything it writes that a driver tracks: outs, then metrics and plots."""
        return (*self.outs, *self.metrics, *self.plots)


def _training(
    name: str, doc: str, deps: tuple[str, ...], params: tuple[str, ...], runtime: int
) -> Stage:
    curves = directory(layout.METRICS / name / "plots" / "metrics")
    return Stage(
        name=name,
        run=f"s5cl.pipeline.training_stages:{name}",
        doc=doc,
        deps=(PACKED, SPLIT, FEATURES, *deps),
        outs=(str(layout.model_path(name)),),
        params=("seed", "method", *params),
        metrics=(str(layout.METRICS / name / "metrics.json"),),
        plots={curves: CURVES},
        phase=phase(name),
        resources={"cpus": 8, "mem_mb": 8000, "runtime": runtime},
    )


INFERENCE = {"cpus": 8, "mem_mb": 8000}
MODELS = tuple(str(layout.model_path(s)) for s in PHASE_NAMES)  # what the training stages leave

# data.* keys that decide which images download lists
LISTED = ("name", "root", "mirror", "downloads", "recursive", "unlabeled_dir", "unlabeled_root")

STAGES: tuple[Stage, ...] = (
    Stage(
        name="download",
        run="s5cl.pipeline.download:download",
        doc="fetch and verify the dataset; list every image with its class, subset and md5",
        deps=(),
        outs=(RAW,),
        params=tuple(f"data.{key}" for key in LISTED),
        sweep=False,
        local=True,
        always=True,
    ),
    Stage(
        name="prepare",
        run="s5cl.pipeline.prepare:prepare",
        doc="decode every image once into a uint8 memmap, with its index and statistics",
        deps=(RAW,),
        outs=(PACKED,),
        params=("data.size", "data.on_bad_image"),
        sweep=False,
        resources={"cpus": 8, "mem_mb": 8000, "runtime": 60},
    ),
    Stage(
        name="features",
        run="s5cl.pipeline.features:features",
        doc="a frozen encoder's features of cached weak and strong views of every image",
        deps=(PACKED,),
        outs=(FEATURES,),
        params=FEATURES_MADE_FROM,
        resources={"cpus": 8, "mem_mb": 8000, "runtime": 60},
    ),
    Stage(
        name="coldstart",
        run="s5cl.pipeline.coldstart:coldstart",
        doc="a self-supervised embedding of the training pool (split.select not random)",
        deps=(PACKED, FEATURES),
        outs=(COLDSTART,),
        # the pool (the held-out cuts), the network and views, s5cl's optimiser and tau_u
        params=(
            "seed",
            *(f"split.{key}" for key in ("test_fraction", "val_fraction", "test_seed", "select")),
            "model",
            "augment",
            "compute",
            *(f"s5cl.{key}" for key in ("lr", "weight_decay", "batch_unlabeled", "tau_u")),
            "coldstart",
        ),
        resources={"cpus": 8, "mem_mb": 8000, "runtime": 60},
    ),
    Stage(
        name="split",
        run="s5cl.pipeline.split:split",
        doc="every image once as labeled, unlabeled, val or test, stratified, from a seed",
        deps=(PACKED, COLDSTART, LABELS),
        outs=(SPLIT,),
        params=("seed", "split"),
    ),
    _training(
        "warmup",
        "supervised model: SupCon(tau_l) + CE on the labeled images only",
        deps=(),
        params=("model", "augment", "compute", "warmup"),
        runtime=60,
    ),
    _training(
        "s5cl",
        "+ self-supervised SupCon(tau_u) on the unlabeled images (instance ids)",
        deps=(str(layout.model_path("warmup")),),
        params=("augment", "compute", "s5cl", "fixmatch"),
        runtime=120,
    ),
    Stage(
        name="pseudolabel",
        run="s5cl.pipeline.pseudolabel:pseudolabel",
        doc="label, confidence and kept flag for every unlabeled image",
        deps=(PACKED, SPLIT, str(layout.model_path("s5cl"))),
        outs=(PSEUDO,),
        params=("compute", "pseudolabel"),
        metrics=(str(layout.METRICS / "pseudolabel.json"),),
        resources=INFERENCE,
    ),
    _training(
        "retrain",
        "S5CL again with the kept pseudo-labels as unlabeled targets (tau_p)",
        deps=(str(layout.model_path("s5cl")), PSEUDO),
        params=("augment", "compute", "s5cl", "fixmatch", "retrain"),
        runtime=120,
    ),
    Stage(
        name="evaluate",
        run="s5cl.pipeline.evaluate:evaluate",
        doc="test scores with 95% intervals, paired tests of the three models, val scores",
        deps=(PACKED, SPLIT, *MODELS),
        outs=(directory(layout.EVALUATE_PLOTS),),
        params=("compute", "evaluate"),
        metrics=(str(layout.METRICS / "evaluate.json"),),
        plots={
            str(layout.METRICS / "predictions.csv"): {
                "template": "confusion",
                "x": "actual",
                "y": "final",
            }
        },
        resources=INFERENCE,
    ),
)

# What the report shows of the params, and so is cached on: every section the stages before it
# read (`sweep` and `resources` are Snakemake's, `checkpoint` never changes a result).
REPORTED = tuple(dict.fromkeys(key.partition(".")[0] for s in STAGES for key in s.params))

STAGES += (
    Stage(
        name="report",
        run="s5cl.pipeline.report:report",
        doc="one self-contained page: params, scores, figures, training curves",
        deps=(
            PACKED,
            SPLIT,
            PSEUDO,
            MODELS[-1],
            str(layout.METRICS / "evaluate.json"),
            str(layout.METRICS / "pseudolabel.json"),
            *(directory(layout.METRICS / s / "plots" / "metrics") for s in PHASE_NAMES),
            directory(layout.EVALUATE_PLOTS),
        ),
        outs=(directory(layout.REPORT), directory(layout.REPORT_PLOTS)),
        params=REPORTED,
        sweep=False,
        resources=INFERENCE,
    ),
    Stage(
        name="suggest",
        run="s5cl.pipeline.suggest:suggest",
        doc="the next images to label, by suggest.strategy on the final model: CSV and sheet",
        deps=(PACKED, SPLIT, MODELS[-1]),
        outs=(directory(layout.SUGGEST),),
        params=("seed", "compute", "suggest"),
        sweep=False,  # the sweep's rounds (sweep.rounds) call it themselves
        resources=INFERENCE,
    ),
)

# Figures `dvc plots show` shows besides the stages' curves and confusion (dvc.yaml's
# top-level plots); every figure is also an SVG beside its PNG.
FIGURES = (
    str(layout.EVALUATE_PLOTS / "per_class_f1.png"),
    *(str(layout.REPORT_PLOTS / f"{name}.png")
      for name in ("training_curves", "embedding_map", "pseudo_labels")),
)  # fmt: skip

# The sweep's rules (workflow/rules/sweep.smk): not stages, but they have resources too.
SWEEP_RULES = {"sweep_run": {"cpus": 2, "mem_mb": 8000, "runtime": 240}, "sweep_aggregate": {}}
RULES = (*(s.name for s in STAGES), *SWEEP_RULES)


def get(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"no stage {name!r}; the stages are {', '.join(s.name for s in STAGES)}")


def writer_of(path: str | Path) -> Stage | None:
    """The stage whose outputs hold `path` (a file it writes, or one inside a folder it
    writes), whatever the dataset; None for a path no stage writes."""
    path = Path(path).as_posix()
    for stage in STAGES:
        for out in stage.outputs():
            pattern = re.escape(out).replace(re.escape(DATASET), "[^/]+")
            if re.fullmatch(pattern + (".*" if out.endswith("/") else ""), path):
                return stage
    return None


# Errors of the library about a missing or stale file name the stage that remakes it.
set_writer_lookup(writer_of)


def _within(path: str, folder: str) -> bool:
    return path == folder.rstrip("/") or (folder.endswith("/") and path.startswith(folder))


def upstream(name: str) -> tuple[Stage, ...]:
    """The stages whose outputs stage `name` reads, directly or not: all of them are done
    whenever it starts, under DVC and under Snakemake alike."""
    found: dict[str, Stage] = {}
    wanted = list(get(name).deps)
    while wanted:
        dep = wanted.pop()
        for stage in STAGES:
            if stage.name not in found and any(
                _within(dep, out) or _within(out, dep) for out in stage.outputs()
            ):
                found[stage.name] = stage
                wanted += stage.deps
    return tuple(s for s in STAGES if s.name in found)


def function(name: str) -> Callable[[Params], str | None]:
    """The function that does the work of stage `name` (imported now, not before)."""
    module, _, attr = get(name).run.partition(":")
    return getattr(importlib.import_module(module), attr)


def sweep_stages(after: str | None = None) -> tuple[Stage, ...]:
    """The stages each run of the sweep runs; from stage `after` on (itself included) for a
    round that changed the labels."""
    chosen = tuple(s for s in STAGES if s.sweep)
    start = [s.name for s in chosen].index(after) if after else 0
    return chosen[start:]


# ---------------------------------------------------------------- code dependencies

SRC = Path(__file__).resolve().parents[2]  # the folder holding the s5cl package
RUNNER = "s5cl.pipeline.runner"  # what every stage script runs first


def module_files(*modules: str) -> list[str]:
    """The files of `modules` and of every module of this package they import, directly or
    not, lazy imports inside functions included (stdlib modulefinder scans all code objects),
    as paths relative to the project root (src/s5cl/...). Imports of other packages are not
    followed: modulefinder only searches `SRC`."""
    return sorted(set().union(*(_closure(module) for module in modules)))


@functools.cache
def _closure(module: str) -> frozenset[str]:
    """module_files of one module, scanned once a process (the Snakefile asks for every
    stage's, and each shares the runner's)."""
    finder = modulefinder.ModuleFinder(path=[str(SRC)])
    finder.import_hook(module)
    root = SRC.parent
    return frozenset(
        Path(m.__file__).resolve().relative_to(root).as_posix()
        for name, m in finder.modules.items()
        if (name == "s5cl" or name.startswith("s5cl.")) and m.__file__
    )


def code_deps(stage: Stage) -> list[str]:
    """The code stage `stage` runs: its script, then the modules of the runner and its
    function."""
    return [stage.script, *module_files(RUNNER, stage.module)]


def resolve_paths(paths: tuple[str, ...] | list[str], dataset: str) -> list[str]:
    """The table's paths for one dataset, folders without their marking slash."""
    return [p.rstrip("/").replace(DATASET, dataset) for p in paths]


# ---------------------------------------------------------------- Snakemake's resources

MULTI_PROCESS = tuple(s.name for s in STAGES if s.multi_process)  # may get several GPUs


def default_resources(rule: str) -> dict[str, int]:
    """What the table asks for `rule` before params.yaml's resources: section."""
    stage = next((s for s in STAGES if s.name == rule), None)
    return dict(stage.resources) if stage is not None else dict(SWEEP_RULES[rule])


def rule_resources(params: Params, rule: str) -> RuleResources:
    """The resources of `rule`'s jobs: resources.default, then the table's defaults for the
    rule, then its own keys under resources.rules."""
    own = params.resources.rules.get(rule)
    return params.resources.default.model_copy(
        update={**default_resources(rule), **(own.model_dump(exclude_none=True) if own else {})}
    )


def check_resources(params: Params) -> None:
    """resources.rules names rules that exist, and gives several GPUs only to stages torchrun
    runs (params.yaml is checked here, not in s5cl.config: the rules are the pipeline's)."""
    for rule in params.resources.rules:
        if rule not in RULES:
            raise UserError(
                f"resources.rules.{rule}: no such rule; the rules are {', '.join(RULES)}"
            )
        gpus = rule_resources(params, rule).gpus
        if gpus > 1 and rule not in MULTI_PROCESS:
            raise UserError(
                f"resources.rules.{rule}.gpus={gpus}: only {', '.join(MULTI_PROCESS)} "
                "run on several GPUs (torchrun); give it 1"
            )


def checked(params: Params) -> Params:
    """`params` once the pipeline's own checks pass (the runner and the Snakefile call it)."""
    check_resources(params)
    return params
