"""Tiny random diffusers image-model folders (SD and SDXL layouts), built offline with diffusers' and transformers'
own constructors and written by `save_pretrained`, as a user's folder would be."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    DDIMScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

TEXT_DIM = 32
MAX_TOKENS = 16
SCHEDULER_ARGS: dict[str, Any] = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
SCHEDULERS = {
    "lcm": lambda: LCMScheduler(**SCHEDULER_ARGS),
    "ddim": lambda: DDIMScheduler(**SCHEDULER_ARGS, set_alpha_to_one=True, steps_offset=1, clip_sample=False),
    "euler": lambda: EulerDiscreteScheduler(**SCHEDULER_ARGS, timestep_spacing="trailing"),
}


def tiny_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer (lower-case letters, one merge), 16 tokens long."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    vocab["re"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[("r", "e")], model_max_length=MAX_TOKENS)


def tiny_text_encoder(seed: int, projected: bool = False, dim: int = TEXT_DIM) -> nn.Module:
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=64,
        hidden_size=dim,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=16,
    )
    return (CLIPTextModelWithProjection if projected else CLIPTextModel)(cfg).eval()


def tiny_unet(seed: int, sdxl: bool = False, cross_dim: int = TEXT_DIM) -> UNet2DConditionModel:
    """An 8x8-latent UNet, one cross-attention block down and up (SDXL: with the text-and-size embedding)."""
    torch.manual_seed(seed)
    extra: dict[str, Any] = {}
    if sdxl:
        extra = {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 16 + 6 * 8,
        }
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_dim,
        norm_num_groups=8,
        attention_head_dim=8,
        **extra,
    )
    perturb(unet, seed + 1, 0.05)
    return unet.eval()


def tiny_kl_vae(seed: int) -> AutoencoderKL:
    """A 4x AutoencoderKL (8x8 latents <-> 32x32 frames)."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    perturb(vae, seed + 3, 0.02)
    return vae.eval()


def tiny_taesd(seed: int) -> AutoencoderTiny:
    """A TAESD with 4x up/down sampling (8x8 latents <-> 32x32 frames), weights perturbed to draw with contrast."""
    torch.manual_seed(seed)
    vae = AutoencoderTiny(
        encoder_block_out_channels=(16, 16, 16),
        decoder_block_out_channels=(16, 16, 16),
        num_encoder_blocks=(1, 1, 1),
        num_decoder_blocks=(1, 1, 1),
        latent_channels=4,
    )
    perturb(vae.encoder, seed + 11, 0.1)
    perturb(vae.decoder, seed + 7, 0.03)
    with torch.no_grad():
        vae.decoder.layers[-1].bias.add_(0.5)
    return vae.eval()


def perturb(module: nn.Module, seed: int, scale: float) -> None:
    """Random weights made to matter (default inits leave many outputs near zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def sd_pipeline(scheduler: str = "lcm", seed: int = 0, prediction: str = "epsilon") -> StableDiffusionPipeline:
    sched = SCHEDULERS[scheduler]()
    sched.register_to_config(prediction_type=prediction)
    return StableDiffusionPipeline(
        vae=tiny_kl_vae(seed),
        text_encoder=tiny_text_encoder(seed + 5),
        tokenizer=tiny_tokenizer(),
        unet=tiny_unet(seed),
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sdxl_pipeline(scheduler: str = "euler", seed: int = 0) -> StableDiffusionXLPipeline:
    sched = SCHEDULERS[scheduler]()
    return StableDiffusionXLPipeline(
        vae=tiny_kl_vae(seed),
        text_encoder=tiny_text_encoder(seed + 5, dim=16),
        text_encoder_2=tiny_text_encoder(seed + 6, projected=True, dim=16),
        tokenizer=tiny_tokenizer(),
        tokenizer_2=tiny_tokenizer(),
        unet=tiny_unet(seed, sdxl=True, cross_dim=32),
        scheduler=sched,
    )


def save(pipe: Any, folder: Path) -> Path:
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_taesd(folder: Path, seed: int = 0) -> Path:
    tiny_taesd(seed).save_pretrained(folder, safe_serialization=True)
    return folder
