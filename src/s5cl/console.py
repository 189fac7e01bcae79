"""The `s5cl` command: `s5cl predict` classifies images with a trained model file (predict.py);
`s5cl backbones` lists the presets for pathology backbones (presets.py); `s5cl suggest`
chooses the next images to label (the suggest stage); `s5cl label` serves a local page to
label them (labelling.py)."""

from __future__ import annotations

import argparse
import sys

from s5cl.errors import UserError


def _suggest_arguments(parser: argparse.ArgumentParser) -> None:
    from s5cl.params import Strategy

    parser.add_argument("--params", default="params.yaml", help="params file")
    parser.add_argument("--strategy", choices=Strategy.__args__, help="suggest.strategy")
    parser.add_argument("--count", type=int, help="suggest.count: images to suggest")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE"
    )


def _suggest(args: argparse.Namespace) -> None:
    """The suggest stage with these settings (as `python stages/suggest.py --set ...`)."""
    from s5cl.params import load_params
    from s5cl.pipeline.suggest import suggest

    sets = list(args.overrides)
    if args.strategy:
        sets.append(f"suggest.strategy={args.strategy}")
    if args.count:
        sets.append(f"suggest.count={args.count}")
    print(f"s5cl suggest: {suggest(load_params(args.params, sets))}")


def main(argv: list[str] | None = None) -> None:
    """`s5cl --help`, `s5cl predict --help` for the options."""
    from s5cl import labelling, predict, presets

    parser = argparse.ArgumentParser(prog="s5cl", description="S5CL: use a trained model")
    commands = parser.add_subparsers(dest="command", required=True)
    predict.add_arguments(commands.add_parser("predict", help="classify images with a model file"))
    commands.add_parser("backbones", help="list the presets for pathology backbones")
    _suggest_arguments(commands.add_parser("suggest", help="choose the next images to label"))
    labelling.add_arguments(
        commands.add_parser("label", help="label the suggested images on a local web page")
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "predict":
            predict.run(args)
        elif args.command == "suggest":
            _suggest(args)
        elif args.command == "label":
            labelling.run(args)
        else:
            print(presets.table())
    except UserError as error:
        print(f"s5cl {args.command}: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
