"""``sam-med export``: image/label pairs or plugin sessions -> an MSD-style training set.

    sam-med export --out-dir DS --pair IMG LABEL [--pair ...] | --session SESSION.json ...
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_command(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``export`` (with ``parents``: common and output options)."""
    x = sub.add_parser("export", parents=parents, help="write an MSD-style training set")
    x.add_argument("--out-dir", type=Path, required=True, help="dataset folder to write")
    x.add_argument("--pair", nargs=2, action="append", metavar=("IMAGE", "LABEL"),
                   help="image and label files (repeat)")  # fmt: skip
    x.add_argument("--session", type=Path, action="append", metavar="JSON",
                   help="saved plugin session (repeat)")  # fmt: skip
    x.add_argument("--label-name", action="append", metavar="VALUE=NAME",
                   help="name of a label value, e.g. 1=sarcoma (repeat)")  # fmt: skip
    x.add_argument("--name", default="napari-sam-med", help="dataset name in dataset.json")
    x.add_argument("--modality", default=None, help="CT or MR for dataset.json")
    x.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """``sam-med export``: image/label pairs or plugin sessions -> MSD-style dataset."""
    from ...export import ExportItem, export_dataset, item_from_session, parse_label_names

    names = parse_label_names(args.label_name)
    items = [ExportItem(image, label) for image, label in args.pair or []]
    items += [item_from_session(p) for p in args.session or []]
    if not items:
        raise ValueError("command line: give --pair IMAGE LABEL or --session LOG.json")
    meta = export_dataset(items, args.out_dir, args.name, args.modality, names, args.overwrite)
    labels = ", ".join(f"{k}={v}" for k, v in meta["labels"].items() if k != "0") or "unnamed"
    print(f"{args.out_dir}: exported {len(items)} cases; dataset has {meta['numTraining']} "
          f"({labels})")  # fmt: skip
    return 0
