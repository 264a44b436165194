"""The widget with LiteMedSAM (the published weights) on the CT phantom: real masks.

Embeddings go to one cache folder shared by this module, so that each slice is embedded
once (about 0.7 s per slice on 2 CPU cores).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import SAMPLE_DATA
from tests.plugin.conftest import add_box, add_point, press, wait_idle

pytestmark = [pytest.mark.gui, pytest.mark.slow]

Z = 22
BOX = (24, 45, 47, 64)  # lesion 1 on slice 22: box3d [24, 45, 18, 47, 64, 26]


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("sam_med_cache")


@pytest.fixture(autouse=True)
def _private_cache(module_cache, monkeypatch):
    """Overrides the per-test cache of conftest: one embedding cache for the module."""
    monkeypatch.setenv("NAPARI_SAM_MED_CACHE", str(module_cache))
    monkeypatch.setenv("NAPARI_SAM_MED_SAMPLE_DATA", str(SAMPLE_DATA))


@pytest.fixture(scope="module")
def truth():
    from napari_sam_med.volume.io import read_volume

    return read_volume(SAMPLE_DATA / "ct_phantom_label.nii.gz").array == 1


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _open(open_sam, show=False):
    from napari_sam_med.build import CheckpointError, locate_lite_medsam_weights

    try:
        locate_lite_medsam_weights()
    except CheckpointError as exc:
        pytest.skip(f"LiteMedSAM weights unavailable: {exc}")
    return open_sam("ct_phantom", model="lite_medsam", show=show)


def test_box_3d_and_a_local_correction(open_sam, qtbot, truth):
    viewer, w = _open(open_sam)
    w.go_to(Z)
    add_box(w, Z, *BOX)
    wait_idle(qtbot, w)
    assert _dice(w.preview_layer.data[Z] > 0, truth[Z]) > 0.85

    press(viewer, "G")  # Segment 3D
    wait_idle(qtbot, w)
    obj = w.session.obj()
    span = obj.seg.z_extent
    assert span is not None and span[1] - span[0] + 1 >= 5, span
    assert _dice(w.preview_layer.data > 0, truth) > 0.75
    flagged = obj.seg.flagged_slices()
    assert w.volume.view.flagged_list.count() == len(flagged)
    if flagged:
        press(viewer, "J")
        assert w.current_z() in flagged

    # a negative click near the mask's edge on a slice above the key slice
    zc = span[1] - 1
    before = {z: p.mask.copy() for z, p in obj.seg.slices.items()}
    ys, xs = np.nonzero(before[zc])
    add_point(w, zc, float(xs.max() - 1), float(ys[np.argmax(xs)]), positive=False)
    wait_idle(qtbot, w)
    after = w.session.obj().seg.slices
    changed = {
        z
        for z in set(before) | set(after)
        if z not in before or z not in after or not np.array_equal(before[z], after[z].mask)
    }
    assert zc in changed
    assert all(z > Z for z in changed), changed  # the key slice and below are untouched
    assert max(changed) - min(changed) <= 4, changed  # only the nearby slices
    assert [e["action"] for e in w.session.events[-2:]] == ["prompt", "correct"]

    w.files.undo()  # the re-propagation
    w.files.undo()  # the click
    restored = w.session.obj().seg.slices
    assert set(restored) == set(before)
    assert all(np.array_equal(restored[z].mask, m) for z, m in before.items())
    w.files.redo()
    w.files.redo()
    assert all(np.array_equal(w.session.obj().seg.slices[z].mask, after[z].mask) for z in after)

    w.objects.commit()
    assert _dice(w.session.labels == 1, truth) > 0.7


def test_screenshot_shows_the_mask_colour_on_the_tumour(open_sam, qtbot, tmp_path, truth):
    from PIL import Image

    viewer, w = _open(open_sam, show=True)
    w.go_to(Z)
    add_box(w, Z, *BOX)
    wait_idle(qtbot, w)
    w.volume.view.outline_check.setChecked(False)  # the filled preview (outline by default)
    w.shapes_layer.visible = False  # only the image and the mask overlay
    w.points_layer.visible = False
    ys, xs = np.nonzero(truth[Z])
    centre = w.image_layer.data_to_world([Z, ys.mean(), xs.mean()])
    viewer.camera.center = tuple(centre[-2:])
    viewer.camera.zoom = 6.0

    def shot(name: str) -> np.ndarray:
        img = np.asarray(viewer.screenshot(canvas_only=True, flash=False))
        Image.fromarray(img).save(tmp_path / name)
        return img[..., :3].astype(int)

    with_mask = shot("overlay.png")
    w.preview_layer.visible = False
    without = shot("image_only.png")
    assert (tmp_path / "overlay.png").stat().st_size > 0
    h, wd = with_mask.shape[:2]
    centre_px = with_mask[h // 2 - 3 : h // 2 + 4, wd // 2 - 3 : wd // 2 + 4].reshape(-1, 3)
    r, g, b = np.median(centre_px, axis=0)
    colour = np.array(w.session.obj().color[:3]) * 255  # orange: strong red, some green
    assert r - b > 80 and g - b > 40, (r, g, b, colour)
    plain = np.median(
        without[h // 2 - 3 : h // 2 + 4, wd // 2 - 3 : wd // 2 + 4].reshape(-1, 3), axis=0
    )
    assert abs(plain[0] - plain[2]) < 15, plain  # grey image without the overlay
    corner = np.median(with_mask[:10, :10].reshape(-1, 3), axis=0)
    assert abs(corner[0] - corner[2]) < 15, corner  # no mask colour away from the tumour
