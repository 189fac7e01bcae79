"""The `s5cl` command: `s5cl predict` classifies images with a trained model file
(evaluation/predict.py); `s5cl backbones` lists the presets for pathology backbones
(model/presets.py); `s5cl suggest` chooses the next images to label (the suggest stage);
`s5cl label` serves a local page to label them (labelling/page.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from s5cl import layout
from s5cl.errors import UserError

# The arguments live here, the work in the modules each command imports when it runs: `s5cl
# --help` imports neither torch nor pandas (under 2 s; docs/usage.md).


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="*", type=Path, help="image files")
    parser.add_argument("--model", type=Path, default=layout.model_path("retrain"))
    parser.add_argument("--folder", type=Path, help="classify every image under this folder")
    parser.add_argument("--out", type=Path, help="CSV to write (default: print to stdout)")
    parser.add_argument("--neighbours", type=int, default=3, help="nearest labeled images per row")


def _label_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (its data.name)")
    parser.add_argument("--suggestions", type=Path, default=layout.SUGGEST / layout.TO_LABEL)
    parser.add_argument("--labels", type=Path, default=layout.LABELS_CSV, help="where answers go")
    parser.add_argument("--port", type=int, default=8765, help="0: any free port")


def _suggest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file")
    parser.add_argument("--strategy", help="suggest.strategy (checked as params are)")
    parser.add_argument("--count", type=int, help="suggest.count: images to suggest")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE"
    )


def _suggest(args: argparse.Namespace) -> None:
    """The suggest stage with these settings (as `python stages/suggest.py --set ...`)."""
    from s5cl.config.params import load_params
    from s5cl.pipeline.suggest import suggest

    sets = list(args.overrides)
    if args.strategy:
        sets.append(f"suggest.strategy={args.strategy}")
    if args.count:
        sets.append(f"suggest.count={args.count}")
    print(f"s5cl suggest: {suggest(load_params(args.params, sets))}")


def main(argv: list[str] | None = None) -> None:
    """`s5cl --help`, `s5cl predict --help` for the options."""
    parser = argparse.ArgumentParser(prog="s5cl", description="S5CL: use a trained model")
    commands = parser.add_subparsers(dest="command", required=True)
    _predict_arguments(commands.add_parser("predict", help="classify images with a model file"))
    commands.add_parser("backbones", help="list the presets for pathology backbones")
    _suggest_arguments(commands.add_parser("suggest", help="choose the next images to label"))
    _label_arguments(
        commands.add_parser("label", help="label the suggested images on a local web page")
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "predict":
            from s5cl.evaluation import predict

            predict.predict_command(args)
        elif args.command == "suggest":
            _suggest(args)
        elif args.command == "label":
            from s5cl.labelling import page

            page.label_command(args)
        else:
            from s5cl.model import presets

            print(presets.table())
    except UserError as error:
        print(f"s5cl {args.command}: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
