"""The alternative text encoder: a CLIP text tower loaded from a user's file.

What is supported:
    * weights: a ``torch.save`` file (read with ``weights_only=True``) holding the text tower
      in the OpenAI / open_clip layout -- ``token_embedding.weight``, ``positional_embedding``,
      ``transformer.resblocks.N.{ln_1,attn.in_proj_*,attn.out_proj,ln_2,mlp.c_fc,mlp.c_proj}``,
      ``ln_final``, ``text_projection``. A whole CLIP state dict works too (``visual.*`` and
      ``logit_scale`` are ignored), as do ``module.`` / ``text.`` prefixes. Sizes come from
      the tensors; heads = width / 64 (the CLIP convention) unless the file says ``"heads"``.
      The file may be ``{"state_dict": ..., "bpe_merges": [...], "heads": 8, "act": "gelu"}``.
    * activation: QuickGELU (OpenAI's models) unless the file says ``"act": "gelu"``
      (LAION open_clip models trained with ``nn.GELU``).
    * tokenizer: CLIP's byte-level BPE, implemented here. Its 49k merge list (not shipped by
      us) is taken from, in order: the file's ``"bpe_merges"`` (a list of ``"a b"`` strings),
      a ``bpe_simple_vocab_16e6.txt[.gz]`` next to the weights file, or the copy inside an
      installed ``open_clip_torch`` (read as a file, never imported).
Not supported: Hugging Face ``CLIPTextModel`` key layouts, and ``ftfy`` text repair (we only
unescape HTML and collapse whitespace); outside ASCII the split may differ slightly from CLIP's.
"""

from __future__ import annotations

import gzip
import html
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..build import load_state_dict_file
from .minilm import load_exact

BPE_FILE = "bpe_simple_vocab_16e6.txt"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_PATTERN = re.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+",
    re.IGNORECASE,
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map of the 256 byte values to printable unicode characters."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class ClipBPETokenizer:
    """CLIP's lower-cased byte-level BPE with ``<|startoftext|>`` / ``<|endoftext|>``.

    Args:
        merges: merge rules ``"a b"`` in priority order (CLIP uses the first 48,894).
    """

    def __init__(self, merges: Sequence[str]) -> None:
        pairs = [tuple(m.split()) for m in merges if m.strip() and not m.startswith("#")]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise ValueError("CLIP BPE merges must be non-empty lines of two symbols, 'a b'")
        self.byte_encoder = bytes_to_unicode()
        base = list(self.byte_encoder.values())
        vocab = base + [c + "</w>" for c in base] + ["".join(p) for p in pairs] + [SOT, EOT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.ranks = {p: i for i, p in enumerate(pairs)}
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
        self._cache: dict[str, list[str]] = {SOT: [SOT], EOT: [EOT]}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ClipBPETokenizer:
        """Read ``bpe_simple_vocab_16e6.txt[.gz]`` (header line, then merges)."""
        return cls(_read_merges(Path(path)))

    def bpe(self, token: str) -> list[str]:
        """Merge the characters of one pre-token (byte-mapped) into vocabulary symbols."""
        if token in self._cache:
            return self._cache[token]
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:], strict=False)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no start/end tokens)."""
        text = html.unescape(html.unescape(text))
        text = re.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for piece in _PATTERN.findall(text):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self.bpe(mapped) if s in self.encoder)
        return ids

    def __call__(self, texts: Sequence[str], context: int) -> torch.Tensor:
        """``(N, context)`` int64: SOT, tokens (truncated), EOT, zeros."""
        out = torch.zeros((len(texts), context), dtype=torch.int64)
        for i, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text)[: context - 2], self.eot_id]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


class _ResBlock(nn.Module):
    """Pre-LayerNorm block: causal multi-head attention, then an MLP."""

    def __init__(self, width: int, heads: int, quick_gelu: bool) -> None:
        super().__init__()
        self.heads, self.quick_gelu = heads, quick_gelu
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (N, L, W)`` -> ``(N, L, W)``, each position attending to itself and earlier ones."""
        n, length, w = x.shape
        q, k, v = self.in_proj(self.ln_1(x)).chunk(3, dim=-1)
        q, k, v = (t.reshape(n, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out_proj(att.transpose(1, 2).reshape(n, length, w))
        h = self.c_fc(self.ln_2(x))
        h = h * torch.sigmoid(1.702 * h) if self.quick_gelu else F.gelu(h)
        return x + self.c_proj(h)


class ClipTextTower(nn.Module):
    """CLIP's text transformer: embeddings, causal blocks, final LN, EOT pooling, projection.

    Args:
        vocab_size / context / width / layers / heads / embed_dim: sizes (CLIP ViT-B: 49408,
            77, 512, 12, 8, 512).
        quick_gelu: OpenAI's ``x * sigmoid(1.702 x)`` instead of exact GELU.
    """

    def __init__(
        self, vocab_size: int, context: int, width: int, layers: int, heads: int,
        embed_dim: int, quick_gelu: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        if width % heads:
            raise ValueError(f"CLIP text width {width} is not divisible by {heads} heads")
        self.context = context
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context, width))
        self.blocks = nn.ModuleList(_ResBlock(width, heads, quick_gelu) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.zeros(width, embed_dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``(N, context)`` -> L2-normalised ``(N, embed_dim)``, pooled at the EOT token.

        The EOT token has the largest id in CLIP's vocabulary, so its position is the argmax.
        """
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)
        pooled = x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)]
        return F.normalize(pooled @ self.text_projection, dim=-1)


def clip_text_state_dict(raw: dict) -> dict[str, torch.Tensor]:
    """Keep the text-tower tensors of an OpenAI/open_clip state dict, renamed to our modules."""
    out = {}
    for key, value in raw.items():
        for prefix in ("module.", "text.", "model."):
            key = key.removeprefix(prefix)
        if key.startswith("visual.") or key in ("logit_scale", "logit_bias", "attn_mask"):
            continue
        key = key.replace("transformer.resblocks.", "blocks.")
        key = key.replace(".attn.in_proj_weight", ".in_proj.weight")
        key = key.replace(".attn.in_proj_bias", ".in_proj.bias")
        key = key.replace(".attn.out_proj.", ".out_proj.").replace(".mlp.", ".")
        out[key] = value
    return out


class ClipTextEncoder:
    """A CLIP text tower from a user file as a :class:`~napari_sam_med.text.TextEncoder`.

    Args:
        path: the weights file (see the module docstring for what it may hold).

    Raises:
        ValueError: the file lacks the text tower, its tensors do not fit, or no BPE merge
            list can be found.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        raw = load_state_dict_file(self.path)
        if not isinstance(raw, dict):
            raise ValueError(f"{self.path} holds a {type(raw).__name__}, not a CLIP state dict")
        weights = raw.get("state_dict", raw)
        state = clip_text_state_dict({k: v for k, v in weights.items() if torch.is_tensor(v)})
        need = ("token_embedding.weight", "positional_embedding", "text_projection")
        lacking = [k for k in need if k not in state]
        if lacking:
            raise ValueError(
                f"{self.path} has no CLIP text tower: it lacks {lacking}"
                f" (expected the OpenAI/open_clip layout: token_embedding.weight, "
                f"positional_embedding, transformer.resblocks.N..., ln_final, text_projection)"
            )
        vocab, width = state["token_embedding.weight"].shape
        layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        heads = int(raw.get("heads", max(1, width // 64)))
        act = str(raw.get("act", "quick_gelu"))
        if act not in ("quick_gelu", "gelu"):
            raise ValueError(f"{self.path}: act={act!r}; expected 'quick_gelu' or 'gelu'")
        self.model = ClipTextTower(
            vocab, state["positional_embedding"].shape[0], width, layers, heads,
            state["text_projection"].shape[1], quick_gelu=act == "quick_gelu",
        )  # fmt: skip
        load_exact(self.model, state, f"{self.path} (a CLIP text tower)")
        self.tokenizer = ClipBPETokenizer(_find_merges(raw, self.path))
        if len(self.tokenizer.encoder) != vocab:
            raise ValueError(
                f"{self.path}: the BPE merge list gives {len(self.tokenizer.encoder)} tokens but "
                f"the token embedding has {vocab} rows"
            )
        self.dim = int(state["text_projection"].shape[1])
        self.name = f"clip:{self.path.name}"

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed ``N`` strings; returns ``(N, dim)`` float32 on the CPU, rows of unit length."""
        if not texts:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        ids = self.tokenizer(texts, self.model.context)
        with torch.inference_mode():
            return self.model(ids).float()


def _find_merges(raw: dict, path: Path) -> list[str]:
    merges = raw.get("bpe_merges")
    if merges is not None:
        return list(merges)
    for name in (BPE_FILE + ".gz", BPE_FILE):
        if (path.parent / name).is_file():
            return _read_merges(path.parent / name)
    try:
        dist = metadata.distribution("open_clip_torch")
        packaged = Path(str(dist.locate_file(f"open_clip/{BPE_FILE}.gz")))
        if packaged.is_file():
            return _read_merges(packaged)
    except metadata.PackageNotFoundError:
        pass
    raise ValueError(
        f"no CLIP BPE vocabulary for {path}: store the merge lines in the file as "
        f"'bpe_merges', put {BPE_FILE}.gz next to it, or install open_clip_torch"
    )


def _read_merges(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    return lines[1 : 49152 - 256 - 2 + 1]
