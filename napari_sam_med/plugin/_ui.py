"""What the SAM-Med panels share in their layout: model names, the shortcut list, and small
layout helpers (each panel builds its own view in its ``_panel_*`` module)."""

from __future__ import annotations

from qtpy.QtWidgets import QHBoxLayout, QLineEdit, QPushButton, QWidget

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


def row(*widgets: QWidget) -> QWidget:
    """The widgets side by side."""
    box = QWidget()
    lay = QHBoxLayout(box)
    lay.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        lay.addWidget(w)
    return box


def path_field(placeholder: str) -> tuple[QLineEdit, QPushButton]:
    """A file-name field and its "..." browse button."""
    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    return edit, QPushButton("...")
