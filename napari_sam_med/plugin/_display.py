"""The napari layers the SAM-Med panels work in, and how the session is shown on them.

* *SAM-Med labels*: the committed objects (the brush paints on it).
* *SAM-Med preview*: the current object's mask, as an outline by default so that the lesion's
  edge stays visible (the "outline" check of the 3D panel switches to a filled display).
* *SAM-Med boxes* / *SAM-Med points*: the prompts (boxes in magenta, which no object colour
  is close to; points green positive, red negative).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import _layers

BOX_COLOR = "magenta"  # (1, 0, 1): far from every colour of the object palette
OUTLINE_WIDTH = 2
REPLAY = "SAM-Med replay"


def ct_window(array: Any, modality: str | None = None, preset: str | None = None) -> Any:
    """The contrast limits ``(lo, hi)`` a CT image opens with: the window of ``preset`` (else of
    the preset the model would pick for it); None when that preset is not a CT window (MR,
    8-bit images keep napari's own limits). Imports torch (the presets live with it)."""
    from ..preprocessing import get_preset, guess_preset, intensity_range

    arr = np.asarray(array)
    name = preset or guess_preset(modality, arr)
    if not name.startswith("ct_") or get_preset(name).kind != "window":
        return None
    return intensity_range(arr, name)


class PromptLayers:
    """The layers of one image bound to a model (created by :meth:`create`)."""

    def __init__(self, viewer: Any, session: Any, image: Any, outline: bool = True) -> None:
        self.viewer, self.session = viewer, session
        nd = 3 if session.shape[0] > 1 or image.ndim - int(image.rgb) == 3 else 2
        self.ndim = nd
        self.geo = {"scale": image.scale[-nd:], "translate": image.translate[-nd:]}
        self.view: Callable[[np.ndarray], np.ndarray] = (
            (lambda a: a) if nd == 3 else (lambda a: a[0])
        )
        self.preview_array = np.zeros(session.shape, np.uint8)
        self.labels = viewer.add_labels(
            self.view(session.labels), name="SAM-Med labels", opacity=0.6,
            metadata=dict(image.metadata), **self.geo,
        )  # fmt: skip
        self.preview = viewer.add_labels(
            self.view(self.preview_array), name="SAM-Med preview", opacity=0.9, **self.geo
        )
        self.set_outline(outline)
        self.shapes = viewer.add_shapes(
            ndim=nd, name="SAM-Med boxes", edge_color=BOX_COLOR, face_color="transparent",
            edge_width=1.5, **self.geo,
        )  # fmt: skip
        self.shapes.current_edge_color = BOX_COLOR
        self.points = viewer.add_points(
            ndim=nd, name="SAM-Med points", size=max(3.0, session.shape[-1] / 60),
            features={"label": np.zeros(0, np.int64)}, **self.geo,
        )  # fmt: skip
        _layers.set_point_label(self.points, True)
        self.points.mouse_drag_callbacks.insert(0, _layers.click_sign_callback)
        self.points.mode = "add"
        viewer.layers.selection.active = self.points
        self.extra: dict[str, Any] = {}  # proposals, replay: added on demand
        self._preview_color: Any = None
        self._label_colors: Any = None

    def all(self) -> list[Any]:
        return [self.points, self.shapes, self.preview, self.labels, *self.extra.values()]

    def remove(self) -> dict[str, Any]:
        """Take the layers out of the viewer (a new model or image replaces them); returns
        the extra layers that stay (a replay's masks, to compare with the next model)."""
        kept = {k: ly for k, ly in self.extra.items() if k == REPLAY}
        for ly in self.all():
            if ly in self.viewer.layers and ly not in kept.values():
                self.viewer.layers.remove(ly)
        return kept

    def set_outline(self, outline: bool) -> None:
        """Show the preview as an outline (the lesion's edge stays visible) or filled."""
        self.preview.contour = OUTLINE_WIDTH if outline else 0

    def extra_layer(self, name: str, data: np.ndarray, opacity: float) -> Any:
        """The named extra labels layer (created over ``data`` if missing, else refilled)."""
        layer = self.extra.get(name)
        if layer is None or layer not in self.viewer.layers:
            layer = self.viewer.add_labels(self.view(data), name=name, opacity=opacity, **self.geo)
            self.extra[name] = layer
            self.viewer.layers.selection.active = self.points
        else:
            layer.data = self.view(data)
        return layer

    # ----------------------------------------------------------- the session
    def show_slices(self, slices: list[int], obj: Any = None) -> None:
        """Copy the masks of ``slices`` of ``obj`` (the current object) into the preview."""
        obj = obj if obj is not None else self.session.obj()
        for z in slices:
            pred = obj.seg.slices.get(z)
            self.preview_array[z] = 0 if pred is None else pred.mask
        self.preview.refresh()

    def show_object(self) -> None:
        """The whole current object in the preview, in its colour."""
        s = self.session
        if s.current is None:
            self.preview_array[:] = 0
        else:
            obj = s.obj()
            self.preview_array[:] = obj.seg.to_mask(s.shape)
            if self._preview_color != obj.color:
                self.preview.colormap = _layers.label_colormap({1: obj.color})
                self._preview_color = obj.color
        self.preview.refresh()

    def show_labels(self) -> None:
        """The committed labels, each object in its colour, with names for DICOM SEG."""
        from ._dicom import OBJECTS_KEY, layer_objects

        self.labels.metadata[OBJECTS_KEY] = layer_objects(self.session)
        colors = {o.label: o.color for o in self.session.objects}
        if colors != self._label_colors:  # a new colormap is costly
            self.labels.colormap = _layers.label_colormap(colors)
            self._label_colors = colors
        self.labels.refresh()

    def show_prompts(self) -> None:
        """The current object's prompts on the points and boxes layers."""
        s = self.session
        prompts = s.obj().prompts if s.current is not None else {}
        _layers.prompts_to_layers(prompts, self.points, self.shapes)

    def rebind(self, session: Any) -> None:
        """Show another session of the same image (after a replay)."""
        self.session = session
        self.labels.data = self.view(session.labels)
