"""Memory planning: the bytes a model and each of its streams take, from configurations alone.

Nothing is allocated: the DiT's weights are counted on the meta device, the KV cache and the activations of a
pass are arithmetic over `DiTConfig` and `StreamConfig` (the layouts of stream/cache.py and models/dit.py), and the
Wan VAE's decoder cache is one decode on the meta device. `framecast plan` prints a `MemoryPlan`;
tests/test_planner.py checks every term against memory measured on the CPU.

Per stream: its KV cache (2 x layers x rows x slots x tokens x dim), its prompt's cross-attention keys/values, its
decoder's carried state, and its rows of a batched pass (activations: every stream of a driver step is one batch,
so they add up). Once: the DiT, the text encoder and the autoencoder, and the empty prompt's condition when
guided. Not counted: the allocator's slack and the framework's own workspace (a few hundred MiB on a GPU), and
the decoder's activations, which run after the DiT's are freed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from framecast.errors import InputError
from framecast.models.config import DiTConfig
from framecast.models.dit import CausalWanDiT, keeps_float32
from framecast.stream.cache import staging_slots
from framecast.stream.config import StreamConfig

GIB = 2**30
UMT5_XXL_PARAMS = 5_680_910_336  # Wan2.1's models_t5_umt5-xxl-enc-bf16.pth (tests check it against transformers)
MINILM_PARAMS = 22_713_216  # all-MiniLM-L6-v2, the built-in model's text encoder


@dataclass(frozen=True)
class PlanSpec:
    """What a plan is computed from. dit: the DiT at the frame's latent size and chunk; dtype: the DiT's and its
    caches'; text_tokens: tokens of one prompt's condition; the rest are bytes as the parts are loaded."""

    dit: DiTConfig
    stream: StreamConfig
    dtype: torch.dtype
    text_tokens: int
    text_encoder_bytes: int
    autoencoder_bytes: int
    decoder_state_bytes: int  # one stream's, in steady state
    scores: bool = False  # attention materialises its weights (the CPU); False: CUDA's fused kernels


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes of one model and of each of its streams."""

    weights: int  # the DiT
    text_encoder: int
    autoencoder: int
    null_condition: int  # the empty prompt's condition, once, when guided
    kv_cache: int  # per stream
    condition: int  # per stream: its prompt's cross-attention keys/values
    activations: int  # per stream: its rows of one batched pass
    decoder_state: int  # per stream

    @property
    def fixed(self) -> int:
        return self.weights + self.text_encoder + self.autoencoder + self.null_condition

    @property
    def per_stream(self) -> int:
        return self.kv_cache + self.condition + self.activations + self.decoder_state

    def total(self, streams: int) -> int:
        return self.fixed + streams * self.per_stream

    def streams_fit(self, memory: int) -> int:
        """Streams that fit in `memory` bytes (0 when the model alone does not)."""
        return max(0, (memory - self.fixed) // self.per_stream)


def size_of(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def dit_weight_bytes(cfg: DiTConfig, dtype: torch.dtype) -> int:
    """Bytes of the DiT's parameters and buffers in `dtype`, the parts Wan keeps in float32 at 4 bytes (as
    `CausalWanDiT.to` and `load_wan_dit` convert them); counted on the meta device."""
    with torch.device("meta"):
        model = CausalWanDiT(cfg)
    half = dtype in (torch.float16, torch.bfloat16)
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return sum(t.numel() * (4 if half and keeps_float32(n) else size_of(dtype)) for n, t in tensors)


def chunk_tokens(cfg: DiTConfig) -> int:
    return cfg.chunk_frames * cfg.tokens_per_frame


def kv_cache_bytes(cfg: DiTConfig, stream: StreamConfig, dtype: torch.dtype) -> int:
    """One stream's KV store (stream/cache.py): (2, L, R, S + G, N, heads, head_dim); with `recache`, also the
    float32 inputs its ring's chunks are re-cached from (stream/state.py `RecacheStore`: latents, structure inputs
    and timesteps of S chunks)."""
    stage = 0 if stream.batch_steps else sum(staging_slots(stream.final_pass))
    slots = stream.sink_chunks + stream.window_chunks + stage
    kv = 2 * cfg.num_layers * stream.rows * slots * chunk_tokens(cfg) * cfg.dim * size_of(dtype)
    if not stream.recache:
        return kv
    latent = (cfg.in_channels + cfg.structure_channels) * cfg.latent_height * cfg.latent_width
    return kv + stream.cache_chunks * cfg.chunk_frames * (latent + 1) * 4


def condition_bytes(cfg: DiTConfig, text_tokens: int, dtype: torch.dtype) -> int:
    """One prompt's cross-attention keys and values (L, T, heads, head_dim) each, and its modulation vector."""
    return 2 * cfg.num_layers * text_tokens * cfg.dim * size_of(dtype) + (4 * cfg.dim if cfg.text_modulation else 0)


def activation_bytes(
    cfg: DiTConfig, stream: StreamConfig, dtype: torch.dtype, text_tokens: int, scores: bool = False
) -> int:
    """Peak bytes of one stream's rows in a steady pass: the keys/values every layer returns (kept until the pass
    ends, to be cached), plus the largest of one block's transients (self-attention with the context's keys and
    values concatenated, cross-attention, the FFN), with the float32 copies Wan's norms and gates make.
    `scores`: attention materialises its weights (heads x queries x keys, float32, and their softmax), as the
    CPU's SDPA does; CUDA's flash and memory-efficient kernels do not."""
    b, D = size_of(dtype), cfg.dim
    frames = (stream.final_pass + 1 if stream.batch_steps else 1) * cfg.chunk_frames * stream.rows
    n = frames * cfg.tokens_per_frame  # query tokens of the pass
    staged = 0 if stream.batch_steps else max(stream.final_pass - 1, 0)  # a sequential pass also reads staged keys
    m = (stream.sink_chunks + stream.window_chunks + staged) * chunk_tokens(cfg) * stream.rows  # context tokens
    kept = 2 * cfg.num_layers * n * D * b
    residual = n * D * (b + 4 + 4)  # tokens, a float32 copy, the float32 result of a gate
    self_attn = n * D * (5 * b + 2 * 4) + 2 * (m + n) * D * b  # q, k, v, out, o; rope in float32; keys+values
    if scores:
        r = stream.rows  # each row's queries attend to its own keys
        self_attn += 2 * r * cfg.num_heads * (n // r) * ((m + n) // r) * 4
    cross = n * D * 3 * b + 2 * frames * text_tokens * D * b  # q, out, o; the per-frame text keys/values
    ffn = n * cfg.ffn_dim * 2 * b + n * D * (2 * b + 4)  # hidden, its GELU; input, output, float32 output
    latents = 4 * frames * cfg.latent_height * cfg.latent_width * cfg.in_channels * 4  # x, velocity, out, step
    return kept + residual + max(self_attn, cross, ffn) + latents


def plan(spec: PlanSpec) -> MemoryPlan:
    cfg, s, dt = spec.dit, spec.stream, spec.dtype
    cond = condition_bytes(cfg, spec.text_tokens, dt)
    return MemoryPlan(
        weights=dit_weight_bytes(cfg, dt),
        text_encoder=spec.text_encoder_bytes,
        autoencoder=spec.autoencoder_bytes,
        null_condition=cond if s.guided else 0,
        kv_cache=kv_cache_bytes(cfg, s, dt),
        condition=cond,
        activations=activation_bytes(cfg, s, dt, spec.text_tokens, spec.scores),
        decoder_state=spec.decoder_state_bytes,
    )


def human(n: int) -> str:
    return f"{n / GIB:9.3f} GiB" if n >= GIB // 16 else f"{n / 2**20:9.1f} MiB"


def format_plan(p: MemoryPlan, memory: int | None, title: str) -> str:
    """The plan as a table: each term, the totals, and how many streams fit in `memory` bytes."""
    rows = [
        ("DiT weights", p.weights), ("text encoder weights", p.text_encoder), ("autoencoder weights", p.autoencoder),
        ("empty-prompt condition (guided)", p.null_condition), ("fixed", p.fixed),
        ("KV cache / stream", p.kv_cache), ("prompt condition / stream", p.condition),
        ("activations / stream (one pass)", p.activations), ("decoder state / stream", p.decoder_state),
        ("per stream", p.per_stream),
    ]  # fmt: skip
    lines = [title] + [f"  {name:<34}{human(v)}  {v:>15,d} B" for name, v in rows]
    if memory is not None:
        fit = p.streams_fit(memory)
        used = human(p.total(fit)).strip()
        lines.append(f"  {'GPU memory':<34}{human(memory)}  -> {fit} stream(s) fit ({used} used)")
    return "\n".join(lines)


def latent_size(width: int, height: int, spatial: int, patch: int = 2) -> tuple[int, int]:
    """(latent_height, latent_width) of a frame size in pixels, which must divide by `spatial` x `patch`."""
    step = spatial * patch
    if width % step or height % step or width < step or height < step:
        raise InputError(f"--size {width}x{height}: width and height must be positive multiples of {step}")
    return height // spatial, width // spatial


def parse_memory(text: str) -> int:
    """`80GB` (10^9), `141GiB` / `80G` (2^30), `512MiB`, or bytes -> bytes."""
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "k": 2**10, "kib": 2**10,
             "m": 2**20, "mib": 2**20, "g": GIB, "gib": GIB, "t": 2**40, "tib": 2**40}  # fmt: skip
    t = text.strip().lower()
    num = t.rstrip("abgikmt")
    try:
        value, unit = float(num), units[t[len(num) :].strip()]
    except (ValueError, KeyError):
        raise InputError(f"--gpu-memory expects a size like 80GB, 141GiB or 24G, got {text!r}") from None
    if not value > 0:
        raise InputError(f"--gpu-memory must be positive, got {text!r}")
    return int(value * unit)
