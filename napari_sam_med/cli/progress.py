"""Progress bars of the ``sam-med`` commands (tqdm on stderr), drawn only once there is
progress to show.

A bar made before the work starts prints an empty ``slices: 0slice`` line, also before an
error; and tqdm's ``delay`` does not help, because ``reset``, ``set_description`` and
``tqdm.write`` draw a bar anyway, after which ``close`` believes it was never shown and leaves
it half-drawn. So each bar here is created at its first update, and :class:`CaseBars` closes
the per-slice bar before the per-case one.
"""

from __future__ import annotations

import sys
from typing import Any


class LazyBar:
    """A tqdm bar created at its first :meth:`progress` call (never, when disabled)."""

    def __init__(self, disable: bool = False, **kwargs: Any) -> None:
        self.disable = disable
        self.kwargs = kwargs
        self.bar: Any = None

    def _get(self) -> Any:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(**self.kwargs)
        return self.bar

    def progress(self, done: int, total: int | None, restart: bool = False) -> None:
        """Show ``done`` of ``total`` (``restart``: a new task, the bar starts over)."""
        if self.disable:
            return
        bar = self._get()
        if restart or done < bar.n:
            bar.reset(total=total)
        bar.total = total
        bar.update(done - bar.n)

    def describe(self, text: str) -> None:
        """Set the bar's label (kept for when the bar appears)."""
        self.kwargs["desc"] = text
        if self.bar is not None:
            self.bar.set_description(text)

    @property
    def shown(self) -> bool:
        return self.bar is not None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class CaseBars:
    """``segment``'s bars: one over the cases (only for several) above one over the slices of
    the current object. Use :meth:`on_progress` as the run's progress callback."""

    def __init__(self, n_cases: int, disable: bool) -> None:
        several = n_cases > 1
        self.cases = LazyBar(disable or not several, total=n_cases, desc="cases", unit="case",
                             position=0)  # fmt: skip
        self.slices = LazyBar(disable, desc="slices", unit="slice", leave=False,
                              position=1 if several else 0)  # fmt: skip
        self.key: tuple | None = None

    def on_progress(self, ev: Any) -> None:
        """A :class:`~napari_sam_med.volume.segment.CaseProgress` event."""
        if not self.cases.shown:
            self.cases.progress(0, self.cases.kwargs["total"])  # the case bar goes on top
        key = (ev.case, ev.object_index)
        new = key != self.key
        if new:
            self.key = key
            self.slices.describe(f"{ev.case} object {ev.object_index + 1}/{ev.num_objects}")
        self.slices.progress(ev.done, ev.total, restart=new)

    def case_done(self, done: int, failure: str | None = None) -> None:
        """After each case: advance the case bar; print ``failure`` above the bars."""
        if failure:
            if self.cases.shown or self.slices.shown:
                from tqdm import tqdm

                tqdm.write(failure, file=sys.stderr)
            else:
                print(failure, file=sys.stderr)
        self.cases.progress(done, self.cases.kwargs["total"])

    def close(self) -> None:
        self.slices.close()
        self.cases.close()
