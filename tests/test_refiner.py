"""The DiT's convolutional refiner (models/refiner.py): frame-local, equal under both schedules, grown from zero."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from framecast.errors import ModelLoadError
from framecast.models.dit import CausalWanDiT
from framecast.models.refiner import LatentRefiner
from framecast.stream.config import StreamConfig
from framecast.train.checkpoint import load_checkpoint, save_checkpoint
from framecast.train.dit import DiTTrainConfig, edit_loss, new_model
from framecast.train.loop import LoopConfig, new_state, param_groups
from framecast.train.run import GROWN_LR, run_config
from tests.conftest import tiny_config, tiny_model
from tests.test_structure import BASE, _edit_batch, _run, assert_restored
from tests.test_v2v_core import _inputs

C = tiny_config().in_channels


def _refined(seed: int = 0) -> CausalWanDiT:
    """A structured model with a refiner that acts (its last convolution no longer zero)."""
    model = tiny_model(seed, structure_channels=C, refiner_channels=8)
    assert model.refiner is not None
    torch.manual_seed(seed)
    torch.nn.init.normal_(model.refiner.conv_out.weight, std=0.1)
    return model


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_refined_stream_batch_equals_sequential(guidance: float) -> None:
    model = _refined()
    inputs = _inputs(model, 30, [1.0, 0.6, 0.9])
    base = dict(BASE, guidance=guidance)
    batched = _run(model, StreamConfig(batch_steps=True, **base), inputs, 8)  # type: ignore[arg-type]
    sequential = _run(model, StreamConfig(batch_steps=False, **base), inputs, 8)  # type: ignore[arg-type]
    torch.testing.assert_close(batched, sequential, rtol=1e-5, atol=1e-5)


def test_a_model_grown_with_a_refiner_draws_what_it_drew_before() -> None:
    before = tiny_model(structure_channels=C)
    grown = CausalWanDiT(tiny_config(structure_channels=C, refiner_channels=8)).eval()
    missing, unexpected = grown.load_state_dict(before.state_dict(), strict=False)
    assert missing and all(k.startswith("refiner.") for k in missing) and not unexpected
    assert [n for n, _ in grown.named_parameters()][-len(missing) :] == missing  # registered last
    cfg = StreamConfig(**BASE)  # type: ignore[arg-type]
    inputs = _inputs(before, 10, [0.7, 1.0])
    torch.testing.assert_close(_run(grown, cfg, inputs, 6), _run(before, cfg, inputs, 6), rtol=1e-6, atol=1e-6)
    assert (_run(_refined(), cfg, inputs, 6) - _run(before, cfg, inputs, 6)).abs().max() > 1e-3


def test_the_refiner_reads_each_frame_alone() -> None:
    """A change in frame 1 (input, output, structure or conditioning) leaves frame 0's result alone."""
    torch.manual_seed(0)
    ref = LatentRefiner(4, 4, 8, cond_dim=6)
    torch.nn.init.normal_(ref.conv_out.weight, std=0.1)
    x, out, s = torch.randn(2, 4, 3, 5, 5), torch.randn(2, 4, 3, 5, 5), torch.randn(2, 4, 3, 5, 5)
    cond = torch.randn(2, 3, 6)
    a = ref(x, out, s, cond)
    x2, s2, cond2 = x.clone(), s.clone(), cond.clone()
    x2[:, :, 1] += 1
    s2[:, :, 1] -= 1
    cond2[:, 1] += 1
    b = ref(x2, out, s2, cond2)
    torch.testing.assert_close(a[:, :, 0], b[:, :, 0], rtol=0, atol=0)
    torch.testing.assert_close(a[:, :, 2], b[:, :, 2], rtol=0, atol=0)
    assert (a[:, :, 1] - b[:, :, 1]).abs().max() > 1e-3
    zeros = ref(x, out, torch.zeros_like(s), cond)
    torch.testing.assert_close(ref(x, out, None, cond), zeros)  # no structure: zeros


def test_refiner_width_is_checked() -> None:
    with pytest.raises(ModelLoadError, match="refiner_channels"):
        tiny_config(refiner_channels=12)
    with pytest.raises(ModelLoadError, match="refiner_channels"):
        tiny_config(refiner_channels=-8)


def test_a_training_state_grows_a_refiner_that_learns_at_the_grown_rate(tmp_path: Path) -> None:
    """A structured checkpoint resumes into a model with a refiner: everything saved is restored, the refiner
    starts where it was built (last convolution zero) and sits in the grown parts' group."""
    old_cfg = DiTTrainConfig(model=tiny_config(structure_channels=C), loop=LoopConfig(steps=2, lr=1e-3))
    old = new_state(new_model(old_cfg, 0), old_cfg.loop)
    old.step = 5
    save_checkpoint(old, tmp_path / "ck")
    run = run_config(10, 10, 10, 2, 0, 1, structure=True, refiner=8)
    assert run.dit.model.refiner_channels == 8 and run.dit.model.structure_channels == run.dit.model.in_channels
    assert dict(run.dit.loop.lr_scale) == {"structure_embedding.": GROWN_LR, "refiner.": GROWN_LR}
    cfg = DiTTrainConfig(model=tiny_config(structure_channels=C, refiner_channels=8), loop=run.dit.loop)
    new = new_state(new_model(cfg, 1), cfg.loop)
    load_checkpoint(new, tmp_path / "ck")
    assert new.step == 5
    assert_restored(new.model, old.model)
    assert new.model.refiner is not None and new.model.refiner.conv_out.weight.abs().max() == 0
    groups = param_groups(new.model, cfg.loop)
    assert [g["lr_scale"] for g in groups] == [1.0, GROWN_LR]  # structure embedding and refiner: one group


def test_edit_pairs_train_the_refiner() -> None:
    model = new_model(DiTTrainConfig(model=tiny_config(structure_channels=C, refiner_channels=8)), 0)
    loss, _ = edit_loss(model, _edit_batch(model), np.random.default_rng(0), DiTTrainConfig())
    loss.backward()
    assert model.refiner is not None and model.refiner.conv_out.weight.grad is not None
    assert model.refiner.conv_out.weight.grad.abs().max() > 0
