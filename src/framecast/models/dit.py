"""A block-causal video diffusion transformer in the Wan2.1 architecture.

One forward pass denoises the latent frames of one or more chunks of each batch row, attending to
past keys/values handed in by the caller (the stream's KV cache) and to the row's text condition.
The network holds no per-stream state: caches, positions and conditions come in as arguments and
the keys/values of the pass come back out, so many streams can share one model.

Parameter names follow the original Wan2.1 checkpoints (`blocks.N.self_attn.q`, `modulation`,
`head.head`, ...), so their weights load without renaming.

Precision: the model runs in float32, bfloat16 or float16 (`model.to(torch.bfloat16)`). As in Wan2.1's
reference code, the timestep embedding and projection, the modulation tables, the layer norms and the
output head (with the refiner) run in float32 whatever the model's dtype: `.to()`, `.half()` and
`.bfloat16()` keep those parameters (`FLOAT32_MODULES`) in float32, and a forward whose parameters were
all narrowed another way (a `load_state_dict(assign=True)`) still computes them in float32. The velocity
comes out in float32 (Wan returns `u.float()`); keys/values come out in the model's dtype, and `past`
must be in it too.

Layouts:
    latents   (B, C, F, H, W)              F latent frames, H x W latent pixels
    tokens    (B, F, P, D)                 P = (H / 2) * (W / 2) tokens per frame
    keys      (B, N, heads, head_dim)      N = F * P, rotated by RoPE before they are cached
    timestep  (B, F)                       flow-matching time in [0, 1000], one per latent frame
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from framecast.errors import InputError
from framecast.models.config import DiTConfig
from framecast.models.refiner import LatentRefiner
from framecast.models.rope import apply_rope, rope_angles

# Parameters that stay float32 when the model is cast to bfloat16/float16: the timestep path (embedding,
# projection and the optional text modulation that adds to it), every modulation table, the norms' affine
# weights and the output head with the refiner (Wan2.1 runs these under autocast(float32); diffusers keeps
# `time_embedder`, `scale_shift_table` and `norm1..3` in float32). A name matches itself and what is under it.
FLOAT32_MODULES: tuple[str, ...] = (
    "time_embedding",
    "time_projection",
    "text_modulation",
    "modulation",
    "norm1",
    "norm2",
    "norm3",
    "head",
    "refiner",
)
_HALF = (torch.float16, torch.bfloat16)


def keeps_float32(name: str) -> bool:
    """Whether the parameter `name` (as in `state_dict()`) stays float32 in a bfloat16/float16 model."""
    return any(part in FLOAT32_MODULES for part in name.split("."))


def param_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a module's first parameter (float32 for a module without any)."""
    p = next(module.parameters(), None)
    return torch.float32 if p is None else p.dtype


class Float32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (also its weights, whatever their dtype), returned in float32."""

    def forward(self, x: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)


@dataclass
class CrossKV:
    """Cross-attention keys/values of the text condition of every frame: (L, B, F, T, heads, head_dim).

    `mod`: with `text_modulation`, the first text token (the sentence) mapped and added to every frame's
    timestep embedding, (B, F, D) (float32); None otherwise. `CausalWanDiT.cross_kv` gives
    (L, B, T, heads, head_dim) and a mod of (B, D) for a prompt; `per_frame` expands them.
    """

    k: Tensor
    v: Tensor
    mod: Tensor | None = None

    def per_frame(self, frames: int) -> CrossKV:
        """(L, B, T, h, hd) -> (L, B, frames, T, h, hd) and mod (B, D) -> (B, frames, D), views."""

        def f(x: Tensor) -> Tensor:
            return x[:, :, None].expand(-1, -1, frames, -1, -1, -1)

        mod = None if self.mod is None else self.mod[:, None].expand(-1, frames, -1)
        return CrossKV(f(self.k), f(self.v), mod)


@dataclass
class PastKV:
    """Self-attention keys/values a pass may attend to besides its own: (L, B, M, heads, head_dim)."""

    k: Tensor
    v: Tensor


LayerPast = tuple[Tensor, Tensor] | tuple[list[Tensor], list[Tensor]]  # one layer's context: whole, or in parts


def _layer_past(past: PastKV | list[PastKV] | None, i: int) -> LayerPast | None:
    """Layer i of a context (L, B, M, h, hd), or of each of its parts."""
    if past is None:
        return None
    if isinstance(past, PastKV):
        return past.k[i], past.v[i]
    return [p.k[i] for p in past], [p.v[i] for p in past]


@dataclass
class PassModulation:
    """What every block of a pass reads besides its tokens: the timestep embedding e (B, F, D) (float32, with the
    text modulation), its projection e6 (B, F, 1, 6, D), the RoPE angles of the tokens and the token grid (h, w)."""

    e: Tensor
    e6: Tensor
    rope: tuple[Tensor, Tensor]
    grid: tuple[int, int]


@dataclass
class DiTOutput:
    """Velocity (B, C, F, H, W) and the pass's own rotated keys/values per layer: (B, N, heads, hd)."""

    velocity: Tensor
    keys: list[Tensor]
    values: list[Tensor]


def sinusoidal(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding [cos, sin] of timesteps t: (...,) -> (..., dim), float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float64) / half)
    args = t.to(torch.float64)[..., None] * freqs
    return torch.cat([args.cos(), args.sin()], dim=-1).float()


def precondition(x: Tensor, out: Tensor, t: Tensor) -> Tensor:
    """Velocity from the network output with a skip from the input, for unit-variance latents.

    With x_s = (1 - s) x0 + s noise, the best linear guess of v = noise - x0 from x_s is skip(s) * x_s,
    skip = (2s - 1) / ((1 - s)^2 + s^2), and the rest has standard deviation scale(s); the network only
    predicts that rest. At s = 1 it predicts -x0 from the text alone instead of copying the noise through
    every layer. x, out: (B, C, F, H, W); t: (B, F) timesteps.
    """
    s = (t.float() / 1000.0)[:, None, :, None, None]  # (B, 1, F, 1, 1)
    den = (1 - s) ** 2 + s**2
    skip = (2 * s - 1) / den
    scale = (2 - (2 * s - 1) ** 2 / den).clamp_min(0).sqrt()
    return (skip * x.float() + scale * out.float()).to(out.dtype)


class _Attention(nn.Module):
    """Projections q, k, v, o and RMS norms of queries and keys across all heads (Wan2.1)."""

    def __init__(self, dim: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)


class SelfAttention(_Attention):
    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], past: LayerPast | None, mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x: (B, N, D); past: keys/values (B, M, h, hd), or lists of parts (B, Mi, h, hd) that concatenate to
        them; mask: (B, 1, N, M + N) bool or None."""
        B, N, D = x.shape
        q = apply_rope(self.norm_q(self.q(x)).view(B, N, self.heads, -1), *rope)  # (B, N, h, hd)
        k = apply_rope(self.norm_k(self.k(x)).view(B, N, self.heads, -1), *rope)
        v = self.v(x).view(B, N, self.heads, -1)
        if past is None:
            k_all, v_all = k, v
        elif isinstance(past[0], Tensor):
            k_all, v_all = torch.cat([past[0], k], 1), torch.cat([past[1], v], 1)  # type: ignore[list-item]
        else:  # the context in parts: this concatenation is its only copy
            k_all, v_all = torch.cat([*past[0], k], 1), torch.cat([*past[1], v], 1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k_all.transpose(1, 2), v_all.transpose(1, 2), attn_mask=mask
        )  # (B, h, N, hd)
        return self.o(out.transpose(1, 2).reshape(B, N, D)), k, v


class CrossAttention(_Attention):
    def kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """context: (B, T, D) embedded text -> keys, values (B, T, h, hd)."""
        B, T, _ = context.shape
        return self.norm_k(self.k(context)).view(B, T, self.heads, -1), self.v(context).view(B, T, self.heads, -1)

    def forward(self, x: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """x: (B, F, P, D) tokens; k, v: (B, F, T, h, hd), each frame attends to its own condition."""
        B, Fr, P, D = x.shape
        q = self.norm_q(self.q(x)).view(B * Fr, P, self.heads, -1)
        k, v = k.flatten(0, 1), v.flatten(0, 1)  # (B * F, T, h, hd)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o(out.transpose(1, 2).reshape(B, Fr, P, D))


class Block(nn.Module):
    """Self-attention, cross-attention and FFN, modulated per latent frame by the timestep."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.norm1 = Float32LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(d, cfg.num_heads, cfg.eps)
        self.norm3 = Float32LayerNorm(d, eps=cfg.eps) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(d, cfg.num_heads, cfg.eps)
        self.norm2 = Float32LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)

    def forward(
        self,
        x: Tensor,
        e: Tensor,
        rope: tuple[Tensor, Tensor],
        cross: tuple[Tensor, Tensor],
        past: LayerPast | None,
        mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x: (B, F, P, D) tokens; e: (B, F, 1, 6, D) per-frame timestep projection (float32)."""
        shift, scale, gate, c_shift, c_scale, c_gate = (self.modulation.float() + e).unbind(-2)  # (B, F, 1, D)
        h = (self.norm1(x.float()) * (1 + scale) + shift).type_as(x)
        attn, k, v = self.self_attn(h.flatten(1, 2), rope, past, mask)
        x = (x.float() + attn.view_as(x) * gate).type_as(x)
        x = x + self.cross_attn(self.norm3(x.float()).type_as(x), *cross)
        h = (self.norm2(x.float()) * (1 + c_scale) + c_shift).type_as(x)
        x = (x.float() + self.ffn(h).float() * c_gate).type_as(x)
        return x, k, v


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.norm = Float32LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(d, cfg.out_channels * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, d) / d**0.5)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        """x: (B, F, P, D); e: (B, F, D) time embedding -> (B, F, P, C * patch volume), float32."""
        shift, scale = (self.modulation.float() + e.float()[:, :, None, None, :]).unbind(-2)  # (B, F, 1, D)
        return self.head((self.norm(x.float()) * (1 + scale) + shift).to(self.head.weight.dtype)).float()


class CausalWanDiT(nn.Module):
    """Wan2.1 DiT with block-causal attention over a caller-owned KV cache. Predicts flow velocity."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        c = self.config = config
        self.patch_embedding = nn.Conv3d(c.in_channels, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(c.text_dim, c.dim), nn.GELU(approximate="tanh"), nn.Linear(c.dim, c.dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(c.freq_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, c.dim * 6))
        # Global text conditioning through the modulation (as class labels in DiT) from the first text
        # token (MiniLM's sentence embedding): with one pooled token, cross-attention alone reduces to a
        # constant bias per prompt. The norm brings unit-length embeddings (components ~ 1 / sqrt(text_dim))
        # to unit scale.
        self.text_modulation = (
            nn.Sequential(
                nn.LayerNorm(c.text_dim, elementwise_affine=False),
                nn.Linear(c.text_dim, c.dim),
                nn.SiLU(),
                nn.Linear(c.dim, c.dim),
            )
            if c.text_modulation
            else None
        )
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.num_layers))
        self.head = Head(c)
        # Structure input (video to video): the encoded input frames, added to the tokens through their own
        # patch embedding. It starts at zero and has no bias, so a model grown from one without it draws
        # what it drew before, and an all-zero input is the same as none. Registered last, so that the
        # parameters of a model without it keep their order (a training state grows, see train/checkpoint.py).
        self.structure_embedding: nn.Conv3d | None = None
        if c.structure_channels:
            conv = nn.Conv3d(c.structure_channels, c.dim, c.patch_size, stride=c.patch_size, bias=False)
            nn.init.zeros_(conv.weight)
            self.structure_embedding = conv
        # Refiner (models/refiner.py): a zero-initialised correction at latent resolution, registered last too.
        self.refiner: LatentRefiner | None = None
        if c.refiner_channels:
            self.refiner = LatentRefiner(c.out_channels, c.structure_channels, c.refiner_channels, c.dim)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> CausalWanDiT:
        """`.to()`, `.half()`, `.bfloat16()`, ...: parameters of `FLOAT32_MODULES` (and their grads) never go
        below float32; cast to a half type they become float32 (moved to the new device, values kept)."""
        keep = {id(t) for n, p in self.named_parameters() if keeps_float32(n) for t in (p, p.grad) if t is not None}

        def cast(t: Tensor) -> Tensor:
            out = fn(t)
            if id(t) in keep and isinstance(out, Tensor) and out.dtype in _HALF:
                return t.to(device=out.device, dtype=torch.float32)
            return out

        return super()._apply(cast, recurse)

    def cross_kv(self, text: Tensor) -> CrossKV:
        """Text embeddings (B, T, text_dim) -> per-layer cross-attention keys/values, cached per prompt."""
        context = self.text_embedding(text.to(self.patch_embedding.weight.dtype))  # (B, T, D)
        kv = [blk.cross_attn.kv(context) for blk in self.blocks]  # type: ignore[union-attr,operator]
        mod = None
        if self.text_modulation is not None:
            mod = self.text_modulation(text[:, 0].to(param_dtype(self.text_modulation))).float()  # (B, D)
        return CrossKV(torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv]), mod)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        frame_pos: Tensor,
        cross: CrossKV,
        past: PastKV | list[PastKV] | None = None,
        mask: Tensor | None = None,
        structure: Tensor | None = None,
    ) -> DiTOutput:
        """One pass over the latent frames x: (B, C, F, H, W) at timesteps t: (B, F).

        frame_pos: (B, F) temporal RoPE positions; past: keys/values to attend to (already rotated), or a list
        of parts in order (views of a cache, say), concatenated once per layer with the pass's own;
        mask: (B, 1, N, M + N) bool, True where a query token may attend (None: attend to everything);
        structure: (B, Cs, F, H, W) encoded input frames of a model with `structure_channels` (zeros where a
        frame has none), or None.

        The pass in its parts, as a pipeline stage runs them (`family.stages`): `embed` (the first stage),
        `modulation` (every stage), `run_blocks` (each stage its own blocks), `output` (the last stage).
        """
        tokens = self.embed(x, structure)  # (B, F, P, D)
        mod = self.modulation(t, frame_pos, cross, x.shape[-2:])
        tokens, keys, values = self.run_blocks(tokens, mod, cross, past, mask)
        return DiTOutput(self.output(x, t, tokens, mod, structure), keys, values)

    def embed(self, x: Tensor, structure: Tensor | None = None) -> Tensor:
        """Latents (B, C, F, H, W) (and the structure input) -> tokens (B, F, P, D) in the model's dtype."""
        tokens = self.patch_embedding(x.to(self.patch_embedding.weight.dtype))  # (B, D, F, h, w)
        if structure is not None:
            if self.structure_embedding is None:
                raise InputError("this model takes no structure input (its structure_channels is 0)")
            tokens = tokens + self.structure_embedding(structure.to(tokens.dtype))  # (B, D, F, h, w)
        return tokens.flatten(3).permute(0, 2, 3, 1)  # (B, F, P, D)

    def modulation(self, t: Tensor, frame_pos: Tensor, cross: CrossKV, size: Sequence[int]) -> PassModulation:
        """What every block and the head read besides the tokens: the timestep embedding and its projection
        (with the text modulation), the RoPE angles; `size`: the latents' (H, W)."""
        c = self.config
        grid = (size[0] // c.patch_size[1], size[1] // c.patch_size[2])
        e = self.time_embedding(sinusoidal(t, c.freq_dim).to(param_dtype(self.time_embedding))).float()  # (B, F, D)
        if cross.mod is not None:
            e = e + cross.mod
        e6 = self.time_projection(e.to(param_dtype(self.time_projection))).float().unflatten(-1, (6, c.dim))
        rope = rope_angles(frame_pos, grid, c.head_dim, c.rope_theta)
        return PassModulation(e, e6[:, :, None], rope, grid)  # e6: (B, F, 1, 6, D)

    def run_blocks(
        self,
        tokens: Tensor,
        mod: PassModulation,
        cross: CrossKV,
        past: PastKV | list[PastKV] | None,
        mask: Tensor | None,
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Tokens (B, F, P, D) through `self.blocks`, block i with layer i of `cross` and `past` (a pipeline stage
        holds only its own blocks, and the caches of only those); returns the tokens and each block's keys/values."""
        parts = [past] if isinstance(past, PastKV) else (past or [])
        if parts and parts[0].k.dtype != tokens.dtype:
            raise InputError(f"past keys/values are {parts[0].k.dtype}, but the model computes in {tokens.dtype}")
        keys, values = [], []
        for i, blk in enumerate(self.blocks):
            layer_past = _layer_past(past, i)
            tokens, k, v = blk(tokens, mod.e6, mod.rope, (cross.k[i], cross.v[i]), layer_past, mask)
            keys.append(k)
            values.append(v)
        return tokens, keys, values

    def output(
        self, x: Tensor, t: Tensor, tokens: Tensor, mod: PassModulation, structure: Tensor | None = None
    ) -> Tensor:
        """The head over the last block's tokens (B, F, P, D) -> velocity (B, C, F, H, W), float32 (with the
        refiner and the preconditioning, which read the input latents x)."""
        out = self._unpatchify(self.head(tokens, mod.e), mod.grid)  # (B, C, F, H, W)
        if self.refiner is not None:
            out = self.refiner(x, out, structure, mod.e)  # (B, C, F, H, W)
        if self.config.precondition:
            out = precondition(x, out, t)
        return out

    def _unpatchify(self, out: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, F, h * w, ph * pw * C) -> (B, C, F, h * ph, w * pw), Wan's channel order."""
        c = self.config
        B, Fr = out.shape[:2]
        _, ph, pw = c.patch_size
        out = out.reshape(B, Fr, grid[0], grid[1], ph, pw, c.out_channels)
        return out.permute(0, 6, 1, 2, 4, 3, 5).reshape(B, c.out_channels, Fr, grid[0] * ph, grid[1] * pw)
