"""Hash what a few ``sam-med`` commands write on the sample data, to show a refactor keeps
the CLI's outputs identical (run it before and after; the printed hashes must match).

    OMP_NUM_THREADS=1 python benchmarks/check_cli_outputs.py            # this checkout
    CHECK_CLI_SHOW=1 python benchmarks/check_cli_outputs.py export,evaluate   # some, verbose
    PYTHONPATH=/other/tree python benchmarks/check_cli_outputs.py       # another tree

Paths inside this checkout are hashed as ``REPO/...``, so two checkouts give the same digests.

Cheap on purpose: LiteMedSAM on the CPU, a few slices per command. What is hashed is the
content (voxel arrays with their geometry, CSV/JSON values without timings, printed lines
without paths and seconds), not file bytes: gzip headers and timings change from run to run.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent / "sample_data"
CT, CT_LABEL = SAMPLE / "ct_phantom.nii.gz", SAMPLE / "ct_phantom_label.nii.gz"
MR = SAMPLE / "mr_phantom.nii.gz"
COMMON = ["--device", "cpu", "--no-progress"]
TIMING = re.compile(r"(seconds|_s$|time|_ms$|device)", re.I)


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else repr(part).encode())
    return h.hexdigest()[:16]


def hash_volume(path: Path) -> str:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    geom = (img.GetSpacing(), img.GetOrigin(), img.GetDirection(), str(arr.dtype), arr.shape)
    rounded = [np.round(np.asarray(g, float), 6).tolist() for g in geom[:3]]
    return _digest(np.ascontiguousarray(arr).tobytes(), rounded, geom[3:])


def _clean(value: object) -> object:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in sorted(value.items()) if not TIMING.search(str(k))}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str):  # paths of this checkout and of the temporary folder
        value = value.replace(str(HERE.parent), "REPO")
        return re.sub(r"/tmp/[^\s,'\"]*/", "TMP/", value)
    return value


def hash_csv(path: Path) -> str:
    with open(path, newline="") as f:
        rows = [_clean(dict(r)) for r in csv.DictReader(f)]
    return _digest(rows)


def hash_json(path: Path) -> str:
    return _digest(_clean(json.loads(path.read_text())))


def hash_file(path: Path) -> str:
    if path.name.endswith((".nii.gz", ".nii", ".nrrd", ".mha")):
        return hash_volume(path)
    if path.suffix == ".csv":
        return hash_csv(path)
    if path.suffix == ".json":
        return hash_json(path)
    if path.suffix == ".png":
        from PIL import Image

        return _digest(np.asarray(Image.open(path)).tobytes())
    return _digest(path.read_bytes())


def run(argv: list[str], tmp: Path) -> tuple[int, str]:
    """Run ``sam-med argv`` in-process; returns the exit code and cleaned stdout."""
    from napari_sam_med.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    text = out.getvalue().replace(str(tmp), "TMP").replace(str(HERE.parent), "REPO")
    text = re.sub(r"\d+(\.\d+)? s\b", "N s", text)  # timings
    text = re.sub(r"device \S+", "device D", text)
    return code, _drop_seconds_column(text)


def _drop_seconds_column(text: str) -> str:
    """Tables with timing columns (``seconds``, ``*_s``: ``segment``'s summary, ``evaluate``'s
    table): those columns, and the padding that depends on their widths, go."""
    lines, cols, width = [], [], 0
    for line in text.splitlines():
        cells = line.replace("volume mL", "volume_mL").split()
        timing = [i for i, c in enumerate(cells) if c == "seconds" or c.endswith("_s")]
        if timing:
            cols, width = timing, len(cells)
        if cols and len(cells) == width:
            cells = ["N" if i in cols else c for i, c in enumerate(cells)]
            line = " ".join(cells)
        lines.append(line)
    return "\n".join(lines)


def help_texts() -> dict[str, str]:
    """``sam-med CMD --help`` of every sub-command (and the ``pacs`` ones): same options."""
    from napari_sam_med.cli import build_parser

    texts = {}
    commands = ["segment", "precompute", "auto", "info", "evaluate", "export", "replay",
                "export-onnx", "pacs", "pacs find", "pacs get", "pacs store", "pacs segment"]
    for cmd in [""] + commands:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            build_parser().parse_args([*cmd.split(), "--help"])
        texts[cmd or "sam-med"] = out.getvalue()
    return texts


def commands(tmp: Path) -> dict[str, list[str]]:
    session = tmp / "session"
    return {
        "segment_box3d": ["segment", str(CT), "--box3d", "24", "45", "20", "47", "64", "22",
                          "-o", str(tmp / "seg" / "ct.nii.gz"), "--no-disk-cache",
                          "--qc", str(tmp / "seg" / "qc"), *COMMON],
        "segment_box_slice": ["segment", str(MR), "--box", "72", "39", "94", "59", "--slice",
                              "18", "--out-dir", str(tmp / "seg2"), "--no-disk-cache",
                              "--modality", "MR", *COMMON],
        "auto": ["auto", str(CT), "--slices", "21", "22", "--points-per-side", "4",
                 "-o", str(tmp / "auto" / "ct_auto.nii.gz"), *COMMON],
        "export": ["export", "--out-dir", str(tmp / "export"), "--pair", str(CT), str(CT_LABEL),
                   "--label-name", "1=liver lesion", "--label-name", "2=spleen lesion",
                   "--modality", "CT"],
        "evaluate": ["evaluate", str(tmp / "export"), "--out-dir", str(tmp / "eval"),
                     "--max-clicks", "1", *COMMON],
        "precompute": ["precompute", str(CT), "--slices", "20", "20",
                       "--cache-dir", str(session / "cache"), *COMMON],
    }


def main() -> int:
    results: dict[str, str] = {}
    for cmd, text in help_texts().items():
        results[f"help {cmd}"] = _digest(text)
        print(f"help {cmd:16s} {results[f'help {cmd}']}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        only = sys.argv[1].split(",") if len(sys.argv) > 1 else None  # e.g. export,evaluate
        for name, argv in commands(tmp).items():
            if only and name not in only:
                continue
            before = set(tmp.rglob("*"))
            code, text = run(argv, tmp)
            new = sorted(p for p in set(tmp.rglob("*")) - before if p.is_file())
            files = {str(p.relative_to(tmp)): hash_file(p) for p in new
                     if "cache" not in p.parts}
            results[name] = _digest(code, text, files)
            if os.environ.get("CHECK_CLI_SHOW"):
                print(text)
            print(f"{name:18s} {results[name]}  exit {code}, {len(files)} files", flush=True)
            for rel, h in files.items():
                print(f"    {rel}: {h}")
    print(f"ALL {_digest(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
