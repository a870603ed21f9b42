"""Wan2.1's UMT5 text encoder from local files, through transformers' `UMT5EncoderModel`; nothing is downloaded.

Two layouts:

- diffusers (a `WanPipeline` folder): `text_encoder/` (a transformers `UMT5EncoderModel`: config.json and
  safetensors) and `tokenizer/`;
- original Wan2.1: `models_t5_umt5-xxl-enc-bf16.pth` (the state dict of Wan's own T5 encoder, read with
  `torch.load(weights_only=True)`) and the tokenizer folder `google/umt5-xxl/`. The file holds no configuration:
  the sizes are read off the tensors' shapes.

Original names -> transformers': `token_embedding` is `shared` (tied to `encoder.embed_tokens`); in block i,
`norm1`, `attn.{q,k,v,o}` and `pos_embedding.embedding` (UMT5: a relative-position table in every block) are
`encoder.block.i.layer.0.{layer_norm, SelfAttention.{q,k,v,o}, SelfAttention.relative_attention_bias}`; `norm2`
and `ffn.{gate.0, fc1, fc2}` are `layer.1.{layer_norm, DenseReluDense.{wi_0, wi_1, wo}}` (gelu(wi_0 x) * wi_1 x,
as Wan's gate(x) * fc1(x)); `norm` is `encoder.final_layer_norm`.

Wan encodes a prompt as 512 tokens, the states past the prompt's mask set to zero (`HFTextEncoder`'s "tokens").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from framecast.errors import ModelLoadError
from framecast.models.text import HFTextEncoder, _transformers, load_tokenizer
from framecast.models.wan_weights import read_tensor_file

WAN_T5_FILES = ("models_t5_umt5-xxl-enc-bf16.pth", "models_t5_umt5-xxl-enc-bf16.safetensors")
WAN_TOKENIZER = Path("google") / "umt5-xxl"
WAN_TEXT_LENGTH = 512

_BLOCK = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}


def original_t5_name(key: str) -> str | None:
    """An original Wan2.1 T5 encoder tensor name in transformers' `UMT5EncoderModel` naming (None: not known)."""
    if key == "token_embedding.weight":
        return "shared.weight"
    if key == "norm.weight":
        return "encoder.final_layer_norm.weight"
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if m is None or m[2] not in _BLOCK:
        return None
    return f"encoder.block.{m[1]}.{_BLOCK[m[2]]}"


def original_t5_config(state: dict[str, Tensor], where: Path) -> dict[str, Any]:
    """`UMT5Config` arguments read off an original Wan2.1 T5 encoder state dict's shapes."""
    try:
        vocab, dim = state["token_embedding.weight"].shape
        attn = state["blocks.0.attn.q.weight"].shape[0]
        buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
        ffn = state["blocks.0.ffn.fc1.weight"].shape[0]
    except KeyError as err:
        raise ModelLoadError(f"{where} is no Wan2.1 UMT5 encoder: it lacks {err.args[0]}") from None
    layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    return dict(
        vocab_size=vocab, d_model=dim, d_kv=attn // heads, d_ff=ffn, num_layers=layers, num_heads=heads,
        relative_attention_num_buckets=buckets, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6, is_encoder_decoder=False, use_cache=False,
    )  # fmt: skip


def load_original_t5(file: str | Path, dtype: torch.dtype = torch.float32) -> Any:
    """A transformers `UMT5EncoderModel` with the weights of an original Wan2.1 T5 encoder file, on the CPU."""
    p = Path(file)
    obj = read_tensor_file(p, "UMT5 encoder weights")
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ModelLoadError(f"UMT5 encoder weights {p} hold a {type(obj).__name__}, not a dict of tensors")
    transformers = _transformers()
    config = transformers.UMT5Config(**original_t5_config(obj, p))
    state: dict[str, Tensor] = {}
    for k, v in obj.items():
        name = original_t5_name(k)
        if name is None:
            raise ModelLoadError(f"UMT5 encoder weights {p} hold {k!r}, which is not a Wan2.1 T5 encoder tensor")
        state[name] = v.to(dtype)
    state["encoder.embed_tokens.weight"] = state["shared.weight"]
    with torch.device("meta"):
        model = transformers.UMT5EncoderModel(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ModelLoadError(f"UMT5 encoder weights {p} lack {missing[:3]} ({len(missing)} missing)")
    for name, t in expected.items():
        if state[name].shape != t.shape:
            raise ModelLoadError(f"UMT5 encoder weights {p}: {name} has shape {tuple(state[name].shape)}, expected "
                                 f"{tuple(t.shape)} from the other tensors")  # fmt: skip
    model.load_state_dict(state, assign=True)
    model.tie_weights()
    return model.eval()


def load_wan_text_encoder(
    weights: str | Path, tokenizer: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> HFTextEncoder:
    """Wan's UMT5 prompt encoder, 512 tokens, zeros past the mask. `weights`: a transformers folder (diffusers'
    `text_encoder/`) or an original `models_t5_umt5-xxl-enc-bf16.pth`; `tokenizer`: its tokenizer folder."""
    w = Path(weights)
    if w.is_dir():
        return HFTextEncoder(w, max_length=WAN_TEXT_LENGTH, device=device, tokenizer=tokenizer, dtype=dtype)
    tok = load_tokenizer(tokenizer)
    model = load_original_t5(w, dtype or torch.float32).to(device)
    return HFTextEncoder.from_model(model, tok, w, max_length=WAN_TEXT_LENGTH)
