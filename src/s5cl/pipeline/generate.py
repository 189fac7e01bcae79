"""The files made from the stage table and the params models: `python -m s5cl.pipeline.generate
write` writes them, `... check` says which are out of date (a test runs it).

- `dvc.yaml` and the scripts `stages/<stage>.py` (from s5cl.pipeline.stages);
- `workflow/schemas/params.schema.json`, Snakemake's config schema (from s5cl.config.params);
- `docs/params.md`, every key with its default, range, meaning and the stages it reruns;
- the backbone presets under `workflow/presets/backbones` (from s5cl.model.presets).
"""

from __future__ import annotations

import inspect
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from s5cl.config.params import Params, Section, json_schema
from s5cl.model.presets import preset_files
from s5cl.pipeline.stages import (
    DATASET,
    FIGURES,
    RULES,
    STAGES,
    Stage,
    code_deps,
    default_resources,
)

DVC_HEADER = """\
# GENERATED from src/s5cl/pipeline/stages.py by `python -m s5cl.pipeline.generate write`: edit the
# table there.
# The S5CL pipeline for DVC. `dvc repro` runs what changed; `dvc exp run -S s5cl.tau_u=0.5`
# tries a variant; `dvc exp show` compares. workflow/Snakefile makes its rules from the same
# table, so both drivers run the same scripts to the same paths.
"""


def dvc_stages() -> dict[str, Any]:
    """dvc.yaml's `stages:` mapping."""
    dvc_path = lambda p: p.rstrip("/").replace(DATASET, "${data.name}")  # noqa: E731
    out: dict[str, Any] = {}
    for stage in STAGES:
        entry: dict[str, Any] = {
            "cmd": f"python {stage.script}",
            "deps": code_deps(stage) + [dvc_path(p) for p in stage.deps],
            "params": list(stage.params),
            "outs": [dvc_path(p) for p in stage.outs],
        }
        if stage.always:
            entry["always_changed"] = True
        if stage.metrics:
            entry["metrics"] = [dvc_path(p) for p in stage.metrics]
        if stage.plots:
            entry["plots"] = [{dvc_path(p): dict(props)} for p, props in stage.plots.items()]
        out[stage.name] = entry
    return out


def dvc_yaml() -> str:
    import yaml

    # vars: params.yaml is what DVC reads anyway; named, a missing params.yaml is reported as
    # "'params.yaml' does not exist" rather than "Could not find 'data.name'".
    body = yaml.safe_dump(
        {"vars": ["params.yaml"], "stages": dvc_stages(), "plots": list(FIGURES)},
        sort_keys=False,
        width=100,
    )
    return DVC_HEADER + body


SCRIPT = '''\
"""Stage `{name}`: {doc}.

Usage: python stages/{name}.py [--params params.yaml] [--set section.key=value ...]

GENERATED from src/s5cl/pipeline/stages.py by `python -m s5cl.pipeline.generate write`.
The work: {run}.
"""

import sys
from pathlib import Path

# This folder holds s5cl.py, which must not shadow the s5cl package: drop it from the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from s5cl.pipeline.runner import run_stage  # noqa: E402

if __name__ == "__main__":
    run_stage("{name}")
'''


def script(stage: Stage) -> str:
    return SCRIPT.format(name=stage.name, doc=stage.doc, run=stage.run)


def params_schema() -> dict[str, Any]:
    """params.yaml's JSON Schema for Snakemake's `validate`: the config models' own, with the
    rule names resources.rules may use."""
    schema = json_schema()
    rules = schema["$defs"]["ResourcesParams"]["properties"]["rules"]
    rules["propertyNames"] = {"enum": list(RULES)}
    return schema


def generated_files() -> dict[str, str]:
    """Every file derived from the table or the params models: path -> content."""
    files = {"dvc.yaml": dvc_yaml()}
    files |= {stage.script: script(stage) for stage in STAGES}
    files["workflow/schemas/params.schema.json"] = json.dumps(params_schema(), indent=2) + "\n"
    files["docs/params.md"] = reference_markdown()
    files |= preset_files()
    return files


def write_or_check(argv: list[str]) -> None:
    """python -m s5cl.pipeline.generate dvc     print dvc.yaml
    python -m s5cl.pipeline.generate write      write every generated file (dvc.yaml, stages/*.py,
                                     the Snakemake schema, docs/params.md)
    python -m s5cl.pipeline.generate check      exit 1, naming them, if any of those is out of
    date"""
    command = argv[0] if argv else ""
    if command == "dvc":
        sys.stdout.write(dvc_yaml())
        return
    if command not in ("write", "check"):
        sys.exit(write_or_check.__doc__)
    stale = []
    for path, text in generated_files().items():
        target = Path(path)
        if target.exists() and target.read_text() == text:
            continue
        stale.append(path)
        if command == "write":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    verb = "wrote" if command == "write" else "out of date"
    print(f"{verb}: {', '.join(stale)}" if stale else "all generated files are up to date")
    if stale and command == "check":
        sys.exit(f"regenerate: python -m s5cl.pipeline.generate write ({len(stale)} files)")


# ---------------------------------------------------------------- docs/params.md


def _type_name(annotation: Any) -> str:
    """int, float | None, 'error' | 'skip', list[str]: how a key's type reads in the docs."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args).replace("NoneType", "null")
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _limits(field: Any) -> str:
    marks = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥"}
    return ", ".join(
        f"{mark} {getattr(m, key)}"
        for m in field.metadata
        for key, mark in marks.items()
        if getattr(m, key, None) is not None
    )


def _key_rows(prefix: str, fields: dict[str, Any]) -> list[str]:
    rows = []
    for key, field in fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json", exclude_none=True)
        elif isinstance(default, dict):
            default = {
                k: v.model_dump(exclude_none=True) if isinstance(v, BaseModel) else v
                for k, v in default.items()
            }
        shown = json.dumps(default) if not isinstance(default, str) else default
        kind = _type_name(field.annotation)
        limits = _limits(field)
        doc = (field.description or "").replace("|", "\\|")
        rows.append(
            f"| `{prefix}{key}` | `{shown}` | {kind}{f' ({limits})' if limits else ''} | {doc} |"
        )
    return rows


def reference_markdown() -> str:
    """docs/params.md: every key with its default, type, range and description, and the
    stages that rerun when it changes."""
    sections = {
        name: field.annotation
        for name, field in Params.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section)
    }
    readers: dict[str, list[str]] = {}
    for stage in STAGES:
        for key in stage.params:
            readers.setdefault(key, []).append(stage.name)
    head = "| key | default | type | meaning |\n|---|---|---|---|"
    lines = [
        "# Params reference",
        "",
        "<!-- GENERATED from src/s5cl/config/params.py and src/s5cl/pipeline/stages.py by",
        "`python -m s5cl.pipeline.generate write`. -->",
        "",
        "`params.yaml` holds one section per stage. Set a value there, for one script with",
        "`--set section.key=value`, for DVC with `dvc exp run -S section.key=value`, for",
        "Snakemake with `--config 'section={key: value}'` or `--configfile overlay.yaml`. Every",
        "value is checked before any work starts; a mistake ends in one line naming the key.",
        "",
        "*Reruns* names the stages whose cache key holds the key (their `params` in dvc.yaml,",
        "and what Snakemake compares); the stages after them rerun when their inputs change.",
        "Every stage reads the whole config, so what a model file and the report record is",
        "what was run.",
        "",
        "## Top level",
        "",
        head,
        *_key_rows("", {key: f for key, f in Params.model_fields.items() if key not in sections}),
        "",
        *(f"Reruns on `{key}`: {', '.join(names)}." for key, names in readers.items()
          if "." not in key and key not in sections),
    ]  # fmt: skip
    for name, model in sections.items():
        doc = inspect.cleandoc(model.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        rerun = sorted(
            {s for key, names in readers.items() for s in names
             if key == name or key.startswith(f"{name}.")},
            key=RULES.index,
        )  # fmt: skip
        lines += ["", f"## `{name}`", ""]
        if doc:
            lines += [doc, ""]
        lines += [f"Reruns: {', '.join(rerun) or 'nothing (no stage result depends on it)'}.", ""]
        lines += [head, *_key_rows(f"{name}.", model.model_fields)]
        if name == "resources":  # the pipeline's defaults, which config does not know
            lines += ["", "The rules' defaults (the stage table's), over `resources.default`:", ""]
            lines += [f"- `{rule}`: `{json.dumps(default_resources(rule))}`" for rule in RULES
                      if default_resources(rule)]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    write_or_check(sys.argv[1:])
