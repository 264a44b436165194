"""What the engine asks of a model: the one type of a PyTorch :class:`~.sam.Sam` and an
ONNX runtime model (:class:`napari_sam_med.onnx_runtime.OnnxSam`).

:class:`PromptModel` is a structural type (``typing.Protocol``): neither class inherits from it,
the type checker proves that both satisfy it (``backends.load_model`` returns either as one).
It costs nothing at runtime and is not ``runtime_checkable``; code that needs a part only the
PyTorch model has (``image_encoder``, ``prompt_encoder``, ``mask_decoder``: state-dict hashes,
the text-prompt decoder) narrows with ``isinstance(model, Sam)``.

The recorded attributes are read-only here: ``build_sam`` sets them on a ``Sam`` (a bare
``build_model`` has only ``config``, so readers of the checkpoint attributes keep their
``getattr`` fallbacks); ``OnnxSam`` reads them from its export's metadata.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from ..config import SamConfig


class PromptModel(Protocol):
    """A model that embeds images and decodes prompts against an embedding."""

    @property
    def config(self) -> SamConfig:
        """The architecture and input normalisation (``SamConfig``)."""
        ...

    @property
    def checkpoint_path(self) -> str | None:
        """The file the weights came from (``None``: random or in-memory weights)."""
        ...

    @property
    def checkpoint_metadata(self) -> dict[str, Any]:
        """The checkpoint's metadata (training, engine rules, text encoder); JSON values."""
        ...

    @property
    def encoder_autocast(self) -> torch.dtype | None:
        """The autocast dtype of :meth:`encode_image` (``None``: float32)."""
        ...

    def parameters(self) -> Iterator[torch.Tensor]:
        """The weights; the first one's device is where inputs go."""
        ...

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``Bx3xSxS`` images -> ``BxCxhxw`` float32 embeddings."""
        ...

    def decode(
        self,
        image_embeddings: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in input-image pixels -> low-res mask logits and IoU predictions."""
        ...
