"""The ``sam-med`` entry point: one parser made of the sub-commands' modules."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import data_engine, export_onnx, info, pacs, precompute, segment
from .options import output_options, parent_parsers, volume_options


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sam-med``; returns the exit code (0 ok, 1 a case failed, 2 a usage/input error)."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose > 1 else (logging.INFO if args.verbose else 30)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("sam-med: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:  # VolumeError, CheckpointError, ManifestError, ...
        if args.debug:
            raise
        from ..volume.segment import error_line

        print(f"sam-med: error: {error_line(exc)}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (sub-commands segment, precompute, auto, info, evaluate, export,
    replay, export-onnx, pacs)."""
    p = argparse.ArgumentParser(prog="sam-med", description="Segment Anything for CT/MRI tumours.")
    sub = p.add_subparsers(dest="command", required=True)
    common, model, cache = parent_parsers()
    vol, out = volume_options(), output_options()
    s = segment.add_command(sub, [model, cache, vol, out])
    precompute.add_command(sub, [model, cache, vol])
    data_engine.add_auto(sub, [model, vol, out])
    info.add_command(sub, [common])
    data_engine.add_commands(sub, common, model, out)  # evaluate, export, replay
    export_onnx.add_export_onnx(sub, common)
    pacs.add_pacs_command(sub, common, s, segment.cmd_segment)
    return p
