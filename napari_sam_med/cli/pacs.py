"""``sam-med pacs``: find, retrieve, segment and store back through DICOMweb.

Commands::

    sam-med pacs find [--patient-id ID] [--accession A] [--study UID] [--series UID]
    sam-med pacs get --series UID [--study UID]
    sam-med pacs segment --series UID PROMPTS [--format rtstruct] [--with-rtstruct] [--store]
    sam-med pacs segment --manifest cases.json --out-dir D [--store]  (cases may name "pacs")
    sam-med pacs store FILE.dcm [FILE.dcm ...]

Every command takes ``--url`` and ``--pacs-config`` (see :mod:`napari_sam_med.volume.pacs`
for the config file and environment variables; secrets are never printed). See docs/dicom.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_pacs_command(
    sub: Any, common: argparse.ArgumentParser, segment: argparse.ArgumentParser,
    segment_fn: Callable[[argparse.Namespace], int],
) -> None:  # fmt: skip
    """Register ``sam-med pacs`` (``segment`` copies every option of ``sam-med segment``)."""
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--url", help="DICOMweb root, e.g. https://pacs/dicom-web "
                      "(default: $SAM_MED_PACS_URL or the config file)")  # fmt: skip
    conn.add_argument("--pacs-config", type=Path, help="JSON config (url, auth, TLS, retries)")
    conn.add_argument("--pacs-cache", type=Path, help="where series are downloaded "
                      "(default: the user cache folder /pacs)")  # fmt: skip
    p = sub.add_parser("pacs", help="PACS via DICOMweb: find, get, segment, store")
    ps = p.add_subparsers(dest="pacs_command", required=True)
    f = ps.add_parser("find", parents=[common, conn], help="list matching series")
    f.add_argument("--patient-id")
    f.add_argument("--accession")
    f.add_argument("--study", help="StudyInstanceUID")
    f.add_argument("--series", help="SeriesInstanceUID")
    f.set_defaults(func=cmd_find)
    g = ps.add_parser("get", parents=[common, conn], help="retrieve a series to the cache")
    g.add_argument("--series", required=True, help="SeriesInstanceUID")
    g.add_argument("--study", help="StudyInstanceUID (found by a search when omitted)")
    g.set_defaults(func=cmd_get)
    st = ps.add_parser("store", parents=[common, conn], help="STOW-RS DICOM files")
    st.add_argument("files", nargs="+", type=Path, help="SEG/RTSTRUCT .dcm files")
    st.set_defaults(func=cmd_store)
    sg = ps.add_parser("segment", parents=[segment, conn], add_help=False,  # -h comes along
                       help="retrieve a series, segment it like a local file, store the result")
    sg.add_argument("--series", help="SeriesInstanceUID to segment (or --manifest)")
    sg.add_argument("--study", help="StudyInstanceUID (optional)")
    sg.add_argument("--with-rtstruct", action="store_true",
                    help="with --format seg (the default here): also write an RTSTRUCT")
    sg.add_argument("--store", action="store_true", help="STOW-RS the results back")
    sg.set_defaults(func=lambda args: cmd_pacs_segment(args, segment_fn))


def connect(args: argparse.Namespace) -> Any:
    """The :class:`~napari_sam_med.volume.pacs.Pacs` of the command line's settings."""
    from ..volume.pacs import Pacs, load_pacs_config

    return Pacs(load_pacs_config(args.url, args.pacs_config))


def _cache(args: argparse.Namespace) -> Path:
    from ..volume.cache import default_cache_dir

    return args.pacs_cache or default_cache_dir() / "pacs"


def cmd_find(args: argparse.Namespace) -> int:
    """``sam-med pacs find``."""
    if not any((args.patient_id, args.accession, args.study, args.series)):
        raise ValueError("pacs find: give --patient-id, --accession, --study or --series")
    hits = connect(args).find_series(args.patient_id, args.accession, args.study, args.series)
    for hit in hits:
        print(hit.summary())
    if not hits:
        print("no series found", file=sys.stderr)
    return 0 if hits else 1


def cmd_get(args: argparse.Namespace) -> int:
    """``sam-med pacs get``: prints the local folder."""
    print(connect(args).retrieve_series(args.series, _cache(args), args.study))
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    """``sam-med pacs store``."""
    for f in args.files:
        if not f.is_file():
            raise ValueError(f"pacs store: {f}: no such file")
    for uid in connect(args).store(args.files):
        print(f"stored {uid}")
    return 0


def cmd_pacs_segment(args: argparse.Namespace, segment_fn: Callable) -> int:
    """``sam-med pacs segment``: retrieve, run ``sam-med segment``, convert, store."""
    pacs = connect(args)
    args.format = args.format or "seg"
    both = args.with_rtstruct and args.format == "seg"
    with tempfile.TemporaryDirectory(prefix="sam-med-pacs-") as tmp:
        if args.manifest is not None:
            if args.series:
                raise ValueError("pacs segment: give --series or --manifest, not both")
            args.manifest = resolve_manifest(args.manifest, pacs, _cache(args), Path(tmp),
                                             args.format, args.out_dir)  # fmt: skip
            args.format = None  # per case, set by resolve_manifest
        elif args.series:
            args.image = str(pacs.retrieve_series(args.series, _cache(args), args.study))
        else:
            raise ValueError("pacs segment: give --series UID (with prompts) or --manifest")
        if not (args.output or args.out_dir):
            args.out_dir = _cache(args) / "results"
        summary = args.summary or Path(tmp) / "summary.json"
        args.summary = summary
        code = segment_fn(args)
        done = [r for r in json.loads(Path(summary).read_text()) if r["status"] != "failed"]
    outputs = [Path(r["output"]) for r in done]
    if both:
        outputs += [_also_rtstruct(Path(r["output"]), r["image"], args) for r in done]
    if args.store and outputs:
        for uid in pacs.store(outputs):
            print(f"stored {uid} on {pacs.config.server}")
    return code


def _also_rtstruct(seg_path: Path, image: str, args: argparse.Namespace) -> Path:
    from ..volume.dicom_out import seg_to_rtstruct

    out = seg_path.with_name(seg_path.name.removesuffix(".dcm") + "_rtstruct.dcm")
    return seg_to_rtstruct(seg_path, image, out, getattr(args, "overwrite", False))


def resolve_manifest(
    path: Path, pacs: Any, cache: Path, tmp: Path, default_format: str | None,
    out_dir: Path | None = None,
) -> Path:
    """A copy of the manifest where every ``"pacs": {"series_uid", "study_uid"}`` case names
    the retrieved folder instead, paths are absolute, and cases without a format or with a
    ``.dcm`` output default to ``default_format``.
    """
    from ..volume.manifest import ManifestError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        cases = data["cases"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ManifestError(f"manifest {path}: cannot be read ({type(err).__name__})") from None
    base = Path(path).resolve().parent
    for i, case in enumerate(cases if isinstance(cases, list) else []):
        if not isinstance(case, dict):
            continue
        ref = case.pop("pacs", None)
        if ref is not None:
            if not isinstance(ref, dict) or not isinstance(ref.get("series_uid"), str):
                raise ManifestError(f"manifest {path}: cases[{i}].pacs = {ref!r}; expected "
                                    '{"series_uid": "...", "study_uid": "..." (optional)}')
            folder = pacs.retrieve_series(ref["series_uid"], cache, ref.get("study_uid"))
            case["image"], case["series_uid"] = str(folder), ref["series_uid"]
            case.setdefault("name", ref["series_uid"])
        for key in ("image",) if out_dir is not None else ("image", "output"):
            if isinstance(case.get(key), str) and not Path(case[key]).is_absolute():
                case[key] = str(base / case[key])
        if default_format and str(case.get("output", ".dcm")).lower().endswith(".dcm"):
            case.setdefault("format", default_format)  # a .nii.gz output keeps its suffix rule
    out = tmp / Path(path).name
    out.write_text(json.dumps(data), encoding="utf-8")
    return out
