"""The data engine's sub-commands of ``sam-med``, one module each: ``auto`` (automatic masks),
``evaluate`` (checkpoints vs simulated clicks), ``export`` (a training set from pairs or
sessions) and ``replay`` (a session's prompts re-run with another model).

See ``docs/data_engine.md``.
"""

from __future__ import annotations

import argparse
from typing import Any

from . import auto, evaluate, export, replay


def add_auto(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``auto`` (with ``parents``: model, volume and output options)."""
    auto.add_command(sub, parents)


def add_commands(sub: Any, common: argparse.ArgumentParser, model: argparse.ArgumentParser,
                 out: argparse.ArgumentParser) -> None:  # fmt: skip
    """Add ``evaluate``, ``export`` and ``replay`` to the ``sam-med`` sub-parsers.

    Args:
        sub: the sub-parsers action of ``sam-med``.
        common: parent parser with ``-v`` / ``--debug``.
        model: parent parser with ``--model``, ``--device``, ``--preset``, ``--modality``...
        out: parent parser with ``--overwrite``.
    """
    evaluate.add_command(sub, [model, out])
    export.add_command(sub, [common, out])
    replay.add_command(sub, [model, out])
