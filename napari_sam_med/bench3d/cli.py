"""``sam-med evaluate DATA --mode 3d``: the 3D interactive benchmark from the command line.

    sam-med evaluate training/splits/dev_pool.csv --mode 3d --models lite_medsam my.pt \\
        --split training/splits/dev_v1.json --group val --out-dir OUT [--resume]

The options are added to the ``evaluate`` sub-command by :func:`add_arguments`; see
``docs/benchmark_3d.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import GROUPS, STARTS

BASELINE_ROW = "cvpr24_procedure"


def _add_once(parser: argparse.ArgumentParser, *flags: str, **kwargs: Any) -> None:
    """Add an option unless the parser already has it (``--overwrite`` may be shared)."""
    try:
        parser.add_argument(*flags, **kwargs)
    except argparse.ArgumentError:
        pass


def add_arguments(e: argparse.ArgumentParser) -> None:
    """The 3D options of ``sam-med evaluate`` (``--mode 3d``)."""
    g = e.add_argument_group("3D interactive benchmark (--mode 3d)")
    g.add_argument(
        "--mode",
        choices=("2d", "3d"),
        default="2d",
        help="2d: one slice per object (default); 3d: the 3D interactive protocol",
    )
    g.add_argument(
        "--split", type=Path, help="patient split JSON (e.g. training/splits/dev_v1.json)"
    )
    g.add_argument("--group", choices=GROUPS, default="val", help="split group (default: val)")
    g.add_argument("--cases", type=int, help="only the first N cases (quick runs)")
    g.add_argument("--clicks", type=int, default=5, help="corrective clicks per start (default 5)")
    g.add_argument(
        "--starts",
        default=",".join(STARTS),
        help=f"comma-separated starts (default {','.join(STARTS)})",
    )
    g.add_argument("--seed", type=int, default=0, help="click simulation seed (ties)")
    g.add_argument("--threads", type=int, help="torch CPU threads")
    g.add_argument(
        "--engine",
        action="append",
        metavar="KEY=VALUE",
        help="PropagationSettings override (repeat), e.g. box_margin=4",
    )
    g.add_argument(
        "--baseline",
        default="lite_medsam",
        help="model of the CVPR 2024 procedure row ('none' to leave it out)",
    )
    g.add_argument(
        "--cache-dir", type=Path, help="on-disk embedding cache (default: in memory for the run)"
    )
    g.add_argument("--resume", action="store_true", help="continue the run in --out-dir")
    _add_once(g, "--overwrite", action="store_true", help="replace an earlier run's files")


def parse_engine_overrides(items: Sequence[str] | None) -> Any:
    """``["box_margin=4", "use_mask_prompt=true"]`` -> :class:`PropagationSettings`.

    Raises:
        ValueError: an unknown key or a value that does not parse as the field's type.
    """
    from ..volume.propagate import PropagationSettings

    fields = {f.name: f for f in dataclasses.fields(PropagationSettings)}
    defaults = PropagationSettings()
    values: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(
                f"--engine {item!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}"
            )
        default = getattr(defaults, key)
        kind = _UNSET_KINDS.get(key, float) if default is None else type(default)
        text = text.strip()
        values[key] = None if default is None and text.lower() == "none" else (
            _parse_value(key, text, kind)
        )
    return dataclasses.replace(defaults, **values)


# Settings whose default None means "follow the model": the type a value given for them has.
_UNSET_KINDS: dict[str, type] = {"correction_mask_prompt": bool, "carry_clicks": bool}


def _parse_value(key: str, text: str, kind: type) -> Any:
    if kind is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--engine {key}={text}: expected true or false")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"--engine {key}={text}: expected a {kind.__name__}") from None


def cmd_evaluate3d(args: argparse.Namespace, specs: list[str], names: list[str]) -> int:
    """Run the 3D benchmark; print the table; 1 when some (model, case, start) failed."""
    import torch

    from ..build import build_sam
    from ..device import resolve_device
    from ..volume.cache import EmbeddingCache, encoder_weights_id, model_weights_id
    from .cases import load_cases, select_group
    from .runner import BenchModel, BenchSettings
    from .store import RunFolder

    if args.threads:
        torch.set_num_threads(int(args.threads))
    settings = BenchSettings(
        starts=tuple(s.strip() for s in args.starts.split(",") if s.strip()),
        clicks=args.clicks,
        seed=args.seed,
        engine=parse_engine_overrides(args.engine),
        preset=args.preset,
    )
    cases = load_cases(args.dataset, args.modality)
    if args.split is not None:
        cases = select_group(cases, args.split, args.group)
    if args.cases is not None:
        if args.cases < 1:
            raise ValueError(f"--cases {args.cases}: expected a positive number")
        cases = cases[: args.cases]
    device = resolve_device(args.device)
    precision = getattr(args, "precision", None) or "fp32"
    built = {s: build_sam(s, device=device, precision=precision) for s in dict.fromkeys(specs)}
    models = [BenchModel(n, built[s]) for s, n in zip(specs, names, strict=True)]
    if args.baseline and args.baseline.lower() != "none":
        model = built.get(args.baseline) or build_sam(
            args.baseline, device=device, precision=precision
        )
        row = BASELINE_ROW if args.baseline == "lite_medsam" else f"{BASELINE_ROW}[{args.baseline}]"
        models.append(BenchModel(row, model, baseline=True))
    header = {
        "data": str(args.dataset),
        "split": None if args.split is None else str(args.split),
        "group": None if args.split is None else args.group,
        "cases": [c.name for c in cases],
        "models": [
            {
                "name": m.name,
                "weights": model_weights_id(m.model),
                "encoder": encoder_weights_id(m.model),
                "baseline": m.baseline,
            }
            for m in models
        ],  # fmt: skip
        "settings": settings.to_dict(),
        "precision": precision,
    }
    folder = RunFolder(args.out_dir, header, args.resume, args.overwrite)
    cache = EmbeddingCache(args.cache_dir, memory_bytes=2 * 2**30)  # a whole case stays float32
    _run_all(cases, models, settings, cache, folder, args.no_progress)
    return _report(folder, settings, device)


def _run_all(cases, models, settings, cache, folder, quiet: bool) -> None:
    from tqdm import tqdm

    from .report import write_reports
    from .runner import run_case

    keys = {(m.name, c.name, s) for c in cases for m in models for s in m.starts(settings)}
    done = folder.done()
    bar = tqdm(total=len(keys), initial=len(keys & done), unit="run", disable=quiet)
    where = {"case": "", "slices": 0}

    def on_record(rec: dict[str, Any]) -> None:
        folder.append(rec)
        bar.update(1)
        if rec.get("error"):
            tqdm.write(f"FAILED {rec['model']} {rec['case']} {rec['start']}: {rec['error']}",
                       file=sys.stderr)  # fmt: skip

    def on_slice(event: Any) -> None:
        where["slices"] += 1
        bar.set_postfix_str(f"{where['case']} slice {event.z} ({where['slices']} decoded)")

    for case in cases:
        where.update(case=case.name, slices=0)
        bar.set_postfix_str(case.name)
        run_case(case, models, settings, cache, done, on_record, on_slice)
        write_reports(folder.out, folder.header, folder.records, settings.clicks)
        cache.clear_memory()  # a case's embeddings are not needed by the next one
    bar.close()


def _report(folder, settings, device) -> int:
    from .report import failures, format_table, summarise, write_reports

    written = write_reports(folder.out, folder.header, folder.records, settings.clicks)
    rows = summarise(folder.records, settings.clicks)
    failed = failures(folder.records)
    n_cases = len({r["case"] for r in folder.records})
    print(f"{n_cases} cases, {len(folder.records)} runs, device {device}, "
          f"seed {settings.seed}, NSD at {settings.tolerance_mm:g} mm")  # fmt: skip
    if rows:
        print(format_table(rows, settings.clicks))
    for r in failed:
        print(f"failed: {r['model']} {r['case']} {r['start']}: {r['error']}")
    print("wrote " + ", ".join(str(p) for p in written))
    return 1 if failed else 0
