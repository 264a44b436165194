"""The plugin's DICOM SEG reader/writer, refining a SEG in a session, and the PACS panel
against a real Orthanc."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom", reason="the dicom extra (highdicom) is not installed")
pytest.importorskip("dicomweb_client", reason="the dicom extra (dicomweb-client) is not installed")

from dicom_fakes import ct_phantom, write_ct_series  # noqa: E402

from napari_sam_med.volume.dicom_seg import SegmentInfo, write_seg  # noqa: E402
from napari_sam_med.volume.dicom_seg_read import read_seg  # noqa: E402
from napari_sam_med.volume.io import read_volume  # noqa: E402

SHAPE = (8, 48, 40)
SERIES = "1.2.826.0.1.3680043.8.498.11.1"


def _series_and_seg(tmp_path: Path):
    arr = ct_phantom(SHAPE)
    write_ct_series(tmp_path / "ct", arr)
    vol = read_volume(tmp_path / "ct")
    labels = np.zeros(SHAPE, np.uint8)
    labels[arr > 150] = 2
    seg = write_seg(labels, vol, tmp_path / "seg.dcm", [SegmentInfo(2, "lesion", (0, 255, 0))])
    return vol, labels, seg


def test_seg_opens_as_labels_and_saves_as_seg(make_napari_viewer, tmp_path: Path) -> None:
    viewer = make_napari_viewer()
    vol, labels, seg = _series_and_seg(tmp_path)
    viewer.open(str(seg), plugin="napari-sam-med")
    layer = viewer.layers["seg.dcm"]
    np.testing.assert_array_equal(layer.data, labels)
    assert layer.metadata["sam_med_objects"][2]["name"] == "lesion"
    np.testing.assert_allclose(layer.scale, vol.spacing[::-1])
    layer.save(str(tmp_path / "again.dcm"), plugin="napari-sam-med")
    back = read_seg(tmp_path / "again.dcm", vol)
    np.testing.assert_array_equal(back.labels, labels)
    assert back.names == {2: "lesion"} and back.colors[2] == (0, 255, 0)
    from napari_sam_med.plugin._dicom import write_seg_layer

    plain = viewer.add_labels(labels, name="plain")  # no DICOM source behind it
    with pytest.raises(ValueError, match="not drawn on a DICOM series.*save them as .nii.gz"):
        write_seg_layer(str(tmp_path / "plain.dcm"), plain.data, {"metadata": plain.metadata})
    assert not (tmp_path / "plain.dcm").exists()


def test_refine_seg_and_send_it_to_the_pacs(open_sam, orthanc, qtbot, tmp_path: Path,
                                           monkeypatch) -> None:  # fmt: skip
    import requests
    from orthanc_server import PASSWORD, USER

    from napari_sam_med.plugin._layers import geometry_kwargs
    from napari_sam_med.plugin._pacs_panel import PacsPanel
    from napari_sam_med.volume.pacs import Pacs, PacsConfig

    vol, labels, seg = _series_and_seg(tmp_path)
    monkeypatch.setenv("SAM_MED_PACS_URL", orthanc.dicomweb)
    monkeypatch.setenv("SAM_MED_PACS_USER", USER)
    monkeypatch.setenv("SAM_MED_PACS_PASSWORD", PASSWORD)
    Pacs(PacsConfig(orthanc.dicomweb, username=USER, password=PASSWORD)).store(
        sorted((tmp_path / "ct").glob("*.dcm")))  # fmt: skip

    # open the series from the PACS through the panel
    viewer, _ = open_sam(np.zeros((2, 8, 8), np.int16), name="placeholder")
    panel = PacsPanel(viewer)
    panel.patient_edit.setText("SAMMED001")
    panel.find_btn.click()
    qtbot.waitUntil(lambda: panel.results.count() == 1, timeout=60_000)
    panel.results.setCurrentRow(0)
    assert panel.series_edit.text() == SERIES
    panel.open_btn.click()
    qtbot.waitUntil(lambda: any(ly.name == SERIES for ly in viewer.layers), timeout=60_000)
    image = viewer.layers[SERIES]
    np.testing.assert_array_equal(image.data, vol.array)
    assert image.metadata["series_instance_uid"] == SERIES

    # a session on that image takes the SEG in as objects to refine
    viewer2, w = open_sam(vol.array, **geometry_kwargs(vol))
    viewer2.open(str(seg), plugin="napari-sam-med")
    viewer2.layers.selection.active = viewer2.layers["seg.dcm"]
    assert w.objects.import_labels_layer() == [2]
    assert w.session.obj(2).name == "lesion"
    np.testing.assert_array_equal(w.session.labels, labels)
    w.files.undo()
    assert not w.session.labels.any()
    w.files.redo()

    # send the committed objects back as SEG
    panel2 = PacsPanel(viewer2)
    panel2.send_btn.click()
    qtbot.waitUntil(lambda: panel2.status.text().startswith(("Stored SEG", "Sending SEG failed")),
                    timeout=60_000)  # fmt: skip
    assert panel2.status.text().startswith("Stored SEG"), panel2.status.text()
    uid = panel2.status.text().split()[-1]
    found = requests.get(f"{orthanc.root}/tools/find", auth=(USER, PASSWORD), timeout=10)
    assert found.status_code in (200, 405)
    got = requests.post(f"{orthanc.root}/tools/lookup", data=uid, auth=(USER, PASSWORD),
                        timeout=10).json()  # fmt: skip
    assert got and got[0]["Type"] == "Instance"
