"""A small napari panel: open a series from a configured PACS, send labels back as DICOM SEG.

The PACS comes from the same configuration as ``sam-med pacs`` (``SAM_MED_PACS_URL`` /
``SAM_MED_PACS_CONFIG``, credentials from the environment or the config file, never shown);
the URL field may override the address. Network work runs in thread workers; a failure is a
message in the panel, never a crash.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QFormLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from . import _workers


class PacsPanel(QWidget):
    """Find / open a series on the PACS; send the committed objects back as one SEG.

    Child widgets (``url_edit``, ``patient_edit``, ``series_edit``, ``find_btn``,
    ``results``, ``open_btn``, ``send_btn``, ``status``) are attributes, for tests.
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.url_edit = QLineEdit()
        self.url_edit.setPlaceholderText("DICOMweb URL (default: $SAM_MED_PACS_URL / config)")
        self.patient_edit = QLineEdit()
        self.series_edit = QLineEdit()
        self.find_btn = QPushButton("Find series")
        self.results = QListWidget()
        self.open_btn = QPushButton("Open series")
        self.send_btn = QPushButton("Send committed objects as SEG")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("PACS", self.url_edit)
        form.addRow("Patient ID", self.patient_edit)
        form.addRow("Series UID", self.series_edit)
        root = QVBoxLayout(self)
        root.addLayout(form)
        for w in (self.find_btn, self.results, self.open_btn, self.send_btn, self.status):
            root.addWidget(w)
        self.find_btn.clicked.connect(lambda: self.find())
        self.open_btn.clicked.connect(lambda: self.open_series())
        self.send_btn.clicked.connect(lambda: self.send())
        self.results.currentRowChanged.connect(self._pick)
        self._hits: list[Any] = []
        self.worker: Any = None

    def pacs(self) -> Any:
        """A :class:`~napari_sam_med.volume.pacs.Pacs` from the configuration."""
        from ..volume.pacs import Pacs, load_pacs_config

        return Pacs(load_pacs_config(self.url_edit.text().strip() or None))

    def _say(self, text: str) -> None:
        self.status.setText(text)

    def _run(self, action: str, fn: Any, on_done: Any) -> Any:
        self._say(f"{action}...")
        self.worker = _workers.start(
            action, fn, on_done=on_done, on_fail=lambda f: self._say(f.message())
        )
        return self.worker

    def find(self) -> Any:
        """Search by patient ID and/or series UID; results go to the list."""
        patient = self.patient_edit.text().strip() or None
        series = self.series_edit.text().strip() or None

        def done(hits: list[Any]) -> None:
            self._hits = hits
            self.results.clear()
            self.results.addItems([h.summary() for h in hits])
            self._say(f"{len(hits)} series found")

        return self._run(
            "Finding series", lambda: self.pacs().find_series(patient, None, None, series), done
        )

    def _pick(self, row: int) -> None:
        if 0 <= row < len(self._hits):
            self.series_edit.setText(self._hits[row].series_uid)

    def open_series(self) -> Any:
        """Retrieve the series (to the user cache) and open it with its geometry."""
        from ..volume.cache import default_cache_dir
        from ._reader import read_layers

        uid = self.series_edit.text().strip()
        if not uid:
            self._say("Enter or pick a series UID first.")
            return None

        def fetch() -> list[Any]:
            folder = self.pacs().retrieve_series(uid, default_cache_dir() / "pacs")
            return read_layers(str(folder))

        def done(layers: list[Any]) -> None:
            for data, kwargs, kind in layers:
                getattr(self.viewer, f"add_{kind}")(data, **kwargs)
            self._say(f"Opened series {uid}")

        return self._run(f"Opening series {uid}", fetch, done)

    def _labels_layer(self) -> Any:
        names = [ly.name for ly in self.viewer.layers]
        if "SAM-Med labels" in names:
            return self.viewer.layers["SAM-Med labels"]
        active = self.viewer.layers.selection.active
        return active if hasattr(active, "selected_label") else None

    def send(self) -> Any:
        """Write the committed labels (the SAM-Med labels layer, else the selected Labels
        layer) as a DICOM SEG and store it on the PACS."""
        import numpy as np

        from ..volume.dicom_seg import write_seg
        from ._dicom import segments_of, source_volume

        layer = self._labels_layer()
        if layer is None:
            self._say("No labels to send: commit objects in SAM-Med or select a Labels layer.")
            return None
        meta, data = dict(layer.metadata), np.asarray(layer.data).copy()

        def stow() -> list[str]:
            volume = source_volume(meta)
            labels = data.reshape(volume.array.shape)
            with tempfile.TemporaryDirectory(prefix="sam-med-seg-") as tmp:
                path = write_seg(labels, volume, Path(tmp) / "seg.dcm", segments_of(labels, meta))
                return self.pacs().store([path])

        return self._run("Sending SEG", stow, lambda uids: self._say(f"Stored SEG {uids[0]}"))
