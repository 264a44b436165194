"""The wheel carries our own models' weights: build it, install it apart from the checkout,
load every packaged model from the installed copy (its checksum is checked on load)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from napari_sam_med.weights import PACKAGED

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not PACKAGED, reason="no model ships inside the package yet")
def test_wheel_carries_and_loads_the_packaged_weights(tmp_path):
    out = tmp_path / "dist"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if build.returncode != 0:
        pytest.fail(f"pip wheel failed:\n{build.stderr[-2000:]}")
    wheel = next(out.glob("napari_sam_med-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for entry in PACKAGED.values():
        assert f"napari_sam_med/model_weights/{entry.file}" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import napari_sam_med, sys; from napari_sam_med.build import build_sam; "
        "from napari_sam_med.weights import PACKAGED; "
        "assert napari_sam_med.__file__.startswith(sys.argv[1]), napari_sam_med.__file__; "
        "[build_sam(n, device='cpu') for n in PACKAGED]; print('ok')"
    )
    env = dict(os.environ, PYTHONPATH=str(site))
    run = subprocess.run(
        [sys.executable, "-c", code, str(site)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
