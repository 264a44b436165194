"""The run folder of a 3D benchmark: a header, per-case records as they finish, resume.

Files: ``run.json`` (what was asked: data, split, models, settings) and ``cases.jsonl`` (one
JSON record per model, case and start, appended and flushed as each finishes, so a killed run
loses at most the record in progress). The reports (``summary.csv``, ``summary.json``,
``cases.csv``, ``dice_vs_clicks_*.png``) are written from the records.

An existing run is refused unless ``overwrite`` (start again) or ``resume`` (continue: the
models and settings must match; failed records are tried again).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..outputs import write_bytes_atomic, write_json_atomic

logger = logging.getLogger(__name__)

HEADER = "run.json"
RECORDS = "cases.jsonl"
REPORTS = ("summary.csv", "summary.json", "cases.csv")
PLOT_GLOB = "dice_vs_clicks_*.png"
_MUST_MATCH = ("models", "settings", "split", "group")


def _ours(out: Path) -> list[Path]:
    files = [out / HEADER, out / RECORDS, *(out / r for r in REPORTS)]
    return [f for f in files if f.exists()] + sorted(out.glob(PLOT_GLOB))


def _covers(new: Any, old: Any, where: str) -> bool:
    """Whether ``new`` equals ``old``, except that dicts in ``new`` may hold keys ``old`` does
    not (a setting added to the code since the run began; logged)."""
    if isinstance(new, dict) and isinstance(old, dict):
        added = sorted(set(new) - set(old))
        if added:
            logger.warning("resuming: %s has new entries since the run began: %s", where, added)
        return set(old) <= set(new) and all(_covers(new[k], old[k], k) for k in old)
    return new == old


def record_key(rec: dict[str, Any]) -> tuple[str, str, str]:
    """``(model, case, start)`` of a record."""
    return str(rec["model"]), str(rec["case"]), str(rec["start"])


class RunFolder:
    """Opens ``out`` for a run described by ``header`` (JSON-friendly).

    Args:
        out: the output folder (created).
        header: the run's description; on resume its ``models``, ``settings``, ``split`` and
            ``group`` must equal the stored ones.
        resume: continue a run found in ``out``.
        overwrite: delete this tool's files in ``out`` and start again.

    Raises:
        ValueError: an existing run without ``resume``/``overwrite`` (naming the file), both
            flags at once, or a resume whose header differs (naming the entries).
    """

    def __init__(
        self, out: str | os.PathLike, header: dict[str, Any], resume: bool, overwrite: bool
    ) -> None:
        if resume and overwrite:
            raise ValueError("--resume and --overwrite exclude each other; choose one")
        self.out = Path(out)
        self.header = header
        self.records: list[dict[str, Any]] = []
        existing = _ours(self.out) if self.out.is_dir() else []
        if existing and not (resume or overwrite):
            raise ValueError(
                f"{existing[0]} exists (an earlier run in {self.out}); pass --overwrite to "
                f"replace it or --resume to continue it"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for f in existing:
                f.unlink()
        elif resume and (self.out / HEADER).exists():
            self._check_header()
            self.records = self._load_records()
        write_json_atomic(self.out / HEADER, header, overwrite=True)  # the run policy is applied

    def _check_header(self) -> None:
        path = self.out / HEADER
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read the earlier run's header ({err})") from err
        differ = [k for k in _MUST_MATCH if not _covers(self.header.get(k), old.get(k), k)]
        if differ:
            raise ValueError(
                f"{path}: cannot resume, the run differs in {', '.join(differ)} (earlier "
                f"{[old.get(k) for k in differ]}, now {[self.header.get(k) for k in differ]}); "
                f"use another --out-dir or --overwrite"
            )

    def _load_records(self) -> list[dict[str, Any]]:
        path = self.out / RECORDS
        if not path.exists():
            return []
        latest: dict[tuple[str, str, str], dict[str, Any]] = {}
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
                latest[record_key(rec)] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                if i != len(lines) - 1:
                    raise ValueError(f"{path}: line {i + 1} is not a result record") from None
                logger.warning("%s: ignoring a half-written last line", path)
        records = list(latest.values())
        # compact: drop the replaced and half-written lines before appending again
        write_bytes_atomic(
            path, "".join(json.dumps(r) + "\n" for r in records).encode(), overwrite=True
        )
        return records

    def done(self) -> set[tuple[str, str, str]]:
        """Keys of the records that finished without an error."""
        return {record_key(r) for r in self.records if not r.get("error")}

    def append(self, rec: dict[str, Any]) -> None:
        """Add a record (replacing an earlier one with its key) and write it to disk now."""
        key = record_key(rec)
        self.records = [r for r in self.records if record_key(r) != key] + [rec]
        with open(self.out / RECORDS, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
