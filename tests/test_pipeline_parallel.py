"""Pipeline parallelism on CPU with gloo and 2 ranks on loopback (family/stages.py, engine/parallel.py).

Two ranks give the single-process frames bit for bit: one stream (stream batch, guided, sequential), several
streams (one micro-batch each, two streams a micro-batch over an uneven split, three micro-batches, guided and
sequential streams, streams of one pass and a decode each), the measured split and a given one, with the
micro-batches circulating across driver steps (rank 0 never waits for a step's velocities before the next step:
checked after every step); `torchrun -m framecast generate` writes the single-process MP4's bytes. A rank that is
killed or hangs ends the other with a clear error inside the timeout.

The ranks are subprocesses of this file (`python -m tests.test_pipeline_parallel worker ...`) with the variables
torchrun sets; every process runs one CPU thread, so the kernels round alike.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from framecast.engine.driver import Driver
from framecast.errors import FramecastError
from framecast.family.causal import CausalFamily
from framecast.family.stages import StagedFamily, StageTimes, micro_batches, split_blocks
from framecast.models.autoencoder import AutoencoderConfig, TinyAutoencoder
from framecast.pipeline import Pipeline
from tests.conftest import RandomTextEncoder, tiny_model

ROOT = Path(__file__).parent.parent
WORLD = 2
RUN_S = 420  # bound on a whole two-rank run on a busy 2-core machine

# name: (streams (prompt, seed), stream settings, driver steps, micro-batches, FRAMECAST_PP_BLOCKS ("": measured))
FOUR = [("a red circle", 0), ("a green triangle", 7), ("a blue square", 2), ("dots", 5)]
SCENARIOS: dict[str, tuple[list[tuple[str, int]], dict[str, Any], int, int, str]] = {
    "one": ([("a red circle", 0)], {}, 12, 2, ""),
    "guided": ([("a red circle", 3)], {"guidance": 2.0, "context_noise": 0.1}, 9, 2, "2,2"),
    "sequential": ([("a blue square", 1)], {"batch_steps": False}, 20, 2, "3,1"),
    "two": (FOUR[:2], {}, 10, 2, ""),
    "four": (FOUR, {}, 9, 2, "1,3"),
    "three": (FOUR[:3], {}, 16, 3, "2,2"),  # three micro-batches in circulation, 13 chunks a stream
    "two-guided": (FOUR[1:3], {"guidance": 2.0, "context_noise": 0.1}, 12, 2, "2,2"),
    "two-sequential": (FOUR[2:], {"batch_steps": False}, 24, 2, "2,2"),  # admissions foreseen while in flight
}
INVARIANT = "two-invariant"  # Driver(batch_invariant=True): a pass and a decode per stream, each its micro-batch
SCENARIOS[INVARIANT] = (FOUR[:2], {}, 10, 1, "2,2")


def _pipe() -> Pipeline:
    """The same small random model in every process: 4 blocks, 2 latent frames a chunk, 32 x 32 frames."""
    dit = tiny_model(num_layers=4)
    torch.manual_seed(1)
    return Pipeline(dit, TinyAutoencoder(AutoencoderConfig(latent_channels=4)), RandomTextEncoder())


def _run(pipe: Pipeline, name: str) -> list[np.ndarray]:
    """Frames (T, H, W, 3) of each stream of a scenario, stepped together by the driver."""
    spec, fields, steps, _, _ = SCENARIOS[name]
    streams = [pipe.stream(prompt, seed, **fields) for prompt, seed in spec]
    driver = Driver(pipe.family, batch_invariant=name == INVARIANT)
    fam = pipe.family
    frames: list[list[np.ndarray]] = [[] for _ in streams]
    for _ in range(steps):
        for i, e in enumerate(driver.step(streams)):
            frames[i] += e.frames
        if isinstance(fam, StagedFamily) and not fam.plan.last:  # every pass of this step still in flight here
            assert all(fam.in_flight(s.state) for s in streams), name
    return [np.stack(f) for f in frames]


def _grouped(pipe: Pipeline, groups: int) -> Pipeline:
    """Single process, each pass run micro-batch by micro-batch as the stages run it."""
    fam = pipe.family
    assert isinstance(fam, CausalFamily)
    fam.denoise = lambda states: [lat for g in micro_batches(states, groups) for lat in fam.denoiser.run(g)]  # type: ignore[method-assign]
    return pipe


# -- the ranks ---------------------------------------------------------------------------------------------


def _worker(mode: str, out: Path) -> None:
    """One rank: every scenario (mode "frames"; the last rank saves them) or an endless stream (mode "endless")."""
    from framecast.engine import parallel

    torch.set_num_threads(1)
    env = parallel.torchrun_env()
    assert env is not None
    parallel.init(env, "cpu")
    last = env.rank == env.world - 1
    try:
        if mode == "endless":
            pipe = _staged(_pipe(), env, "2,2", 2)
            stream = pipe.stream("a red circle", 0)
            for n in range(10**9):
                pipe.driver.step([stream])
                if n == 4:
                    print("ready", flush=True)
        for name in SCENARIOS:
            pipe = _staged(_pipe(), env, SCENARIOS[name][4], SCENARIOS[name][3])
            fam = pipe.family
            assert isinstance(fam, StagedFamily)  # a stream's cache holds this stage's layers only
            assert len(fam.dit.blocks) == fam.plan.stop - fam.plan.start < 4
            assert fam.new_state(pipe.stream_config(), 0).ring.store.shape[1] == len(fam.dit.blocks)
            frames = _run(pipe, name)
            fam.close()
            if last:
                np.savez(out / f"{name}.npz", *frames)
    except FramecastError as e:
        print(f"framecast: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    parallel.shutdown()


def _staged(pipe: Pipeline, env: Any, blocks: str, groups: int) -> Pipeline:
    from framecast.engine import parallel

    os.environ["FRAMECAST_PP_BLOCKS"], os.environ["FRAMECAST_PP_GROUPS"] = blocks, str(groups)
    return Pipeline.from_family(parallel.staged(pipe.family, env, pipe.stream_config()), pipe.config)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(args: list[str], timeout_s: float) -> list[subprocess.Popen[str]]:
    """WORLD ranks as torchrun would start them, on loopback."""
    port, procs = _free_port(), []
    for rank in range(WORLD):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE=str(WORLD), FRAMECAST_PP_TIMEOUT=str(timeout_s), OMP_NUM_THREADS="1")  # fmt: skip
        pipe = subprocess.PIPE
        procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=pipe, stderr=pipe, text=True))
    return procs


def _finish(procs: list[subprocess.Popen[str]], bound_s: float) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=bound_s)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"a rank ran past {bound_s} s")
        out.append((p.returncode, err))
    return out


# -- tests ---------------------------------------------------------------------------------------------------


def test_split_by_prefix_sums() -> None:
    even = StageTimes(0.0, (1.0,) * 8, 0.0)
    assert split_blocks(even, 2) == (0, 4, 8) and split_blocks(even, 4) == (0, 2, 4, 6, 8)
    heavy_ends = StageTimes(3.0, (1.0,) * 6, 3.0)  # embedding and head as heavy as 3 blocks each
    assert split_blocks(heavy_ends, 2) == (0, 3, 6)
    assert split_blocks(heavy_ends, 3) == (0, 1, 5, 6)
    assert split_blocks(StageTimes(0.0, (5.0, 1.0, 1.0), 0.0), 3) == (0, 1, 2, 3)  # one block a stage at least
    assert split_blocks(StageTimes(0.0, (1.0, 1.0), 9.0), 2) == (0, 1, 2)


def test_two_ranks_equal_one_process_frame_for_frame(tmp_path: Path) -> None:
    procs = _launch([sys.executable, "-m", "tests.test_pipeline_parallel", "frames", str(tmp_path)], 60.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run
    try:
        ref = {name: _run(_grouped(_pipe(), SCENARIOS[name][3]), name) for name in SCENARIOS}
        together = _run(_pipe(), "four")  # all four streams in one batch, for the tolerance below
    finally:
        torch.set_num_threads(threads)
    for rc, err in _finish(procs, RUN_S):
        assert rc == 0, err[-3000:]
    for name, frames in ref.items():
        got = np.load(tmp_path / f"{name}.npz")
        assert len(got.files) == len(frames)
        for i, want in enumerate(frames):
            have = got[f"arr_{i}"]
            assert have.shape == want.shape and len(want) >= 16, (name, i, have.shape, want.shape)
            assert np.array_equal(have, want), f"{name}, stream {i}: {np.abs(have.astype(int) - want).max()} levels off"
    # two streams a micro-batch are the single-process batch of those two; all four in one batch round otherwise
    # on CPU (docs/architecture.md, "Batching many streams"), within a level or so of uint8
    got = np.load(tmp_path / "four.npz")
    worst = max(int(np.abs(got[f"arr_{i}"].astype(int) - f).max()) for i, f in enumerate(together))
    assert worst <= 2
    print(f"four streams in one batch against two micro-batches: {worst} uint8 level(s) at most")


def test_torchrun_generate_writes_the_single_process_video(tmp_path: Path) -> None:
    """`torchrun --nproc-per-node=2 -m framecast generate` (the tiny preset, random weights) writes the bytes one
    process writes (the MP4 writer is deterministic: the same frames give the same bytes)."""
    args = ["generate", "a red circle moving left", "--random-weights", "--seconds", "1.5"]
    env = dict(os.environ, OMP_NUM_THREADS="1", FRAMECAST_PP_TIMEOUT="60")
    one = subprocess.run([sys.executable, "-m", "framecast", *args, "-o", str(tmp_path / "one.mp4")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_S)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    run = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={WORLD}", "--master-addr=127.0.0.1",
           f"--master-port={_free_port()}", "-m", "framecast", *args, "-o", str(tmp_path / "two.mp4")]  # fmt: skip
    two = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_S)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stderr.count("wrote 24 frames") == 1  # the last rank writes; rank 0 steps along
    assert (tmp_path / "two.mp4").read_bytes() == (tmp_path / "one.mp4").read_bytes()


def _endless(timeout_s: float) -> list[subprocess.Popen[str]]:
    procs = _launch([sys.executable, "-m", "tests.test_pipeline_parallel", "endless", "-"], timeout_s)
    for p in procs:  # both ranks are stepping the stream
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.strip() == "ready", _finish(procs, 30)
    return procs


@pytest.mark.parametrize("rank", [1, 0])
def test_a_killed_rank_ends_the_other_with_a_clear_error(rank: int) -> None:
    timeout = 30.0
    procs = _endless(timeout)
    procs[rank].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    other = procs[1 - rank]
    (rc, err), = _finish([other], timeout + 15)
    elapsed = time.monotonic() - t0
    procs[rank].wait()
    assert rc == 1, err[-2000:]
    assert f"the pipeline broke while receiving from rank {rank} (blocks" in err or f"rank {rank} (blocks" in err, err
    assert "died, hung or broke its link" in err and "Traceback" not in err, err
    assert elapsed < timeout, elapsed  # a closed connection shows at once, long before the timeout
    print(f"rank {1 - rank} ended {elapsed:.2f} s after rank {rank} was killed")


def test_a_hung_rank_ends_the_other_inside_the_timeout() -> None:
    timeout = 4.0
    procs = _endless(timeout)
    procs[1].send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        (rc, err), = _finish([procs[0]], timeout + 20)
    finally:
        procs[1].kill()
        procs[1].wait()
    elapsed = time.monotonic() - t0
    assert rc == 1 and "rank 1 (blocks 2-3)" in err and "no answer within 4 s" in err, err[-2000:]
    assert elapsed < timeout + 10, elapsed
    print(f"rank 0 ended {elapsed:.2f} s after rank 1 stopped (timeout {timeout:g} s)")


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))
