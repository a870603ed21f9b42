"""The benchmark on a tiny random pipeline: structure and sanity of the figures, never their speed."""

from __future__ import annotations

import json
import math

import pytest
import torch

from framecast.bench import (
    BenchResult,
    ScheduleResult,
    _bare_round,
    _engine_round,
    _record_round,
    _recording,
    format_table,
    run_bench,
)
from framecast.models.autoencoder import AutoencoderConfig, TinyAutoencoder
from framecast.pipeline import Pipeline
from tests.conftest import RandomTextEncoder, tiny_model


def _pipeline() -> Pipeline:
    dit = tiny_model()
    torch.manual_seed(0)
    ae = TinyAutoencoder(AutoencoderConfig(latent_channels=dit.config.in_channels, spatial_factor=4, width=8))
    return Pipeline(dit, ae, RandomTextEncoder(dit.config.text_dim))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def result() -> BenchResult:
    return run_bench("test", seconds=0.05, steps=2, progress=False, pipeline=_pipeline(), threads=1)


def _check_schedule(s: ScheduleResult, passes_per_chunk: int) -> None:
    for name in ("fps", "first_frame_s", "latency_p50_ms", "interval_p50_ms", "engine_fps", "bare_fps"):
        value = getattr(s, name)
        assert math.isfinite(value) and value > 0, name
    assert s.latency_p99_ms >= s.latency_p50_ms
    assert s.interval_p99_ms >= s.interval_p50_ms
    assert s.engine_vs_bare > 0 and math.isfinite(s.overhead_pct)
    assert s.passes_per_chunk == passes_per_chunk
    assert s.chunks >= 2 and s.passes >= 1


def test_figures_are_sane(result: BenchResult) -> None:
    assert (result.model, result.device, result.dtype, result.steps) == ("test", "cpu", "float32", 2)
    assert result.frame_size == (16, 16) and result.frames_per_chunk == 8
    _check_schedule(result.stream_batch, 1)
    _check_schedule(result.sequential, 3)  # 2 steps + the clean pass
    assert result.batch_vs_sequential > 0
    assert result.batch_vs_sequential == pytest.approx(result.stream_batch.fps / result.sequential.fps)


def test_hooks_removed_and_progress_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    pipe = _pipeline()
    run_bench("test", seconds=0.01, steps=1, progress=True, pipeline=pipe, threads=1)
    assert not pipe.dit._forward_pre_hooks  # the recorder is gone
    out, err = capsys.readouterr()
    assert out == "" and "overhead" in err


@pytest.mark.parametrize("batch_steps", [True, False])
def test_bare_loop_replays_the_engine_passes(batch_steps: bool) -> None:
    """The bare loop runs exactly the forwards the engine ran: same inputs, same outputs."""
    pipe = _pipeline()
    stream = pipe.stream("red", batch_steps=batch_steps, steps=2)
    seen: list[torch.Tensor] = []
    out_hook = pipe.dit.register_forward_hook(lambda m, a, out: seen.append(out.velocity.clone()))
    with _recording(pipe.dit) as rec:
        for _ in range(9):
            stream.step()
    _bare_round(pipe.dit, rec.calls, pipe.device)
    out_hook.remove()
    assert len(rec.calls) == 9 and len(seen) == 18
    for engine, bare in zip(seen[:9], seen[9:], strict=True):
        torch.testing.assert_close(engine, bare, rtol=0, atol=0)


@pytest.mark.parametrize("batch_steps", [True, False])
def test_engine_round_times_as_many_whole_chunks_unrecorded(batch_steps: bool) -> None:
    """The timed engine passes carry no recorder and match the recorded ones in number and mix of passes."""
    pipe = _pipeline()
    stream = pipe.stream("red", batch_steps=batch_steps, steps=2)
    calls = _record_round(pipe, stream, 0.0)
    assert calls and len(calls) % (1 if batch_steps else 3) == 0  # 2 steps + the clean pass a chunk
    before = pipe.family.denoiser.passes
    assert _engine_round(pipe, stream, len(calls)) > 0
    assert pipe.family.denoiser.passes - before == len(calls)
    assert not pipe.dit._forward_pre_hooks


def test_json_round_trip(result: BenchResult) -> None:
    d = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert d["frame_size"] == [16, 16]
    assert set(d["stream_batch"]) == set(d["sequential"]) >= {"fps", "first_frame_s", "latency_p99_ms", "overhead_pct"}
    assert d["batch_vs_sequential"] == result.batch_vs_sequential


def test_table_has_headings(result: BenchResult) -> None:
    table = format_table(result)
    for heading in (
        "stream batch",
        "sequential",
        "frames per second",
        "time to first frame",
        "chunk latency p99",
        "between chunks p50",
        "engine overhead (%)",
        "engine / bare",
        "throughput",
    ):
        assert heading in table
    rows = [line for line in table.splitlines() if "(ms)" in line]
    assert len({len(line) for line in rows}) == 1  # aligned columns


def test_threads_are_restored() -> None:
    before = torch.get_num_threads()
    run_bench("test", seconds=0.01, steps=1, progress=False, pipeline=_pipeline(), threads=1)
    assert torch.get_num_threads() == before
