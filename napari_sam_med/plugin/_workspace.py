"""What the SAM-Med panels share: the viewer, the image bound to a model (``engine``) with its
annotation ``session`` and layers, the activity bar, and one "the session changed" signal.

Panels are given the workspace in their constructor and read ``ws.session``/``ws.engine``
from it (both change when a model is loaded); a panel that shows part of the session
subscribes with :meth:`Workspace.on_change`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _layers, _workers
from ._activity import Activity

# session events after which the committed labels changed (shown again, autosaved)
LABEL_EVENTS = frozenset({"commit", "delete", "relabel", "undo", "redo", "restore", "paint",
                          "accept proposal", "import labels"})  # fmt: skip
Listener = Callable[[str | None, list[int] | None], None]


class Workspace:
    """The shared state of the panels (no Qt widgets of its own)."""

    def __init__(self, viewer: Any, activity: Activity) -> None:
        self.viewer = viewer
        self.activity = activity
        self.engine: Any = None
        self.session: Any = None
        self.image_layer: Any = None
        self.layers: Any = None  # a _display.PromptLayers once a model is bound
        self.closed = False
        self.syncing = False  # True while the panels write to the layers themselves
        self._listeners: list[Listener] = []
        self._bound: list[Callable[[], None]] = []

    def on_change(self, listener: Listener) -> None:
        """Call ``listener(event, slices)`` after every change of the session."""
        self._listeners.append(listener)

    def on_bound(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` when a model was bound to an image (a new session began)."""
        self._bound.append(listener)

    def bound(self) -> None:
        for listener in self._bound:
            listener()

    def changed(self, event: str | None = None, slices: list[int] | None = None) -> None:
        """The session changed (``event`` names it; ``slices``: only these slices' masks)."""
        if self.session is None:
            return
        for listener in self._listeners:
            listener(event, slices)

    # -------------------------------------------------------------- messages
    def notify(self, text: str, error: bool = False) -> None:
        """Show ``text`` in the status line and as a napari notification."""
        from napari.utils.notifications import show_error, show_info

        self.activity.say(text)
        (show_error if error else show_info)(text)

    def failed(self, failure: _workers.Failure) -> None:
        self.notify(failure.message(), error=True)

    def need_engine(self) -> bool:
        if self.engine is None or self.session is None:
            self.notify("Load a model first (Model tab > Load model).", error=True)
            return False
        return True

    def guard(self, what: str, fn: Any, *args: Any) -> Any:
        """Run a session change; a ValueError/KeyError becomes a message, not a crash."""
        if not self.need_engine():
            return None
        try:
            out = fn(*args)
        except (ValueError, KeyError) as exc:
            self.notify(f"{what}: {exc.args[0] if exc.args else exc}", error=True)
            return None
        self.changed(event=what)
        return out

    # ----------------------------------------------------------------- slices
    def current_z(self) -> int:
        """The image slice shown in the viewer."""
        if self.image_layer is None:
            return 0
        return _layers.current_slice(self.image_layer, self.viewer)

    def go_to(self, z: int) -> None:
        """Show slice ``z``."""
        if self.image_layer is not None:
            _layers.go_to_slice(self.image_layer, self.viewer, int(z))
