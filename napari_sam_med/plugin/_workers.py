"""Thread workers: every model call runs here, never on the GUI thread.

Each worker is a napari ``thread_worker`` (``napari.qt.threading.create_worker``). Failures
are caught inside the thread and handed back as a :class:`Failure` (instead of napari's raw
traceback notification), so that the widget can show an actionable message, keep its state
and stay usable. Torch and the model code are imported inside the workers only.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class Failure:
    """An exception raised in a worker, with what the user was doing."""

    action: str
    error: BaseException
    trace: str

    def message(self) -> str:
        """A notification text: what failed, why, and what to try."""
        return f"{self.action} failed: {self.error}. {hint_for(self.error)}"


def hint_for(error: BaseException) -> str:
    """What the user can do about an error."""
    text = str(error).lower()
    name = type(error).__name__
    if name == "CheckpointError" or "checkpoint" in text or "weights" in text:
        return "Pick another model, or check the checkpoint file (see Setup > Model)."
    if isinstance(error, MemoryError) or "out of memory" in text:
        return "Choose the 'cpu' device or a smaller model, or close other programs."
    if "cuda" in text or "mps" in text or "device" in text:
        return "Set the device to 'cpu' in Setup and try again."
    if "prompt" in text or "box" in text or "point" in text:
        return "Check the points and boxes on this slice (undo the last one with Ctrl+Z)."
    if isinstance(error, OSError):
        return "Check that the file or folder exists and is writable."
    return "Your segmentation is unchanged; try again, or undo the last step (Ctrl+Z)."


def start(
    action: str,
    fn: Callable[..., Any],
    *args: Any,
    on_yield: Callable[[Any], None] | None = None,
    on_done: Callable[[Any], None] | None = None,
    on_fail: Callable[[Failure], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    alive: Callable[[], bool] | None = None,
    **kwargs: Any,
) -> Any:
    """Run ``fn(*args, **kwargs)`` (a function or a generator function) in a thread worker.

    Args:
        action: what is being done, for error messages ("Embedding slice 12").
        on_yield: called in the GUI thread with every yielded value (generators).
        on_done: called in the GUI thread with the return value when it succeeded.
        on_fail: called in the GUI thread with a :class:`Failure`.
        on_finished: called in the GUI thread at the end, success or not (also on cancel).
        alive: callbacks are skipped once this returns False (the widget was deleted while
            the worker ran, e.g. because napari closed).

    Returns:
        The started worker (``worker.quit()`` cancels a generator at its next yield).
    """
    from napari.qt.threading import create_worker

    if inspect.isgeneratorfunction(fn):
        target = _guard_gen(action, fn)
    else:
        target = _guard_fn(action, fn)

    def returned(value: Any) -> None:
        if isinstance(value, Failure):
            if on_fail is not None:
                on_fail(value)
        elif on_done is not None:
            on_done(value)

    def guarded(fn: Callable[..., None]) -> Callable[..., None]:
        def call(*a: Any) -> None:
            if alive is None or alive():
                fn(*a)

        return call

    connect: dict[str, Any] = {"returned": guarded(returned)}
    if on_yield is not None:
        connect["yielded"] = guarded(on_yield)
    if on_finished is not None:
        connect["finished"] = guarded(on_finished)
    return create_worker(target, *args, _connect=connect, **kwargs)


def _guard_fn(action: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # reported to the user, never lost
            logger.exception("%s failed", action)
            return Failure(action, exc, traceback.format_exc())

    return run


def _guard_gen(action: str, fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    def run(*args: Any, **kwargs: Any) -> Iterator[Any]:
        try:
            result = yield from fn(*args, **kwargs)
        except Exception as exc:  # reported to the user, never lost
            logger.exception("%s failed", action)
            return Failure(action, exc, traceback.format_exc())
        return result

    return run


# ------------------------------------------------------------------ the jobs


def load_engine(
    model_name: str,
    checkpoint: str | None,
    device: str,
    image: Any,
    preset: Any,
    cache_dir: str | None = None,
    spacing: tuple[float, float, float] | None = None,
    precision: str = "fp32",
) -> Any:
    """Build the model and bind it to the image (runs in a worker: imports torch).

    ``model_name`` may also be an ONNX export folder (onnxruntime backend); ``precision``
    ``"bf16"`` is the fast mode, ``"int8"`` the int8 mode (see ``backends.load_model``).

    ``preset`` is a preset name, or ``(guess, *args)`` to call ``guess(*args)`` in the worker
    (guessing reads the whole volume and imports torch). ``cache_dir`` None uses the user
    cache folder of the embedding cache.
    """
    from ..backends import load_model
    from ..volume.cache import default_cache_dir
    from ._engine import Engine

    cache_dir = str(cache_dir or default_cache_dir())
    if isinstance(preset, tuple):  # (guess function, *arguments): guess from the data here
        preset = preset[0](*preset[1:])

    model = load_model(model_name, checkpoint or None, device=device, precision=precision)
    info = {"name": model_name, "checkpoint": checkpoint or None, "device": device}
    info["precision"] = precision
    info["config"] = getattr(model.config, "name", model_name)
    engine = Engine(model, image, preset, cache_dir, info, spacing)
    engine.cache_dir = cache_dir
    return engine


def embed_slices(engine: Any, slices: list[int]) -> Iterator[tuple[int, int, int]]:
    """Embed ``slices`` (skipping cached ones); yields ``(done, total, z)``."""
    yield from engine.precompute(slices)


def preview(engine: Any, z: int, prompt: dict[str, Any]) -> Iterator[Any]:
    """The 2D preview of one slice's prompt (embeds the slice first if needed): yields the
    mask to show at once, returns the preview with all ambiguity candidates.

    Decoding runs on one torch thread (set for this worker thread only, then restored): its
    operations are small, and a multi-threaded team would wait for a core busy with an
    embedding, which made a click 4-20x slower on a loaded 2-core machine.
    """
    import torch

    threads = torch.get_num_threads()
    if not engine.is_embedded(z):
        engine.embed(z)
    torch.set_num_threads(1)
    try:
        return (yield from engine.preview_steps(z, prompt))
    finally:
        torch.set_num_threads(threads)


def first_preview(engine: Any, z: int, prompt: Any, threads: int | None = None) -> Any:
    """The first mask of a preview, decoded in the calling (GUI) thread, when that is quick.

    Returns ``(preview, rest)``: the mask to show now and the generator that decodes the
    remaining ambiguity candidates (hand it to :func:`rest_of_preview` in a worker). Returns
    None, and decodes nothing, when the slice is not embedded yet or another thread holds the
    engine (a 3D job): the worker path (:func:`preview`) must be used then. A click decodes in
    20-40 ms on a CPU; in a worker it waited for napari's repaint of the new point instead.
    ``threads`` (None keeps the current count) is the torch thread count for the decode.
    """
    import torch

    if not engine.is_embedded(z) or not engine.lock.acquire(blocking=False):
        return None
    before = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        steps = engine.preview_steps(z, prompt)
        return next(steps), steps
    finally:
        torch.set_num_threads(before)
        engine.lock.release()


def rest_of_preview(steps: Iterator[Any]) -> Iterator[Any]:
    """Finish a preview that :func:`first_preview` started: returns the preview with all
    ambiguity candidates (decoded on one torch thread, as :func:`preview` does)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return (yield from steps)
    finally:
        torch.set_num_threads(threads)


def run_job(job: Any) -> Iterator[Any]:
    """Drive a 3D job (``_session.Job``); yields its ``Progress``; returns the job."""
    yield from job.steps
    return job


def compare_log(
    log: dict[str, Any], path: str | None, engine: Any, viewer_labels: Any
) -> Iterator[Any]:
    """Replay a log's committed objects with ``engine`` and compare them with the logged
    labels (saved beside the log, else ``viewer_labels``); yields ``ReplayProgress``.

    Returns:
        ``(ReplayResult, per-object rows with Dice, where the logged labels came from)``.
    """
    from ..volume.io import read_volume
    from ..volume.log_replay import compare_labels, replay_objects
    from ..volume.log_state import final_objects
    from ..volume.session_log import labels_beside

    state = final_objects(log)
    result = yield from replay_objects(state, engine.locked())
    saved = labels_beside(path) if path else None
    if saved is not None:
        logged, where = read_volume(saved).array, saved.name
    else:
        logged, where = viewer_labels, "the labels in the viewer"
    return result, compare_labels(state, logged, result), where


def replay_log(log: dict[str, Any], engine: Any) -> Iterator[tuple[int, int]]:
    """Replay a session log with ``engine``; yields ``(done, total)``; returns the session."""
    from ._persist import replay

    events = log["events"]
    session = None
    for i, event in enumerate(events):
        session = replay(dict(log, events=[event]), engine, session)
        yield i + 1, len(events)
    return session
