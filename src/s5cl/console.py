"""The `s5cl` command: `s5cl predict` classifies images with a trained model file (predict.py);
`s5cl backbones` lists the presets for pathology backbones (presets.py)."""

from __future__ import annotations

import argparse
import sys

from s5cl.errors import UserError


def main(argv: list[str] | None = None) -> None:
    """`s5cl --help`, `s5cl predict --help` for the options."""
    from s5cl import predict, presets

    parser = argparse.ArgumentParser(prog="s5cl", description="S5CL: use a trained model")
    commands = parser.add_subparsers(dest="command", required=True)
    predict.add_arguments(commands.add_parser("predict", help="classify images with a model file"))
    commands.add_parser("backbones", help="list the presets for pathology backbones")
    args = parser.parse_args(argv)
    try:
        if args.command == "predict":
            predict.run(args)
        else:
            print(presets.table())
    except UserError as error:
        print(f"s5cl {args.command}: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
