"""napari finds the plugin through npe2, from the editable install and from a built wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO

npe2 = pytest.importorskip("npe2")

CONTRIBUTIONS = {
    "readers": 1,
    "writers": 2,  # labels with geometry; DICOM SEG
    "sample_data": 2,
    "widgets": 2,  # SAM-Med; SAM-Med PACS
}


def _check_manifest(mf) -> None:
    assert mf.name == "napari-sam-med"
    for kind, n in CONTRIBUTIONS.items():
        assert len(getattr(mf.contributions, kind)) == n, kind
    assert [w.display_name for w in mf.contributions.widgets] == ["SAM-Med", "SAM-Med PACS"]
    assert {s.key for s in mf.contributions.sample_data} == {"ct_phantom", "mr_phantom"}


def test_installed_package_is_discovered_by_npe2():
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager()
    pm.discover()
    assert "napari-sam-med" in {m.name for m in pm.iter_manifests()}  # via the entry point
    _check_manifest(pm.get_manifest("napari-sam-med"))
    mf = PluginManifest.from_distribution("napari-sam-med")
    _check_manifest(mf)
    mf.validate_imports()  # every python_name resolves
    # the packaged manifest is the top-level source of truth
    import napari_sam_med.plugin as plugin_pkg

    packaged = (REPO / "napari_sam_med" / "plugin" / "napari.yaml").read_text()
    assert packaged == (REPO / "napari.yaml").read_text()
    assert plugin_pkg.__file__ is not None


def test_reader_accepts_medical_files_only(tmp_path):
    from napari_sam_med.plugin._reader import get_reader

    assert get_reader(str(REPO / "sample_data" / "ct_phantom.nii.gz")) is not None
    assert get_reader(str(tmp_path / "photo.png")) is None
    assert get_reader(str(tmp_path)) is None  # an empty folder is no DICOM series
    (tmp_path / "a.dcm").write_bytes(b"")
    assert get_reader(str(tmp_path)) is not None


@pytest.mark.slow
def test_built_wheel_ships_and_serves_the_manifest(tmp_path):
    """Build a wheel from a copy of the sources, install it apart, and discover it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "napari.yaml", "README.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "napari_sam_med",
        src / "napari_sam_med",
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(src)],
        check=True,
        timeout=600,
    )
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("napari_sam_med/plugin/napari.yaml") == (REPO / "napari.yaml").read_bytes()
        (ep,) = [n for n in zf.namelist() if n.endswith("entry_points.txt")]
        assert "napari-sam-med = napari_sam_med.plugin:napari.yaml" in zf.read(ep).decode()
    target = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        timeout=600,
    )
    probe = (
        "import importlib.util, pathlib, npe2\n"
        "spec = importlib.util.find_spec('napari_sam_med.plugin')\n"
        "loc = pathlib.Path(list(spec.submodule_search_locations)[0])\n"
        "mf = npe2.PluginManifest.from_distribution('napari-sam-med')\n"
        "print(loc, (loc / 'napari.yaml').is_symlink(), mf.name, len(mf.contributions.readers))\n"
    )
    # -S: no site processing, so the editable install's import hook is not active; the
    # environment's packages (npe2 and its dependencies) come after the wheel's on the path.
    site_dirs = [p for p in sys.path if p.endswith("site-packages")]
    out = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        env={"PYTHONPATH": os.pathsep.join([str(target), *site_dirs]), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.split()
    assert out[0].startswith(str(target)), out  # the wheel's copy, not the editable source
    assert out[1:] == ["False", "napari-sam-med", "1"]


def test_shortcuts_are_documented():
    pytest.importorskip("qtpy")
    from napari_sam_med.plugin._ui import SHORTCUTS

    doc = (REPO / "docs" / "plugin.md").read_text()
    for key, what in SHORTCUTS:
        assert f"| {key} | {what} |" in doc, key


def test_widget_presets_match_the_library():
    pytest.importorskip("qtpy")
    from napari_sam_med.plugin._widget import PRESETS
    from napari_sam_med.preprocessing import PRESETS as LIBRARY

    assert sorted(PRESETS) == sorted(["auto", *LIBRARY])


def test_opening_the_widget_module_does_not_import_torch():
    probe = (
        "import sys, napari_sam_med.plugin._widget, napari_sam_med.plugin._reader\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip() == "False"


def test_reader_opens_a_dicom_folder_with_its_geometry(shared_data):
    from napari_sam_med.plugin._reader import get_reader
    from napari_sam_med.volume.io import read_volume

    folder = shared_data / "ibsi_sts_dicom" / "STS_001" / "CT" / "image"
    reader = get_reader(str(folder))
    assert reader is not None
    ((data, kwargs, kind),) = reader(str(folder))
    vol = read_volume(folder)
    assert kind == "image" and data.shape == vol.array.shape
    assert tuple(kwargs["scale"]) == tuple(vol.spacing[::-1])
    assert tuple(kwargs["translate"]) == tuple(vol.origin[::-1])
    assert kwargs["metadata"]["sam_med_geometry"]["direction"] == list(vol.direction)


@pytest.mark.parametrize(
    ("key", "preset"), [("ct_phantom", "ct_soft_tissue"), ("mr_phantom", "mr")]
)
def test_sample_data_carries_geometry_and_preset(key, preset, monkeypatch):
    import json

    from napari_sam_med.plugin import _sample_data

    monkeypatch.setenv("NAPARI_SAM_MED_SAMPLE_DATA", str(REPO / "sample_data"))
    ((data, kwargs, kind),) = getattr(_sample_data, key)()
    info = json.loads((REPO / "sample_data" / "sample_data.json").read_text())["volumes"][key]
    assert kind == "image" and data.shape == tuple(info["size_xyz"][::-1])
    assert kwargs["metadata"]["sam_med_preset"] == preset
    assert tuple(kwargs["scale"]) == pytest.approx(info["spacing_xyz_mm"][::-1])
    assert tuple(kwargs["translate"]) == pytest.approx(info["origin_lps_mm"][::-1])
