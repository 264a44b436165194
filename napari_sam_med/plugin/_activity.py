"""The activity bar of the SAM-Med widget: status text, progress, Cancel, and the workers.

Every panel starts its background work through :class:`Activity` in a named slot
(``embed``, ``job``, ``preview``, ``export``); a slot holds at most one worker and is freed
when it ends. :meth:`Activity.busy` tells tests and benchmarks when all is done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from . import _workers
from ._ui import row

SLOTS = ("embed", "job", "preview", "export")
CANCELLABLE = ("embed", "job")


class ActivityView(QWidget):
    """Progress bar, Cancel and the status line (always visible above the tabs)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setMaximumHeight(16)
        self.cancel_btn = QPushButton("Cancel (Esc)")
        self.cancel_btn.setEnabled(False)
        self.status = QLabel("Pick an image and a model, then Load model.")
        self.status.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(row(self.progress, self.cancel_btn))
        lay.addWidget(self.status)


class Activity:
    """Runs workers in slots and shows what they do in an :class:`ActivityView`."""

    def __init__(self, view: ActivityView) -> None:
        self.view = view
        self.workers: dict[str, Any] = dict.fromkeys(SLOTS)
        self.autosaves = 0
        self._waits: list[Callable[[], bool]] = []
        self.on_free: list[Callable[[], None]] = []  # called when a slot's worker ended
        view.cancel_btn.clicked.connect(self.cancel)

    def alive(self) -> bool:
        """False once Qt has deleted the widget (e.g. the viewer closed)."""
        try:
            self.view.objectName()
        except RuntimeError:
            return False
        return True

    def wait_for(self, pending: Callable[[], bool]) -> None:
        """Count ``pending()`` (e.g. a prompt waiting for its worker) as busy."""
        self._waits.append(pending)

    def running(self, *slots: str) -> bool:
        """Whether a worker runs in any of ``slots`` (all slots by default), or an autosave."""
        names = slots or SLOTS
        return any(self.workers[s] is not None for s in names) or (not slots and self.autosaves > 0)

    def busy(self) -> bool:
        """Whether a worker is running or work waits for one."""
        return self.running() or any(pending() for pending in self._waits)

    def start(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Start a worker outside the slots (its callbacks stop once the widget is gone)."""
        return _workers.start(action, fn, *args, alive=self.alive, **kwargs)

    def run(
        self, slot: str, action: str, fn: Any, *args: Any, on_finished: Any = None, **kwargs: Any
    ) -> Any:
        """Start ``fn`` in a worker in ``slot``; the slot is freed when it ends."""

        def finished() -> None:
            self.workers[slot] = None
            if slot != "preview":
                self.set_idle()
            if on_finished is not None:
                on_finished()
            for fn in self.on_free:
                fn()

        worker = self.start(action, fn, *args, on_finished=finished, **kwargs)
        self.workers[slot] = worker
        return worker

    def cancel(self) -> None:
        """Stop the running embedding or 3D job (a 3D job's result is then discarded)."""
        for slot in CANCELLABLE:
            if self.workers[slot] is not None:
                self.workers[slot].quit()

    def say(self, text: str) -> None:
        """Show ``text`` in the status line."""
        self.view.status.setText(text)

    def text(self) -> str:
        return self.view.status.text()

    def set_busy(self, text: str, value: int, total: int) -> None:
        """Show ``text`` and a progress of ``value`` out of ``total`` (0: unknown)."""
        self.say(text)
        self.set_progress(value, total)
        self.view.cancel_btn.setEnabled(True)

    def set_progress(self, value: int, total: int) -> None:
        self.view.progress.setRange(0, max(total, 0))
        self.view.progress.setValue(value if total else 0)

    def set_idle(self) -> None:
        running = self.running(*CANCELLABLE)
        self.view.cancel_btn.setEnabled(running)
        if not running:
            self.view.progress.setRange(0, 1)
            self.view.progress.setValue(1)
