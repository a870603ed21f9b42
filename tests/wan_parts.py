"""Tiny random Wan2.1 parts built offline from the real constructors (diffusers, transformers, tokenizers), and
writers of the on-disk layouts: a `WanPipeline.save_pretrained` folder, the original Wan2.1 layout and a causal
checkpoint over a base. Nothing is downloaded."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from framecast.models.config import DiTConfig
from framecast.models.convert import from_diffusers
from tests.test_dit_diffusers import _randomize, _reference

WORDS = ["a", "red", "blue", "green", "fox", "cat", "square", "circle", "moving", "left", "right", "on", "the"]
WORDS += ["white", "black", "background", "sky"]
T5 = dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, relative_attention_num_buckets=8)
DIT = DiTConfig(
    dim=48, num_heads=4, num_layers=2, ffn_dim=64, in_channels=16, out_channels=16, text_dim=32, freq_dim=32,
    chunk_frames=3, latent_height=6, latent_width=8,
)  # fmt: skip
HEIGHT, WIDTH = 48, 64  # pixels: latent 6 x 8, tokens 3 x 4 per latent frame
VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True])


def randomize(model: torch.nn.Module, seed: int, scale: float = 0.2) -> torch.nn.Module:
    """Every tensor random (norm gains around 1), so each weight matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            p.copy_(1 + noise if name.endswith(("gamma", "layer_norm.weight", "final_layer_norm.weight")) else noise)
    return model.eval()


def tiny_vae(seed: int = 3) -> Any:
    from diffusers import AutoencoderKLWan

    return randomize(AutoencoderKLWan(**VAE), seed)


def tiny_dit(seed: int) -> Any:
    model = _reference(DIT)
    _randomize(model, seed)
    return model


def tiny_tokenizer() -> Any:
    """A word-level tokenizer with T5's specials (<pad> 0, </s> 1, <unk> 2) that appends </s>, as UMT5's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def tiny_t5(seed: int = 5) -> Any:
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    cfg = UMT5Config(vocab_size=len(WORDS) + 3, feed_forward_proj="gated-gelu", **T5)  # type: ignore[arg-type]
    return randomize(UMT5EncoderModel(cfg), seed, scale=0.5)


@dataclass
class WanParts:
    dit: Any  # diffusers WanTransformer3DModel
    vae: Any  # diffusers AutoencoderKLWan
    t5: Any  # transformers UMT5EncoderModel
    tokenizer: Any

    def pipeline(self, shift: float = 5.0) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

        return WanPipeline(
            tokenizer=self.tokenizer, text_encoder=self.t5, transformer=self.dit, vae=self.vae,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
        )  # fmt: skip


def parts(dit_seed: int = 1) -> WanParts:
    return WanParts(tiny_dit(dit_seed), tiny_vae(), tiny_t5(), tiny_tokenizer())


# -- layouts ---------------------------------------------------------------------------------------------------


def save_diffusers(p: WanParts, root: Path) -> Path:
    """`WanPipeline.save_pretrained`: model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/."""
    p.pipeline().save_pretrained(root)
    return root


def vae_to_original(name: str, num_res_blocks: int) -> str:
    """diffusers' AutoencoderKLWan name -> the original Wan2.1 VAE's (the inverse of framecast's converter, written
    out separately here)."""
    inner = [("norm1.", "residual.0."), ("conv1.", "residual.2."), ("norm2.", "residual.3."), ("conv2.", "residual.6.")]
    inner.append(("conv_shortcut.", "shortcut."))

    def block(rest: str) -> str:
        return next((new + rest[len(old) :] for old, new in inner if rest.startswith(old)), rest)

    for old, new in (("quant_conv.", "conv1."), ("post_quant_conv.", "conv2.")):
        if name.startswith(old):
            return new + name[len(old) :]
    half, rest = name.split(".", 1)
    for old, new in (("conv_in.", "conv1."), ("norm_out.", "head.0."), ("conv_out.", "head.2.")):
        if rest.startswith(old):
            return f"{half}.{new}{rest[len(old) :]}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d)\.(.*)", rest)
    if m:
        index = {"resnets0": 0, "attentions0": 1, "resnets1": 2}[m[1] + m[2]]
        return f"{half}.middle.{index}.{block(m[3]) if m[1] == 'resnets' else m[3]}"
    m = re.match(r"down_blocks\.(\d+)\.(.*)", rest)
    if m:
        return f"encoder.downsamples.{m[1]}.{block(m[2])}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.*)", rest)
    assert m, name
    index = int(m[1]) * (num_res_blocks + 2) + (int(m[3]) if m[3] is not None else num_res_blocks + 1)
    return f"decoder.upsamples.{index}.{block(m[4])}"


T5_TO_ORIGINAL = {
    "layer.0.layer_norm.weight": "norm1.weight",
    "layer.0.SelfAttention.q.weight": "attn.q.weight",
    "layer.0.SelfAttention.k.weight": "attn.k.weight",
    "layer.0.SelfAttention.v.weight": "attn.v.weight",
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
    "layer.1.layer_norm.weight": "norm2.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
    "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
}


def t5_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"token_embedding.weight": state["shared.weight"], "norm.weight": state["encoder.final_layer_norm.weight"]}
    for k, v in state.items():
        m = re.match(r"encoder\.block\.(\d+)\.(.*)", k)
        if m:
            out[f"blocks.{m[1]}.{T5_TO_ORIGINAL[m[2]]}"] = v
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def wan_config_json() -> dict[str, Any]:
    c = DIT
    return {
        "_class_name": "WanModel", "dim": c.dim, "eps": c.eps, "ffn_dim": c.ffn_dim, "freq_dim": c.freq_dim,
        "in_dim": c.in_channels, "model_type": "t2v", "num_heads": c.num_heads, "num_layers": c.num_layers,
        "out_dim": c.out_channels, "text_len": 512, "text_dim": c.text_dim,
    }  # fmt: skip


def dit_to_original(dit: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in from_diffusers(dit.state_dict()).items()}


def save_original(p: WanParts, root: Path, dit: Any = None) -> Path:
    """The original Wan2.1 layout: config.json, diffusion_pytorch_model.safetensors, Wan2.1_VAE.pth,
    models_t5_umt5-xxl-enc-bf16.pth (here float32) and google/umt5-xxl/; `dit` replaces the parts' DiT."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(wan_config_json()))
    save_file(dit_to_original(p.dit if dit is None else dit), str(root / "diffusion_pytorch_model.safetensors"))
    nrb = VAE["num_res_blocks"]
    vae = {vae_to_original(k, nrb): v.detach().clone() for k, v in p.vae.state_dict().items()}  # type: ignore[arg-type]
    torch.save(vae, root / "Wan2.1_VAE.pth")
    torch.save(t5_to_original(p.t5.state_dict()), root / "models_t5_umt5-xxl-enc-bf16.pth")
    p.tokenizer.save_pretrained(root / "google" / "umt5-xxl")
    return root


def save_checkpoint(dit: Any, file: Path) -> Path:
    """A Self-Forcing-style file: the weights under `generator_ema` with `model.` prefixes."""
    torch.save({"generator_ema": {f"model.{k}": v for k, v in dit_to_original(dit).items()}, "step": 3}, file)
    return file
