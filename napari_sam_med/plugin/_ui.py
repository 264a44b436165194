"""The SAM-Med dock widget's controls (layout only; behaviour lives in ``_widget.py``).

Every control is an attribute of the widget, so tests drive it as a user would
(``widget.segment3d_btn.click()``).
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from ..config import DEFAULT_MODEL

MODELS = tuple(
    dict.fromkeys(
        (DEFAULT_MODEL, "lite_medsam", "sam_med_lite", "medsam_vit_b", "vit_b", "vit_l", "vit_h")
        + ("tiny",)
    )
)
DEVICES = ("auto", "cpu", "cuda", "mps")

# (key as napari binds it, what it does); shown in the widget's help and in docs/plugin.md.
SHORTCUTS = (
    ("click", "positive point (Points layer in add mode)"),
    ("Shift+click", "negative point (right click too)"),
    ("R", "draw a box (Shapes layer, rectangle mode)"),
    ("W", "next ambiguity candidate of the 2D mask"),
    ("Shift+W", "previous ambiguity candidate"),
    ("G", "Segment 3D: propagate the current object"),
    ("J", "jump to the next flagged slice"),
    ("Shift+J", "jump to the previous flagged slice"),
    ("N", "new object"),
    ("K", "commit (keep) the current object into the labels"),
    ("Ctrl+Z", "undo (brush strokes on the labels layer too)"),
    ("Ctrl+Shift+Z", "redo"),
    ("Escape", "cancel the running job"),
    ("Q", "propose objects on this slice (automatic masks)"),
    ("U", "accept the current proposal (it becomes a committed object)"),
    ("H", "reject the current proposal (kept in the log as a negative)"),
    ("Shift+Q", "skip to the next proposal"),
)
# The keys the widget binds on the viewer (the others are napari's own).
BOUND_KEYS = tuple(k for k, _ in SHORTCUTS if "click" not in k and k != "R")


def help_text() -> str:
    """The shortcuts as shown in the widget (one per line)."""
    return "\n".join(f"{k}: {what}" for k, what in SHORTCUTS)


def _row(*widgets: QWidget) -> QWidget:
    box = QWidget()
    lay = QHBoxLayout(box)
    lay.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        lay.addWidget(w)
    return box


def _build_data_engine(w: Any, root: QVBoxLayout) -> None:
    """Proposals (review one by one) and the training-set export."""
    box = QGroupBox("Data engine")
    lay = QVBoxLayout(box)
    w.propose_btn = QPushButton("Propose objects (Q)")
    w.propagate_proposals_check = QCheckBox("propagate proposals in 3D")
    w.proposal_label = QLabel("Proposals: none")
    w.proposal_label.setWordWrap(True)
    w.accept_btn = QPushButton("Accept (U)")
    w.reject_btn = QPushButton("Reject (H)")
    w.skip_btn = QPushButton("Skip (Shift+Q)")
    for b in (w.accept_btn, w.reject_btn, w.skip_btn):
        b.setEnabled(False)
    w.export_path = QLineEdit()
    w.export_path.setPlaceholderText("dataset folder (MSD: imagesTr, labelsTr, dataset.json)")
    w.export_browse_btn = QPushButton("...")
    w.export_overwrite_check = QCheckBox("replace this case if already exported")
    w.export_btn = QPushButton("Export training set")
    lay.addWidget(_row(w.propose_btn, w.propagate_proposals_check))
    lay.addWidget(w.proposal_label)
    lay.addWidget(_row(w.accept_btn, w.reject_btn, w.skip_btn))
    lay.addWidget(_row(w.export_path, w.export_browse_btn))
    lay.addWidget(_row(w.export_overwrite_check, w.export_btn))
    root.addWidget(box)


def build(w: Any, presets: list[str]) -> None:
    """Create the controls of widget ``w`` as attributes and lay them out."""
    root = QVBoxLayout(w)

    setup = QGroupBox("Setup")
    form = QFormLayout(setup)
    w.image_combo = QComboBox()
    w.model_combo = QComboBox()
    w.model_combo.addItems([*MODELS, "checkpoint file"])
    w.checkpoint_edit = QLineEdit()
    w.checkpoint_edit.setPlaceholderText("checkpoint (.pth/.pt) or ONNX export folder")
    w.checkpoint_browse_btn = QPushButton("...")
    w.device_combo = QComboBox()
    w.device_combo.addItems(DEVICES)
    w.preset_combo = QComboBox()
    w.preset_combo.addItems(presets)
    w.fast_check = QCheckBox("Fast mode (bfloat16 encoder)")
    w.fast_check.setToolTip(
        "Runs the image encoder in bfloat16: faster embeddings on CPUs with AVX512-BF16, "
        "masks differ slightly (see docs/speed.md). Not for ONNX exports."
    )
    w.load_btn = QPushButton("Load model")
    form.addRow("Image", w.image_combo)
    form.addRow("Model", w.model_combo)
    form.addRow("Checkpoint", _row(w.checkpoint_edit, w.checkpoint_browse_btn))
    form.addRow("Device", w.device_combo)
    form.addRow("Preset", w.preset_combo)
    form.addRow(w.fast_check)
    form.addRow(w.load_btn)
    root.addWidget(setup)

    w.restore_box = QGroupBox("Autosaved labels found")
    w.restore_label = QLabel("")
    w.restore_label.setWordWrap(True)
    w.restore_btn = QPushButton("Restore")
    w.discard_btn = QPushButton("Discard")
    lay = QVBoxLayout(w.restore_box)
    lay.addWidget(w.restore_label)
    lay.addWidget(_row(w.restore_btn, w.discard_btn))
    w.restore_box.setVisible(False)
    root.addWidget(w.restore_box)

    work = QGroupBox("Embeddings and jobs")
    lay = QVBoxLayout(work)
    w.progress = QProgressBar()
    w.progress.setRange(0, 1)
    w.progress.setValue(0)
    w.precompute_btn = QPushButton("Precompute volume")
    w.cancel_btn = QPushButton("Cancel")
    w.cancel_btn.setEnabled(False)
    w.status = QLabel("Pick an image and a model, then Load model.")
    w.status.setWordWrap(True)
    lay.addWidget(w.progress)
    lay.addWidget(_row(w.precompute_btn, w.cancel_btn))
    lay.addWidget(w.status)
    root.addWidget(work)

    seg = QGroupBox("Segment")
    lay = QVBoxLayout(seg)
    w.candidates_label = QLabel("Candidates: -")
    w.cycle_btn = QPushButton("Next candidate (W)")
    w.segment3d_btn = QPushButton("Segment 3D (G)")
    w.repropagate_check = QCheckBox("Re-propagate corrections in 3D")
    w.repropagate_check.setChecked(True)
    w.flagged_list = QListWidget()
    w.flagged_list.setMaximumHeight(80)
    w.next_flag_btn = QPushButton("Next flagged slice (J)")
    lay.addWidget(w.candidates_label)
    lay.addWidget(_row(w.cycle_btn, w.segment3d_btn))
    lay.addWidget(w.repropagate_check)
    lay.addWidget(QLabel("Flagged slices (QC):"))
    lay.addWidget(w.flagged_list)
    lay.addWidget(w.next_flag_btn)
    w.text_edit = QLineEdit()
    w.text_edit.setPlaceholderText("text prompt, e.g. tumour (models trained with text)")
    w.text_btn = QPushButton("Prompt by text")
    w.text_label = QLabel("Text prompts: load a model first.")
    w.text_label.setWordWrap(True)
    lay.addWidget(_row(w.text_edit, w.text_btn))
    lay.addWidget(w.text_label)
    root.addWidget(seg)
    _build_data_engine(w, root)

    objs = QGroupBox("Objects")
    lay = QVBoxLayout(objs)
    w.objects_table = QTableWidget(0, 6)
    w.objects_table.setHorizontalHeaderLabels(["label", "name", "colour", "mL", "slices", "state"])
    w.objects_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    w.objects_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    w.objects_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    w.new_btn = QPushButton("New object (N)")
    w.commit_btn = QPushButton("Commit (K)")
    w.delete_btn = QPushButton("Delete")
    w.import_btn = QPushButton("Refine labels layer")
    w.import_btn.setToolTip("Take the selected Labels layer (e.g. a DICOM SEG) in as objects")
    w.relabel_spin = QSpinBox()
    w.relabel_spin.setRange(1, 65535)
    w.relabel_btn = QPushButton("Relabel")
    w.name_edit = QLineEdit()
    w.name_edit.setPlaceholderText("name")
    w.rename_btn = QPushButton("Rename")
    w.color_btn = QPushButton("Colour...")
    lay.addWidget(w.objects_table)
    lay.addWidget(_row(w.new_btn, w.commit_btn, w.delete_btn, w.import_btn))
    lay.addWidget(_row(w.relabel_spin, w.relabel_btn, w.name_edit, w.rename_btn, w.color_btn))
    root.addWidget(objs)

    hist = QGroupBox("History and files")
    lay = QVBoxLayout(hist)
    w.undo_btn = QPushButton("Undo (Ctrl+Z)")
    w.redo_btn = QPushButton("Redo (Ctrl+Shift+Z)")
    w.labels_path = QLineEdit()
    w.labels_path.setPlaceholderText("labels file (.nii.gz, .nrrd, .mha)")
    w.browse_btn = QPushButton("...")
    w.save_btn = QPushButton("Save labels + session log")
    w.log_path = QLineEdit()
    w.log_path.setPlaceholderText("session log (.json) to replay")
    w.log_browse_btn = QPushButton("...")
    w.replay_btn = QPushButton("Replay log")
    w.compare_btn = QPushButton("Compare with model")
    w.compare_table = QTableWidget(0, 4)
    w.compare_table.setHorizontalHeaderLabels(["label", "name", "Dice logged/new", "voxels"])
    w.compare_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    w.compare_table.setMaximumHeight(110)
    lay.addWidget(_row(w.undo_btn, w.redo_btn))
    lay.addWidget(_row(w.labels_path, w.browse_btn))
    lay.addWidget(w.save_btn)
    lay.addWidget(_row(w.log_path, w.log_browse_btn))
    lay.addWidget(_row(w.replay_btn, w.compare_btn))
    lay.addWidget(w.compare_table)
    root.addWidget(hist)

    w.help_label = QLabel(help_text())
    w.help_label.setWordWrap(True)
    helpbox = QGroupBox("Keyboard shortcuts")
    QVBoxLayout(helpbox).addWidget(w.help_label)
    root.addWidget(helpbox)
    root.addStretch(1)
