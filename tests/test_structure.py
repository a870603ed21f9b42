"""The DiT's structure input (video to video): the model, the streaming core, a growing training state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from framecast.errors import InputError, ModelLoadError
from framecast.family.denoiser import Denoiser as Engine
from framecast.models.dit import CausalWanDiT
from framecast.stream import scheduler
from framecast.stream.config import StreamConfig
from framecast.stream.state import ChunkInput, StreamState
from framecast.train.checkpoint import load_checkpoint, save_checkpoint
from framecast.train.dit import DiTTrainConfig, edit_loss, edit_structure, new_model
from framecast.train.loop import LoopConfig, _update, new_state, param_groups
from tests.conftest import tiny_config, tiny_model
from tests.test_stream_core import _cond, interleave
from tests.test_v2v_core import _inputs

BASE = dict(steps=3, window_chunks=2, sink_chunks=1, refresh_chunks=4)


def _structured(seed: int = 0) -> CausalWanDiT:
    return tiny_model(seed, structure_channels=tiny_config().in_channels)


def _new_state(model: CausalWanDiT, cfg: StreamConfig, seed: int) -> StreamState:
    null = _cond(model, "<empty>") if cfg.guided else None
    return StreamState.create(model.config, cfg, seed, torch.float32, torch.device("cpu"), null)


def _run(model: CausalWanDiT, cfg: StreamConfig, inputs: list[ChunkInput], n: int, seed: int = 7) -> torch.Tensor:
    st, eng, out, cond = _new_state(model, cfg, seed), Engine(model), [], _cond(model, "red")
    for inp in inputs:
        scheduler.queue_input(st, inp)
    while len(out) < n:
        out += eng.step([st], [lambda: cond])[0]
    return torch.stack(out[:n])  # (n, C, cf, H, W)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
@pytest.mark.parametrize("clean_pass", [True, False])
def test_structured_stream_batch_equals_sequential(guidance: float, clean_pass: bool) -> None:
    """Each chunk reads its own input in every pass: both schedules give the same frames, guided or not."""
    model = _structured()
    inputs = _inputs(model, 30, [1.0, 0.6, 0.9])
    base = dict(BASE, guidance=guidance, clean_pass=clean_pass)
    batched = _run(model, StreamConfig(batch_steps=True, **base), inputs, 8)  # type: ignore[arg-type]
    sequential = _run(model, StreamConfig(batch_steps=False, **base), inputs, 8)  # type: ignore[arg-type]
    torch.testing.assert_close(batched, sequential, rtol=1e-5, atol=1e-5)


def test_structure_is_read_even_at_strength_one() -> None:
    """At strength 1 the start ignores the input; a structured model still draws from it, an unstructured one
    gives the text-to-video frames."""
    cfg = StreamConfig(**BASE)  # type: ignore[arg-type]
    one, other = _inputs(_structured(), 10, [1.0], seed=1), _inputs(_structured(), 10, [1.0], seed=2)
    a, b = _run(_structured(), cfg, one, 6), _run(_structured(), cfg, other, 6)
    assert (a - b).abs().max() > 1e-2
    plain = tiny_model()
    torch.testing.assert_close(_run(plain, cfg, one, 6), _run(plain, cfg, other, 6), rtol=0, atol=0)


def test_a_grown_model_draws_what_it_drew_before() -> None:
    """The structure embedding starts at zero: the grown model gives the frames of the model it grew from."""
    plain = tiny_model()
    grown = CausalWanDiT(tiny_config(structure_channels=tiny_config().in_channels)).eval()
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["structure_embedding.weight"] and not unexpected
    cfg = StreamConfig(**BASE)  # type: ignore[arg-type]
    inputs = _inputs(plain, 10, [0.7, 1.0])
    torch.testing.assert_close(_run(grown, cfg, inputs, 6), _run(plain, cfg, inputs, 6), rtol=1e-6, atol=1e-6)


def test_structured_stream_beside_a_text_stream_equals_alone() -> None:
    """One batch holds a row with a structure input and one without: each gets what it gets alone."""
    model = _structured()
    cfg = StreamConfig(**BASE)  # type: ignore[arg-type]
    inputs = _inputs(model, 20, [0.8, 1.0])
    alone_v, alone_t = _run(model, cfg, inputs, 6, seed=1), _run(model, cfg, [], 6, seed=2)
    v, t = _new_state(model, cfg, 1), _new_state(model, cfg, 2)
    for inp in inputs:
        scheduler.queue_input(v, inp)
    cond = _cond(model, "red")
    out_v, out_t = interleave(Engine(model), (v, cond), (t, cond), 6)
    torch.testing.assert_close(out_v, alone_v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_t, alone_t, rtol=1e-5, atol=1e-5)


def test_structure_on_a_model_without_the_input_is_refused() -> None:
    model, c = tiny_model(), tiny_config()
    x = torch.randn(1, c.in_channels, 1, c.latent_height, c.latent_width)
    cross = model.cross_kv(torch.randn(1, 1, c.text_dim))
    with pytest.raises(InputError, match="structure"):
        model(x, torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.long), cross, structure=x)
    with pytest.raises(ModelLoadError, match="structure_channels"):
        tiny_config(structure_channels=-1)


def _train_state(structure: bool, seed: int = 0):  # type: ignore[no-untyped-def]
    model_cfg = tiny_config(structure_channels=tiny_config().in_channels if structure else 0)
    cfg = DiTTrainConfig(model=model_cfg, loop=LoopConfig(steps=2, lr=1e-3))
    ts = new_state(new_model(cfg, seed), cfg.loop)
    loss = sum(p.square().sum() for p in ts.model.parameters())
    loss.backward()  # type: ignore[union-attr]
    ts.optimizer.step()
    return ts


def assert_restored(grown: torch.nn.Module, saved_from: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of `saved_from` is in `grown` unchanged; returns the saved state."""
    saved = saved_from.state_dict()
    for name, value in grown.state_dict().items():
        if name in saved:
            torch.testing.assert_close(value, saved[name], rtol=0, atol=0)
    return saved


def test_a_training_state_grows_a_structure_input(tmp_path: Path) -> None:
    """A checkpoint without the input resumes into a model with it: everything saved is restored, the new
    embedding stays at zero with a fresh optimizer state; a checkpoint that does not fit is refused."""
    old = _train_state(structure=False)
    old.step = 12
    save_checkpoint(old, tmp_path / "ck")
    new = _train_state(structure=True, seed=1)
    new.model.structure_embedding.weight.data.zero_()
    load_checkpoint(new, tmp_path / "ck")
    assert new.step == 12
    saved = assert_restored(new.model, old.model)
    assert new.model.structure_embedding.weight.abs().max() == 0
    state = new.optimizer.state_dict()
    assert len(state["state"]) == len(saved) and len(state["param_groups"][0]["params"]) == len(saved) + 1
    save_checkpoint(new, tmp_path / "grown")
    with pytest.raises(ModelLoadError, match="does not fit"):
        load_checkpoint(_train_state(structure=False), tmp_path / "grown")


def _edit_batch(model: CausalWanDiT, b: int = 3, g: int = 4) -> dict[str, torch.Tensor]:
    c, gen = model.config, torch.Generator().manual_seed(0)
    latent = (b, g, c.in_channels, c.latent_height, c.latent_width)
    return {
        "latents": torch.randn(latent, generator=gen),
        "source": torch.randn(latent, generator=gen),
        "positions": torch.arange(g).repeat(b, 1),
        "objects": (torch.rand((b, g, c.latent_height, c.latent_width), generator=gen) > 0.8).float(),
        "text": torch.randn(2, 1, c.text_dim, generator=gen),
        "text_index": torch.randint(0, 2, (b, g), generator=gen),
    }


def test_edit_pairs_train_the_structure_embedding() -> None:
    """The edit loss hands a structured model its sources, and the gradient reaches the embedding; a share
    `structure_drop` of the samples sees zeros, and a model without the input gets none."""
    model = new_model(DiTTrainConfig(model=tiny_config(structure_channels=tiny_config().in_channels)), 0)
    torch.nn.init.normal_(model.head.head.weight, std=0.02)  # a zero head passes no gradient back
    batch = _edit_batch(model)
    loss, _ = edit_loss(model, batch, np.random.default_rng(0), DiTTrainConfig())
    loss.backward()
    assert model.structure_embedding is not None and model.structure_embedding.weight.grad is not None
    assert model.structure_embedding.weight.grad.abs().max() > 0
    given = edit_structure(model, batch, np.random.default_rng(0), drop=0.0)
    torch.testing.assert_close(given, batch["source"].transpose(1, 2))
    assert edit_structure(model, batch, np.random.default_rng(0), drop=1.0).abs().max() == 0  # type: ignore[union-attr]
    assert edit_structure(tiny_model(), batch, np.random.default_rng(0), drop=0.0) is None


def test_a_scaled_input_learns_faster_and_any_grouping_resumes(tmp_path: Path) -> None:
    """`lr_scale` puts the named parameters in their own group (model order kept) at factor x the rate; a
    checkpoint written under one grouping resumes under another with every optimizer state in place."""
    model_cfg = tiny_config(structure_channels=tiny_config().in_channels)
    loop = LoopConfig(steps=2, lr=1e-3, warmup=1, lr_scale=(("structure_embedding.", 10.0),))
    groups = param_groups(new_model(DiTTrainConfig(model=model_cfg), 0), loop)
    assert [g["lr_scale"] for g in groups] == [1.0, 10.0] and len(groups[1]["params"]) == 1
    plain = _train_state(structure=True)
    save_checkpoint(plain, tmp_path / "ck")
    scaled = new_state(new_model(DiTTrainConfig(model=model_cfg, loop=loop), 1), loop)
    load_checkpoint(scaled, tmp_path / "ck")
    assert [g["lr_scale"] for g in scaled.optimizer.param_groups] == [1.0, 10.0]
    for (_, p), (_, q) in zip(plain.model.named_parameters(), scaled.model.named_parameters(), strict=True):
        for key, value in plain.optimizer.state[p].items():
            torch.testing.assert_close(scaled.optimizer.state[q][key], value, rtol=0, atol=0)
    _update(scaled, loop, sum(p.square().sum() for p in scaled.model.parameters()))
    assert [g["lr"] for g in scaled.optimizer.param_groups] == pytest.approx([1e-3, 1e-2])
