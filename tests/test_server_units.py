"""The server's pure parts: control-message validation, the cost model, pacing, the outbox."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed: pip install -e '.[server]'")

from framecast.server.capacity import CostModel, Demand  # noqa: E402
from framecast.server.encode import decode_frame, encode_frame  # noqa: E402
from framecast.server.outbox import Frame, Outbox, OutboxClosedError  # noqa: E402
from framecast.server.pacing import PlaybackClock, pick_due  # noqa: E402
from framecast.server.protocol import ControlError, PromptMsg, StartMsg, StopMsg, parse_control  # noqa: E402


def test_good_messages_parse() -> None:
    m = parse_control('{"type": "start", "prompt": "a red circle", "seed": 3, "steps": 2, "fps": 12}')
    assert isinstance(m, StartMsg) and (m.seed, m.steps, m.fps, m.format) == (3, 2, 12.0, "jpeg")
    assert isinstance(parse_control('{"type": "prompt", "text": "blue"}'), PromptMsg)
    assert isinstance(parse_control(b'{"type": "stop"}'.decode()), StopMsg)


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        ("{not json", "bad_json", "not valid JSON"),
        ("[1, 2]", "bad_message", '"type"'),
        ('{"type": "explode"}', "bad_message", "start, prompt or stop"),
        (json.dumps({"type": "start", "prompt": "x" * 5000}), "too_large", "4096 bytes"),
        ('{"type": "stop", "extra": 1}', "invalid", "unknown field 'extra'"),
        ('{"type": "start"}', "invalid", "missing field 'prompt'"),
        ('{"type": "start", "prompt": "a", "steps": 1000}', "invalid", "steps"),
        ('{"type": "start", "prompt": "a", "seed": -1}', "invalid", "seed"),
        ('{"type": "start", "prompt": "a", "seed": 1099511627776}', "invalid", "seed"),
        ('{"type": "start", "prompt": "a", "seed": "7"}', "invalid", "seed"),
        ('{"type": "start", "prompt": "a", "seed": true}', "invalid", "seed"),
        ('{"type": "start", "prompt": "a", "fps": 1e12}', "invalid", "fps"),
        ('{"type": "start", "prompt": "a", "fps": 1e-300}', "invalid", "fps"),  # below the minimum of 1
        ("[" * 4000, "bad_json", "nested too deeply"),
        ('{"type": "start", "prompt": ""}', "invalid", "prompt"),
        ('{"type": "start", "prompt": "a", "format": "gif"}', "invalid", "format"),
        ('{"type": "prompt", "text": 5}', "invalid", "text"),
    ],
)
def test_bad_messages_get_a_clear_error(raw: str, code: str, words: str) -> None:
    with pytest.raises(ControlError) as e:
        parse_control(raw)
    assert e.value.code == code and words in e.value.message, e.value.message
    assert e.value.to_json() == {"type": "error", "code": code, "message": e.value.message}


def test_binary_message_refused() -> None:
    with pytest.raises(ControlError, match="binary"):
        parse_control(b'{"type": "stop"}')


def test_cost_model_fits_fixed_and_per_chunk_cost() -> None:
    m = CostModel()
    for units in (2, 5, 10, 20) * 10:
        m.observe(units, 0.010 + 0.002 * units)
    a, b = m.coefficients()
    assert a == pytest.approx(0.010, rel=1e-3) and b == pytest.approx(0.002, rel=1e-3)
    load = m.load([Demand(4.0, 5), Demand(2.0, 3)])
    assert load == pytest.approx(0.010 * 4 + 0.002 * (4 * 5 + 2 * 3), rel=1e-3)


def test_cost_model_with_one_batch_size_assumes_no_batching_gain() -> None:
    m = CostModel()
    assert m.coefficients() == (0.0, 0.0) and m.load([Demand(4, 5)]) == 0.0
    for _ in range(5):
        m.observe(5, 0.05)
    assert m.coefficients() == pytest.approx((0.0, 0.01))


def test_pacing_earliest_deadline_first_and_sitting_out() -> None:
    fresh = PlaybackClock(16, 4)
    late, ahead = PlaybackClock(16, 4, deadline=10.0), PlaybackClock(16, 4, deadline=12.0)
    soon = PlaybackClock(16, 4, deadline=10.4)  # due within one more period of `late`: joins the pass
    assert pick_due({"ahead": ahead}, now=10.0, lead_chunks=1, max_rows=8) == []
    keys = pick_due({"ahead": ahead, "soon": soon, "late": late, "fresh": fresh}, 10.0, 1, 8)
    assert keys == ["fresh", "late", "soon"]
    assert pick_due({"late": late, "soon": soon}, 10.0, 1, 1) == ["late"]


def test_clock_counts_a_miss_and_restarts_instead_of_catching_up() -> None:
    c = PlaybackClock(fps=8, frames_per_chunk=4)  # 0.5 s a chunk
    assert c.emit(100.0) == (100.0, False) and c.deadline == 100.5
    assert c.emit(100.2) == (100.5, False) and c.deadline == 101.0  # early: plays on time
    assert c.emit(101.3) == (101.3, True) and c.deadline == pytest.approx(101.8)  # late: plays at once
    assert c.ready_at(lead=0.5) == pytest.approx(101.3) and PlaybackClock(8, 4).ready_at(0.5) == -math.inf


def test_outbox_drops_oldest_frames_and_keeps_messages() -> None:
    async def run() -> None:
        box = Outbox(asyncio.get_running_loop(), max_frames=2)
        img = np.zeros((2, 2, 3), np.uint8)
        results = [box.put_frame(Frame(img, i, 0.0, 0.0)) for i in range(4)]
        box.put_message({"type": "stats"})
        assert results == [True, True, False, False] and box.dropped == 2
        assert await box.get_any() == {"type": "stats"}
        got = [await box.get_frame(), await box.get_frame()]
        assert [f.index for f in got] == [2, 3]
        assert await box.get_any(timeout=0.01) is None
        box.close()
        with pytest.raises(OutboxClosedError):
            await box.get_message()

    asyncio.run(run())


def test_outbox_takes_a_chunk_at_once_and_drops_its_oldest_frames() -> None:
    async def run() -> None:
        box = Outbox(asyncio.get_running_loop(), max_frames=3)
        img = np.zeros((2, 2, 3), np.uint8)
        assert box.put_frames([Frame(img, i, 0.0, 0.0) for i in range(2)]) == 0
        assert box.put_frames([Frame(img, i, 0.0, 0.0) for i in range(2, 6)]) == 3 and box.dropped == 3
        assert [(await box.get_frame()).index for _ in range(3)] == [3, 4, 5]
        assert box.frames_waiting() == 0

    asyncio.run(run())


@pytest.mark.parametrize("fmt", ["raw", "png", "jpeg"])
def test_frame_encoding_round_trip(fmt: str) -> None:
    img = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    index, out = decode_frame(encode_frame(img, 7, fmt))
    assert index == 7 and out.shape == img.shape
    if fmt != "jpeg":
        np.testing.assert_array_equal(out, img)


def test_engine_threads_are_claimed_and_restored() -> None:
    from framecast.server.engine_loop import EngineLoop
    from framecast.server.metrics import Metrics
    from framecast.server.settings import ServerSettings

    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    loop = EngineLoop(None, ServerSettings(engine_threads=1), Metrics(), CostModel())  # type: ignore[arg-type]
    loop.claim_threads()
    assert torch.get_num_threads() == 1
    loop.stop()
    assert torch.get_num_threads() == before
