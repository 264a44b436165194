"""Every code block of README.md is checked here, so the README cannot drift from the code.

* ``python`` blocks run as written (in a temporary folder with ``sample_data/`` beside it);
* ``bash`` blocks: each command runs when everything it names exists (the sample-data demo),
  else it is checked as far as it can be without data or GPUs: ``sam-med`` lines are parsed by
  the real argument parser (placeholders such as ``IMAGE``/``X0`` replaced), ``training.train``
  lines by the real config loader (config file and overrides), ``pip install`` extras against
  ``pyproject.toml``, scripts must exist;
* ``json`` blocks must parse, and the manifest example must pass the manifest parser.

Blocks without a language (error messages, folder trees) are not code.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest
import tomllib

from napari_sam_med.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\w*)\n(?P<body>.*?)^(?P=indent)```", re.M | re.S)
NOT_RUN = {"napari"}  # opens the GUI; the plugin has its own tests (tests/plugin)


def blocks(lang: str) -> list[tuple[int, str]]:
    """``(line number, dedented body)`` of README blocks fenced with ``lang``."""
    text = README.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        if m.group("lang") == lang:
            n = len(m.group("indent"))
            body = "\n".join(ln[n:] for ln in m.group("body").splitlines())
            out.append((text[: m.start()].count("\n") + 1, body))
    return out


def commands(body: str) -> list[list[str]]:
    """Shell commands of a bash block: continuation lines joined, comments dropped, ``&&``
    chains split."""
    cmds = []
    for line in body.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        current: list[str] = []
        for tok in tokens + ["&&"]:
            if tok == "&&":
                if current:
                    cmds.append(current)
                current = []
            else:
                current.append(tok)
    return cmds


def _placeholders(args: list[str]) -> list[str]:
    """Synopsis tokens made concrete: ``[--qc DIR]`` -> ``--qc DIR``, ``...`` dropped (after
    ``--box3d``/``--box``: that many numbers), upper-case placeholders (``X0``, ``Z``) -> ``1``."""
    out: list[str] = []
    for tok in args:
        tok = tok.strip("[]")
        if tok == "..." and out and out[-1] in NARGS:  # `--box3d ...`: that many numbers
            out += ["1"] * NARGS[out[-1]]
            continue
        if tok in ("", "...") or (tok.endswith("...") and not tok.rstrip(".")):
            continue
        tok = tok.rstrip(".") if tok.endswith("...") else tok  # `1.2.840...` -> `1.2.840`
        out.append("1" if re.fullmatch(r"[XYZN][0-9]?", tok) else tok)
    return out


NARGS = {"--box3d": 6, "--box": 4}


def _check_sam_med(args: list[str]) -> None:
    try:
        build_parser().parse_args(_placeholders(args))
    except SystemExit as exc:
        pytest.fail(f"README: `sam-med {' '.join(args)}` is not accepted by the parser ({exc})")


def _check_train(args: list[str]) -> None:
    from training.config import load_config, normalise_flags

    args = list(args)
    i = args.index("--config")
    config = ROOT / args[i + 1]
    assert config.is_file(), f"README names a missing config {config}"
    del args[i : i + 2]
    load_config(config, normalise_flags([a for a in args if not a.endswith("...")]))


def _check_command(cmd: list[str]) -> str:
    """Check one README command; returns what was done (for the test's own assertions)."""
    prog, args = cmd[0], cmd[1:]
    if prog in NOT_RUN:
        return "gui"
    if prog == "export":  # environment variables for the next commands
        assert all("=" in a for a in args), f"README: odd export line {cmd}"
        return "env"
    if prog == "bash":
        assert (ROOT / args[0]).is_file(), f"README runs a missing script {args[0]}"
        return "script"
    if prog == "pip":
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "optional-dependencies"
        ]
        for spec in re.findall(r"\[([\w,]+)\]", " ".join(args)):
            assert set(spec.split(",")) <= set(extras), f"README: unknown extra in {args}"
        return "pip"
    if prog == "torchrun":
        k = args.index("-m")
        prog, args = args[k + 1], args[k + 2 :]
    elif prog == "python" and args[:1] == ["-m"]:
        prog, args = args[1], args[2:]
    if prog == "training.train":
        _check_train(args)
        return "train"
    if prog.endswith("sam-med") or prog == "napari_sam_med.cli":
        _check_sam_med(args)
        return "sam-med"
    pytest.fail(f"README command {cmd} is not covered by tests/test_readme.py")


def test_readme_has_the_blocks_this_file_checks() -> None:
    assert len(blocks("python")) >= 1 and len(blocks("bash")) >= 5 and len(blocks("json")) >= 1


@pytest.mark.parametrize("line,body", blocks("bash"), ids=lambda v: str(v)[:12])
def test_bash_block(line: int, body: str) -> None:
    done = [_check_command(cmd) for cmd in commands(body)]
    assert done, f"README line {line}: empty bash block"


def test_json_blocks_parse_and_the_manifest_example_is_valid(tmp_path: Path) -> None:
    from napari_sam_med.volume.manifest import parse_manifest

    manifests = 0
    for line, body in blocks("json"):
        data = json.loads(body)
        if isinstance(data, dict) and "cases" in data:
            cases = parse_manifest(data, f"README.md line {line}", tmp_path, tmp_path / "out")
            assert len(cases) == len(data["cases"])
            manifests += 1
    assert manifests >= 1


@pytest.mark.slow
def test_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _need_lite_medsam()
    os.symlink(ROOT / "sample_data", tmp_path / "sample_data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NAPARI_SAM_MED_CACHE", str(tmp_path / "cache"))
    for line, body in blocks("python"):
        exec(compile(body, f"README.md:{line}", "exec"), {"__name__": "readme"})  # noqa: S102
    assert (tmp_path / "lesion.nii.gz").is_file()


@pytest.mark.slow
def test_the_sample_data_demo_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The set-up section's demo command, run as written (minus the install it chains to)."""
    _need_lite_medsam()
    os.symlink(ROOT / "sample_data", tmp_path / "sample_data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NAPARI_SAM_MED_CACHE", str(tmp_path / "cache"))
    demo = [c for _line, body in blocks("bash") for c in commands(body)
            if c[0].endswith("bin/sam-med") and "sample_data/ct_phantom.nii.gz" in c]  # fmt: skip
    assert demo, "README lost its sample-data demo command"
    assert main([*demo[0][1:], "--no-progress"]) == 0
    assert (tmp_path / "demo_out" / "ct_phantom_seg.nii.gz").is_file()
    assert list((tmp_path / "demo_out" / "qc").glob("*.png"))


def _need_lite_medsam() -> None:
    from napari_sam_med.build import CheckpointError, locate_lite_medsam_weights

    try:
        locate_lite_medsam_weights(verify=False)
    except CheckpointError as exc:  # .ci/install installs them; a bare checkout may not
        pytest.skip(f"LiteMedSAM weights not installed: {str(exc).splitlines()[0]}")
