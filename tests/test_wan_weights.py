"""Wan2.1-family DiT weights from local files (models/wan_weights.py), on tiny random models built offline.

The same weights saved by diffusers' `save_pretrained` (a WanPipeline's transformer/), in the original Wan2.1
layout (sharded, with an index) and as a Self-Forcing-style `generator_ema` file with `model.` prefixes over
another base all load into identical `CausalWanDiT`s; a LoRA merges as W + scale * B @ A; bad files raise
one-line `ModelLoadError`s that name the file and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from framecast.errors import ModelLoadError
from framecast.models.config import DiTConfig
from framecast.models.convert import from_diffusers, to_diffusers
from framecast.models.dit import CausalWanDiT, PastKV
from framecast.models.wan_weights import load_wan_dit, locate, read_checkpoint, read_wan_state, wan_config
from tests.test_dit_diffusers import _randomize, _reference

diffusers = pytest.importorskip("diffusers")

# the settings a Wan config does not hold, for this test size
RUNTIME = dict(chunk_frames=2, latent_height=8, latent_width=6)
CFG = DiTConfig(
    dim=48, num_heads=4, num_layers=2, ffn_dim=64, in_channels=4, out_channels=4, text_dim=20, freq_dim=32, **RUNTIME
)


def reference(seed: int) -> torch.nn.Module:
    """A tiny diffusers WanTransformer3DModel with random weights (every tensor, not just the default init)."""
    model = _reference(CFG)
    _randomize(model, seed)
    return model


def wan_state(ref: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The reference's weights under the original Wan2.1 names."""
    return {k: v.detach().clone().contiguous() for k, v in from_diffusers(ref.state_dict()).items()}


def save_diffusers(ref: Any, root: Path) -> Path:
    """A WanPipeline-shaped folder: model_index.json and transformer/ written by `save_pretrained`."""
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(
        json.dumps({"_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"]})
    )
    ref.save_pretrained(root / "transformer")
    return root


def wan_config_json(**changes: Any) -> dict[str, Any]:
    """config.json as the original Wan2.1 checkpoints write it, for CFG."""
    raw = {
        "_class_name": "WanModel",
        "_diffusers_version": "0.30.0",
        "dim": CFG.dim,
        "eps": CFG.eps,
        "ffn_dim": CFG.ffn_dim,
        "freq_dim": CFG.freq_dim,
        "in_dim": CFG.in_channels,
        "model_type": "t2v",
        "num_heads": CFG.num_heads,
        "num_layers": CFG.num_layers,
        "out_dim": CFG.out_channels,
        "text_len": 512,
        "text_dim": CFG.text_dim,
    }
    raw.update(changes)
    return raw


def save_wan(state: dict[str, torch.Tensor], root: Path, shards: int = 2) -> Path:
    """The original layout: config.json and the weights in `shards` safetensors files with an index."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(wan_config_json()))
    names = sorted(state)
    if shards == 1:
        save_file(state, str(root / "diffusion_pytorch_model.safetensors"))
        return root
    weight_map = {}
    for i in range(shards):
        file = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in names[i::shards]}
        save_file(part, str(root / file))
        weight_map.update(dict.fromkeys(part, file))
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
        "weight_map": weight_map,
    }
    (root / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    return root


def forward(model: CausalWanDiT, seed: int = 0) -> torch.Tensor:
    """Velocity of one chunk of 2 rows, with past keys/values and a mask."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    Fr, B = c.chunk_frames, 2
    x = torch.randn(B, c.in_channels, Fr, c.latent_height, c.latent_width, generator=g)
    text = torch.randn(B, 7, c.text_dim, generator=g)
    N, M = Fr * c.tokens_per_frame, c.tokens_per_frame
    shape = (c.num_layers, B, M, c.num_heads, c.head_dim)
    dt = model.patch_embedding.weight.dtype  # the cache is in the model's dtype
    past = PastKV(torch.randn(shape, generator=g).to(dt), torch.randn(shape, generator=g).to(dt))
    mask = torch.rand(B, 1, N, M + N, generator=g) > 0.2
    mask[..., M:] = True
    t = torch.tensor([[600.0] * Fr, [100.0] * Fr])
    with torch.no_grad():
        return model(
            x, t, torch.arange(1, 1 + Fr).expand(B, Fr), model.cross_kv(text).per_frame(Fr), past, mask
        ).velocity


def assert_same(a: CausalWanDiT, b: CausalWanDiT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert torch.equal(forward(a), forward(b))


@pytest.fixture(scope="module")
def ref() -> torch.nn.Module:
    return reference(seed=1)


@pytest.fixture(scope="module")
def other() -> torch.nn.Module:
    return reference(seed=2)


def test_three_layouts_load_the_same_model(ref: torch.nn.Module, other: torch.nn.Module, tmp_path: Path) -> None:
    pipe = save_diffusers(ref, tmp_path / "pipe")
    wan = save_wan(wan_state(ref), tmp_path / "wan", shards=2)
    base = save_wan(wan_state(other), tmp_path / "other-base", shards=1)  # different weights under the checkpoint
    ckpt = tmp_path / "self_forcing_dmd.pt"
    torch.save(
        {
            "generator_ema": {f"model.{k}": v for k, v in wan_state(ref).items()},
            "generator": {f"model.{k}": v for k, v in wan_state(other).items()},  # the non-EMA weights: not taken
            "step": 600,
        },
        ckpt,
    )
    assert locate(pipe) == (pipe / "transformer", "diffusers") and locate(wan) == (wan, "wan")
    notes = read_wan_state(base, ckpt, **RUNTIME).notes
    assert "Wan2.1 layout" in notes[0] and "entry 'generator_ema': 69 of 69 tensors" in notes[1], notes

    from_pipe = load_wan_dit(pipe, **RUNTIME)
    from_transformer = load_wan_dit(pipe / "transformer", **RUNTIME)
    from_wan = load_wan_dit(wan, **RUNTIME)
    from_ckpt = load_wan_dit(base, ckpt, **RUNTIME)
    assert from_wan.config == dataclasses.replace(CFG, extra={"text_len": 512}) and from_pipe.config == CFG
    for model in (from_transformer, from_wan, from_ckpt):
        assert_same(from_pipe, model)

    # and they are diffusers' model: the same velocity on one chunk with full attention
    c = CFG
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, c.in_channels, c.chunk_frames, c.latent_height, c.latent_width, generator=g)
    text = torch.randn(2, 7, c.text_dim, generator=g)
    t = torch.tensor([700.0, 250.0])
    with torch.no_grad():
        expected = ref(x, t, text, return_dict=False)[0]
        frames = c.chunk_frames
        ours = from_ckpt(
            x,
            t[:, None].expand(2, frames),
            torch.arange(frames).expand(2, frames),
            from_ckpt.cross_kv(text).per_frame(frames),
        ).velocity
    assert (ours - expected).abs().max().item() < 1e-4 * expected.abs().max().item()


def test_checkpoint_over_a_base_changes_it_and_equals_a_folder_with_its_weights(
    ref: torch.nn.Module, other: torch.nn.Module, tmp_path: Path
) -> None:
    base = save_wan(wan_state(ref), tmp_path / "base")
    ckpt = tmp_path / "causvid.pt"
    torch.save({"generator": wan_state(other)}, ckpt)  # CausVid: under `generator`, here without prefixes
    tuned = load_wan_dit(base, ckpt, **RUNTIME)
    plain = load_wan_dit(base, **RUNTIME)
    assert not torch.allclose(forward(tuned), forward(plain), atol=1e-3)
    assert_same(tuned, load_wan_dit(save_wan(wan_state(other), tmp_path / "tuned-folder"), **RUNTIME))
    assert_same(tuned, load_wan_dit(save_diffusers(other, tmp_path / "tuned-pipe"), **RUNTIME))


@pytest.mark.parametrize("layout", ["state_dict", "model", "bare", "safetensors-diffusers", "generator-key"])
def test_checkpoint_key_layouts(layout: str, ref: torch.nn.Module, other: torch.nn.Module, tmp_path: Path) -> None:
    base = save_wan(wan_state(ref), tmp_path / "base")
    weights = wan_state(other)
    if layout == "safetensors-diffusers":  # one safetensors file (Krea), here in diffusers' names with a prefix
        ckpt = tmp_path / "krea.safetensors"
        save_file({f"transformer.{k}": v for k, v in to_diffusers(weights).items()}, str(ckpt))
    elif layout == "generator-key":  # the non-EMA weights of a Self-Forcing file, chosen by key
        ckpt = tmp_path / "sf.pt"
        torch.save({"generator_ema": wan_state(ref), "generator": {f"model.{k}": v for k, v in weights.items()}}, ckpt)
    else:
        ckpt = tmp_path / f"{layout}.pt"
        inner = {f"module.model.{k}": v for k, v in weights.items()}
        torch.save(inner if layout == "bare" else {layout: inner, "optimizer": {"lr": 1e-5}}, ckpt)
    key = "generator" if layout == "generator-key" else None
    assert_same(
        load_wan_dit(base, ckpt, checkpoint_key=key, **RUNTIME),
        load_wan_dit(save_wan(weights, tmp_path / "w"), **RUNTIME),
    )


def _lora_pairs(
    state: dict[str, torch.Tensor], targets: list[str], rank: int, seed: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in targets:
        w = state[t + ".weight"]
        out[t] = (torch.randn(rank, w.shape[1], generator=g) * 0.1, torch.randn(w.shape[0], rank, generator=g) * 0.1)
    return out


TARGETS = ["blocks.0.self_attn.q", "blocks.1.cross_attn.o", "blocks.0.ffn.0", "blocks.1.ffn.2"]


def test_lora_in_the_checkpoint_merges_by_hand(ref: torch.nn.Module, tmp_path: Path) -> None:
    """LongLive: a generator file with the LoRA under `generator_lora` (peft names: base_model.model.T.lora_A)."""
    state = wan_state(ref)
    base = save_wan(state, tmp_path / "base")
    pairs = _lora_pairs(state, TARGETS, rank=8, seed=4)
    lora = {}
    for t, (A, B) in pairs.items():
        lora[f"base_model.model.{t}.lora_A.weight"] = A
        lora[f"base_model.model.{t}.lora_B.weight"] = B
    ckpt = tmp_path / "longlive.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in state.items()}, "generator_lora": lora}, ckpt)
    model = load_wan_dit(base, ckpt, **RUNTIME)
    got = model.state_dict()
    for t, (A, B) in pairs.items():
        expected = state[t + ".weight"] + 1.0 * (B @ A)  # alpha = rank: scale 1
        assert torch.allclose(got[t + ".weight"], expected, atol=1e-6, rtol=0), t
    untouched = [k for k in state if not any(k == t + ".weight" for t in TARGETS)]
    assert all(torch.equal(got[k], state[k]) for k in untouched)
    # lora_scale and alpha given by the caller scale the update
    half = load_wan_dit(base, ckpt, lora_alpha=4.0, lora_scale=0.5, **RUNTIME).state_dict()
    A, B = pairs[TARGETS[0]]
    assert torch.allclose(
        half[TARGETS[0] + ".weight"], state[TARGETS[0] + ".weight"] + 0.5 * 4.0 / 8 * (B @ A), atol=1e-6, rtol=0
    )


def test_lora_file_with_down_up_and_alpha(ref: torch.nn.Module, tmp_path: Path) -> None:
    """A separate LoRA file in lora_down/lora_up form with a stored alpha, in diffusers' names."""
    state = wan_state(ref)
    base = save_wan(state, tmp_path / "base")
    pairs = _lora_pairs(state, TARGETS, rank=4, seed=5)
    lora: dict[str, torch.Tensor] = {}
    for t, (A, B) in pairs.items():
        name = next(iter(to_diffusers({t + ".weight": A}))).removesuffix(".weight")  # e.g. blocks.0.attn1.to_q
        lora[f"transformer.{name}.lora_down.weight"] = A
        lora[f"transformer.{name}.lora_up.weight"] = B
        lora[f"transformer.{name}.alpha"] = torch.tensor(2.0)
    file = tmp_path / "lora.safetensors"
    save_file(lora, str(file))
    got = load_wan_dit(base, lora=file, **RUNTIME).state_dict()
    for t, (A, B) in pairs.items():
        assert torch.allclose(got[t + ".weight"], state[t + ".weight"] + (2.0 / 4) * (B @ A), atol=1e-6, rtol=0), t


def test_bfloat16_load_keeps_the_float32_parts(ref: torch.nn.Module, tmp_path: Path) -> None:
    wan = save_wan(wan_state(ref), tmp_path / "wan")
    full = load_wan_dit(wan, **RUNTIME)
    half = load_wan_dit(wan, dtype=torch.bfloat16, **RUNTIME)
    s32, s16 = full.state_dict(), half.state_dict()
    assert s16["blocks.0.self_attn.q.weight"].dtype == torch.bfloat16
    for k in ("blocks.0.modulation", "head.modulation", "blocks.1.norm3.weight", "time_projection.1.weight"):
        assert s16[k].dtype == torch.float32 and torch.equal(s16[k], s32[k]), k
    assert all(p.device.type == "cpu" for p in half.parameters())  # nothing left on the meta device
    v32 = forward(full)
    err = ((forward(half) - v32).norm() / v32.norm()).item()
    assert err < 2.5 * torch.finfo(torch.bfloat16).eps  # the tolerance of tests/test_dit_precision.py


def test_config_from_both_layouts() -> None:
    d = {
        "_class_name": "WanTransformer3DModel",
        "_diffusers_version": "0.33.0",
        "added_kv_proj_dim": None,
        "attention_head_dim": 128,
        "cross_attn_norm": True,
        "eps": 1e-06,
        "ffn_dim": 8960,
        "freq_dim": 256,
        "image_dim": None,
        "in_channels": 16,
        "num_attention_heads": 12,
        "num_layers": 30,
        "out_channels": 16,
        "patch_size": [1, 2, 2],
        "qk_norm": "rms_norm_across_heads",
        "rope_max_seq_len": 1024,
        "text_dim": 4096,
    }
    w = {
        "_class_name": "WanModel",
        "_diffusers_version": "0.30.0",
        "dim": 1536,
        "eps": 1e-06,
        "ffn_dim": 8960,
        "freq_dim": 256,
        "in_dim": 16,
        "model_type": "t2v",
        "num_heads": 12,
        "num_layers": 30,
        "out_dim": 16,
        "text_len": 512,
    }
    assert wan_config(d, "d") == DiTConfig()  # the wan-1.3b preset
    assert wan_config(w, "w") == DiTConfig(extra={"text_len": 512})
    assert wan_config(w, "w", chunk_frames=1).chunk_frames == 1
    with pytest.raises(ModelLoadError, match="model_type 'i2v'"):
        wan_config({**w, "model_type": "i2v", "in_dim": 36}, "w")
    with pytest.raises(ModelLoadError, match="image_dim"):
        wan_config({**d, "image_dim": 1280}, "d")
    with pytest.raises(ModelLoadError, match=r"unknown Wan2.1 config keys \['num_experts'\]"):
        wan_config({**w, "num_experts": 2}, "w")
    with pytest.raises(ModelLoadError, match="unknown DiT settings"):
        wan_config(w, "w", chunk_size=3)


# -- bad inputs ----------------------------------------------------------------------------------------------


class NotATensor:
    """Pickled into a checkpoint: weights_only loading refuses it."""


def _bad(fn: Any, *args: Any, match: str, **kw: Any) -> str:
    with pytest.raises(ModelLoadError, match=match) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def test_bad_bases(ref: torch.nn.Module, tmp_path: Path) -> None:
    state = wan_state(ref)
    _bad(load_wan_dit, tmp_path / "nowhere", match="DiT base folder not found: .*nowhere .*expected a Wan2.1 folder")
    (tmp_path / "empty").mkdir()
    _bad(load_wan_dit, tmp_path / "empty", match=r"no config.json in .*empty")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"hidden_size": 4}))
    _bad(load_wan_dit, odd, match="is no Wan2.1, diffusers or framecast DiT config")

    nofiles = tmp_path / "nofiles"
    nofiles.mkdir()
    (nofiles / "config.json").write_text(json.dumps(wan_config_json()))
    _bad(load_wan_dit, nofiles, match="no DiT weights in .*nofiles: expected diffusion_pytorch_model.safetensors")

    sharded = save_wan(state, tmp_path / "sharded", shards=2)
    shard = next(sharded.glob("*00002*.safetensors"))
    shard.rename(shard.with_suffix(".bak"))
    _bad(load_wan_dit, sharded, match=f"names shard {shard.name}, which is missing")
    (sharded / "diffusion_pytorch_model.safetensors.index.json").unlink()
    _bad(
        load_wan_dit,
        sharded,
        match=r"holds 1 diffusion_pytorch_model\*.safetensors file\(s\) but no diffusion_pytorch_model",
    )

    truncated = save_wan(state, tmp_path / "truncated", shards=1)
    f = truncated / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    _bad(load_wan_dit, truncated, match="diffusion_pytorch_model.safetensors is truncated or not safetensors")

    wrong = save_wan(state, tmp_path / "wrong", shards=1)
    (wrong / "config.json").write_text(json.dumps(wan_config_json(ffn_dim=80)))
    _bad(load_wan_dit, wrong, match=r"blocks.0.ffn.0.weight has shape \(64, 48\), but config.json gives \(80, 48\)")

    lacking = save_wan({k: v for k, v in state.items() if k != "head.modulation"}, tmp_path / "lacking", shards=1)
    _bad(load_wan_dit, lacking, match=r"miss tensors \['head.modulation'\] that config.json requires")

    extra = save_wan({**state, "img_emb.proj.0.weight": torch.zeros(2)}, tmp_path / "extra", shards=1)
    _bad(load_wan_dit, extra, match=r"have tensors \['img_emb.proj.0.weight'\] that config.json does not describe")


def test_bad_checkpoints(ref: torch.nn.Module, tmp_path: Path) -> None:
    state = wan_state(ref)
    base = save_wan(state, tmp_path / "base", shards=1)

    def load(ckpt: Path, **kw: Any) -> CausalWanDiT:
        return load_wan_dit(base, ckpt, **RUNTIME, **kw)

    _bad(load, tmp_path / "missing.pt", match="checkpoint not found: .*missing.pt")

    pickled = tmp_path / "objects.pt"
    torch.save({"generator": state, "config": NotATensor()}, pickled)
    msg = _bad(load, pickled, match="objects.pt holds a .*NotATensor object; .*weights_only=True")
    assert "Weights only load failed" not in msg

    inner = tmp_path / "inner.pt"
    torch.save({"generator": {**state, "step": 3}}, inner)
    _bad(load, inner, match=r"inner.pt \(under 'generator'\): entry 'step' is of type int, not a tensor")

    truncated = tmp_path / "truncated.pt"
    torch.save({"generator_ema": state}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    _bad(load, truncated, match="truncated.pt is truncated or not a torch file")

    st = tmp_path / "truncated.safetensors"
    save_file(state, str(st))
    st.write_bytes(st.read_bytes()[:-100])
    _bad(load, st, match="truncated.safetensors is truncated or not safetensors")

    shape = tmp_path / "shape.pt"
    torch.save({"generator": {**state, "blocks.1.ffn.2.weight": torch.zeros(48, 65)}}, shape)
    _bad(load, shape, match=r"shape.pt: blocks.1.ffn.2.weight has shape \(48, 65\), but the base gives \(48, 64\)")

    unknown = tmp_path / "unknown.pt"
    torch.save({"generator": {**state, "model.k_img.weight": torch.zeros(2)}}, unknown)
    _bad(load, unknown, match=r"has tensors \['k_img.weight'\] \(1 in all\) that its base does not")

    nothing = tmp_path / "nothing.pt"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, nothing)
    _bad(load, nothing, match="holds no weights: expected a dict of tensors or one under generator_ema")

    _bad(load, inner, checkpoint_key="generator_ema", match="has no entry 'generator_ema'; it has \\['generator'\\]")

    twice = tmp_path / "twice.pt"
    torch.save({**state, "model.head.modulation": state["head.modulation"]}, twice)
    _bad(load, twice, match="holds head.modulation twice")


def test_bad_loras(ref: torch.nn.Module, tmp_path: Path) -> None:
    state = wan_state(ref)
    base = save_wan(state, tmp_path / "base", shards=1)
    A, B = _lora_pairs(state, ["blocks.0.self_attn.q"], rank=4, seed=0)["blocks.0.self_attn.q"]

    def load_lora(lora: dict[str, torch.Tensor]) -> CausalWanDiT:
        file = tmp_path / "lora.pt"
        torch.save({"generator_lora": lora}, file)
        return load_wan_dit(base, lora=file, **RUNTIME)

    _bad(
        load_lora,
        {"blocks.9.self_attn.q.lora_A.weight": A, "blocks.9.self_attn.q.lora_B.weight": B},
        match=r"targets blocks.9.self_attn.q, which the model does not have",
    )
    _bad(load_lora, {"blocks.0.self_attn.q.lora_A.weight": A}, match=r"blocks.0.self_attn.q has only A \(down\)")
    _bad(
        load_lora,
        {"blocks.0.self_attn.q.lora_A.weight": A, "blocks.0.self_attn.q.lora_B.weight": B[:5]},
        match=r"has A \(4, 48\) and B \(5, 4\), which do not fit its weight \(48, 48\)",
    )
    _bad(load_lora, {"blocks.0.self_attn.q.lora_magnitude": A}, match="is not a lora_A/lora_B")
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    _bad(load_wan_dit, base, lora=plain, **RUNTIME, match="also holds plain weights")


def test_read_checkpoint_reports_where_the_weights_were(ref: torch.nn.Module, tmp_path: Path) -> None:
    f = tmp_path / "sf.pt"
    torch.save(
        {"generator_ema": {f"model.{k}": v for k, v in wan_state(ref).items()}, "critic": {"x": torch.zeros(1)}}, f
    )
    ckpt = read_checkpoint(f)
    assert ckpt.entry == "generator_ema" and set(ckpt.weights) == set(wan_state(ref)) and not ckpt.lora


def test_framecast_folder_loads_too(tmp_path: Path) -> None:
    """framecast's own model folder (save_dit) is a base as well, with its extras (the tiny preset's)."""
    from conftest import tiny_model

    from framecast.models.checkpoint import load_dit, save_dit

    model = tiny_model(text_modulation=True, precondition=True, structure_channels=4, refiner_channels=8)
    folder = save_dit(model, tmp_path / "dit")
    assert locate(folder) == (folder, "framecast")
    assert_same(load_wan_dit(folder), load_dit(folder))
