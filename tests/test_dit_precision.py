"""Reduced precision: the DiT runs in bfloat16 and float16 on the CPU, close to float32, with the norms,
modulation, timestep path and head in float32 as Wan2.1 keeps them.

Tolerance: the relative L2 error of the velocity and of the last layer's keys/values against float32 must
stay below 2.5 x the dtype's machine epsilon (`torch.finfo(dtype).eps`: 2^-7 = 7.8e-3 for bfloat16, 2^-10 =
9.8e-4 for float16), so 1.95e-2 and 2.4e-3. Every matmul in the half-precision model rounds its inputs and
output to within eps / 2; these roundings are independent, so they add in quadrature, and the float32 norms
rescale each layer's residual stream rather than let the error compound. Measured (the tiny test model, a
reduced Wan-1.3B shape and the trained built-in model, with and without past keys/values and a mask): 0.7 to
1.2 eps (bf16 4.5e-3 to 8.5e-3, fp16 5.5e-4 to 1.2e-3), so the bound leaves a margin of 2x for other seeds
and depths, while a layer that drops a term or a cast that loses the exponent range fails it by orders of
magnitude. Norms and modulation running in half precision would cost little accuracy on these weights, so
`test_float32_paths` checks the dtypes directly.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from framecast.errors import InputError
from framecast.models.checkpoint import load_dit
from framecast.models.config import DiTConfig, preset
from framecast.models.dit import CausalWanDiT, DiTOutput, Float32LayerNorm, PastKV, keeps_float32

HALF = [torch.bfloat16, torch.float16]
BUILTIN = Path(__file__).parent.parent / "src" / "framecast" / "weights" / "tiny" / "dit"


def tolerance(dtype: torch.dtype) -> float:
    return 2.5 * torch.finfo(dtype).eps


def wan13b_reduced(num_layers: int = 4) -> DiTConfig:
    """Wan2.1 1.3B's shape at a size that runs in well under a second on a CPU: head_dim 128 (1.3B: 12 heads
    x 128, here 2 x 128), the FFN/dim ratio 8960/1536, text_dim 4096 (UMT5), freq_dim 256, 3 latent frames per
    chunk, eps 1e-6; a 12x16 latent frame (48 tokens) instead of 60x104."""
    full = preset("wan-1.3b")
    dim = 2 * full.head_dim
    return DiTConfig(
        dim=dim,
        num_heads=2,
        num_layers=num_layers,
        ffn_dim=round(dim * full.ffn_dim / full.dim / 2) * 2,
        latent_height=12,
        latent_width=16,
    )


def wan13b_model(num_layers: int = 4) -> CausalWanDiT:
    torch.manual_seed(0)
    return CausalWanDiT(wan13b_reduced(num_layers)).eval()


def _forward(
    model: CausalWanDiT, dtype: torch.dtype, past_chunks: int = 2, mask: bool = True, seed: int = 0
) -> DiTOutput:
    """One pass over a chunk of 2 rows at different timesteps, attending to `past_chunks` chunks of random past
    keys/values (rounded to `dtype`, as a half-precision cache holds them) through a random mask, and to a
    5-token prompt.
    The inputs are drawn in float32 from `seed`, so every dtype sees the same ones."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    B, Fr = 2, c.chunk_frames
    x = torch.randn(B, c.in_channels, Fr, c.latent_height, c.latent_width, generator=g)
    t = torch.tensor([700.0, 250.0])[:, None].expand(B, Fr)
    pos = torch.arange(past_chunks * Fr, (past_chunks + 1) * Fr).expand(B, Fr)
    text = torch.randn(B, 5, c.text_dim, generator=g)
    N, M = Fr * c.tokens_per_frame, past_chunks * Fr * c.tokens_per_frame
    shape = (c.num_layers, B, M, c.num_heads, c.head_dim)
    compute = model.patch_embedding.weight.dtype  # past rounded to `dtype`, handed over in the model's dtype

    def kv() -> torch.Tensor:
        return torch.randn(shape, generator=g).to(dtype).to(compute)

    past = PastKV(kv(), kv())
    m = None
    if mask:
        m = torch.rand(B, 1, N, M + N, generator=g) > 0.3
        m[..., M:] = True  # the chunk sees itself; a random share of the past is hidden
    structure = None
    if c.structure_channels:
        structure = torch.randn(B, c.structure_channels, Fr, c.latent_height, c.latent_width, generator=g)
    with torch.no_grad():
        return model(x, t, pos, model.cross_kv(text).per_frame(Fr), past if past_chunks else None, m, structure)


def fp16_supported() -> bool:
    """Whether this CPU build runs the ops of a float16 forward (conv3d, linear, layer norm, attention)."""
    try:
        m = tiny_model().to(torch.float16)
        _forward(m, torch.float16, past_chunks=1)
    except (RuntimeError, NotImplementedError):
        return False
    return True


DTYPES = [
    torch.bfloat16,
    pytest.param(
        torch.float16,
        marks=pytest.mark.skipif(not fp16_supported(), reason="this torch CPU build lacks float16 kernels"),
    ),
]


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.float() - ref.float()).norm() / ref.float().norm()).item()


def _models() -> list[tuple[str, CausalWanDiT]]:
    models = [("tiny test model", tiny_model()), ("wan-1.3b reduced", wan13b_model())]
    if (BUILTIN / "model.safetensors").is_file():
        models.append(("built-in tiny, trained", load_dit(BUILTIN)))
    return models


MODELS = _models()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,model", MODELS, ids=[n for n, _ in MODELS])
@pytest.mark.parametrize("past_chunks", [0, 2])
def test_half_precision_close_to_float32(name: str, model: CausalWanDiT, dtype: torch.dtype, past_chunks: int) -> None:
    ref = _forward(model, dtype, past_chunks)  # float32 model; past rounded to dtype, as the half run sees it
    half = copy.deepcopy(model).to(dtype)
    out = _forward(half, dtype, past_chunks)
    assert out.velocity.dtype == torch.float32  # as Wan2.1 returns it (`u.float()`)
    assert all(k.dtype == dtype for k in out.keys + out.values)  # what the cache stores: half the memory
    tol = tolerance(dtype)
    errs = [rel_err(out.velocity, ref.velocity), rel_err(out.keys[-1], ref.keys[-1])]
    errs.append(rel_err(out.values[-1], ref.values[-1]))
    assert max(errs) < tol, f"{name} {dtype}: relative errors {errs} (tolerance {tol:.2e})"
    assert max(errs) > 0  # it did run in reduced precision


@pytest.mark.parametrize("dtype", DTYPES)
def test_stream_of_chunks_in_half_precision(dtype: torch.dtype) -> None:
    """Three chunks in turn, each attending to the keys/values the earlier ones left (a growing cache in
    `dtype`): every chunk stays within tolerance of the float32 stream, and the cached pass equals the
    half-precision recompute of all chunks under a block-causal mask."""
    model = wan13b_model(num_layers=2)
    half = copy.deepcopy(model).to(dtype)
    c = model.config
    g = torch.Generator().manual_seed(5)
    chunks = [torch.randn(1, c.in_channels, c.chunk_frames, c.latent_height, c.latent_width, generator=g)]
    chunks += [torch.randn_like(chunks[0]) for _ in range(2)]
    text = torch.randn(1, 7, c.text_dim, generator=g)
    t = torch.full((1, c.chunk_frames), 0.0)

    def stream(m: CausalWanDiT) -> list[torch.Tensor]:
        cross = m.cross_kv(text).per_frame(c.chunk_frames)
        past: PastKV | None = None
        out = []
        for n, x in enumerate(chunks):
            pos = torch.arange(n * c.chunk_frames, (n + 1) * c.chunk_frames)[None]
            o = m(x, t, pos, cross, past)
            k, v = torch.stack(o.keys), torch.stack(o.values)  # (L, 1, N, h, hd)
            past = PastKV(k, v) if past is None else PastKV(torch.cat([past.k, k], 2), torch.cat([past.v, v], 2))
            out.append(o.velocity)
        return out

    with torch.no_grad():
        ref, got = stream(model), stream(half)
        for n, (a, b) in enumerate(zip(got, ref, strict=True)):
            assert rel_err(a, b) < tolerance(dtype), f"chunk {n}: {rel_err(a, b):.2e}"
        # the same three chunks in one uncached pass, block-causal
        n_tok = c.chunk_frames * c.tokens_per_frame
        block = torch.arange(3 * n_tok) // n_tok
        mask = (block[:, None] >= block[None, :])[None, None]
        full = half(
            torch.cat(chunks, 2),
            torch.zeros(1, 3 * c.chunk_frames),
            torch.arange(3 * c.chunk_frames)[None],
            half.cross_kv(text).per_frame(3 * c.chunk_frames),
            None,
            mask,
        ).velocity
    cached = torch.cat(got, 2)
    assert rel_err(cached, full) < tolerance(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_float32_paths(dtype: torch.dtype) -> None:
    """After `.to(dtype)` the norms, modulation, timestep path and head hold float32 weights (their values
    unchanged) and compute in float32; the projections, attention and FFN hold `dtype`."""
    base = tiny_model(0, **_builtin_extras())
    model = copy.deepcopy(base).to(dtype)
    originals = dict(base.named_parameters())
    kept = 0
    for name, p in model.named_parameters():
        if keeps_float32(name):
            kept += 1
            assert p.dtype == torch.float32, name
            assert torch.equal(p, originals[name]), name  # kept, never rounded through dtype
        else:
            assert p.dtype == dtype, name
    assert kept >= 2 * model.config.num_layers + 6  # modulation per block and head, norm3 weights, time path
    for n in ("blocks.0.self_attn.q.weight", "blocks.0.ffn.0.weight", "patch_embedding.weight"):
        assert model.get_parameter(n).dtype == dtype

    seen: dict[str, torch.dtype] = {}

    def record(name: str):  # type: ignore[no-untyped-def]
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            seen[name] = out.dtype

        return hook

    for name, module in model.named_modules():
        if isinstance(module, Float32LayerNorm) or name in ("time_embedding", "time_projection", "head"):
            module.register_forward_hook(record(name))
    out = _forward(model, dtype)
    assert seen["blocks.0.norm1"] == seen["blocks.0.norm2"] == seen["blocks.0.norm3"] == torch.float32
    assert seen["head.norm"] == seen["head"] == torch.float32
    assert seen["time_embedding"] == seen["time_projection"] == torch.float32
    assert out.velocity.dtype == torch.float32 and out.keys[0].dtype == dtype


def _builtin_extras() -> dict[str, object]:
    """The tiny preset's extras (sentence modulation, preconditioning, structure input, refiner) on the test size."""
    return dict(text_modulation=True, precondition=True, structure_channels=4, refiner_channels=8)


def test_casts_round_trip_and_never_narrow_the_kept_parameters() -> None:
    model = tiny_model()
    mod = model.blocks[0].modulation.detach().clone()
    q = model.blocks[0].self_attn.q.weight.detach().clone()
    model.bfloat16()
    assert model.blocks[0].modulation.dtype == torch.float32 and torch.equal(model.blocks[0].modulation, mod)
    model.half()
    assert model.blocks[0].self_attn.q.weight.dtype == torch.float16
    assert torch.equal(model.blocks[0].modulation, mod)
    model.float()
    assert model.blocks[0].self_attn.q.weight.dtype == torch.float32
    assert torch.equal(model.blocks[0].self_attn.q.weight, q.bfloat16().half().float())
    model.double()  # wider casts apply to everything
    assert model.blocks[0].modulation.dtype == torch.float64


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_half_parameters_still_compute_norms_in_float32(dtype: torch.dtype) -> None:
    """A model whose every parameter is `dtype` (loaded with `assign=True`, or cast module by module, which
    bypasses the model's cast rule) runs: the norms and modulation upcast their weights."""
    model = tiny_model(0, **_builtin_extras())
    ref = _forward(model, dtype)
    half = copy.deepcopy(model)
    half.load_state_dict({k: v.to(dtype) for k, v in half.state_dict().items()}, assign=True)
    assert {p.dtype for p in half.parameters()} == {dtype}
    out = _forward(half, dtype)
    assert out.velocity.dtype == torch.float32
    assert rel_err(out.velocity, ref.velocity) < tolerance(dtype)


def test_past_in_another_dtype_is_a_clear_error() -> None:
    model = tiny_model().to(torch.bfloat16)
    c = model.config
    past = PastKV(*torch.zeros(2, c.num_layers, 1, c.tokens_per_frame, c.num_heads, c.head_dim))
    x = torch.zeros(1, c.in_channels, c.chunk_frames, c.latent_height, c.latent_width)
    cross = model.cross_kv(torch.zeros(1, 1, c.text_dim)).per_frame(c.chunk_frames)
    with pytest.raises(InputError, match="past keys/values are torch.float32"):
        model(x, torch.zeros(1, c.chunk_frames), torch.arange(c.chunk_frames)[None], cross, past)
