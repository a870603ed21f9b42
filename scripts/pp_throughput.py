"""Throughput model of the pipeline-parallel DiT (docs/parallel.md): measured per-block times on this machine, the
balancer's split into 1, 2 and 4 stages, and the frames per second each predicts.

    OMP_NUM_THREADS=1 python scripts/pp_throughput.py [--config tiny|wide]           # the model (one process)
    OMP_NUM_THREADS=1 python scripts/pp_throughput.py --measure --streams 2          # one process, measured
    OMP_NUM_THREADS=1 torchrun --nproc-per-node=2 scripts/pp_throughput.py --measure --streams 2   # two stages
    python scripts/pp_throughput.py --compare --streams 2 4 --rounds 5 [--old-src DIR]   # all of them, interleaved

One thread a process: each stage stands for one device. Random weights (speed does not depend on them).
`--compare` runs each configuration (one process with all streams in one batch; one process running the same
micro-batches one after another; two ranks) once a round, in turn, and reports each one's median frames per
second over the rounds (the machine is shared: interleaving spreads the others' load over all of them).
`--old-src` also runs two ranks on another checkout's `src` (e.g. a `git worktree` of the previous slice).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from framecast.engine import parallel
from framecast.family.causal import CausalFamily
from framecast.family.stages import micro_batches, split_blocks, time_blocks
from framecast.models.autoencoder import AutoencoderConfig, TinyAutoencoder
from framecast.models.config import DiTConfig, preset
from framecast.models.dit import CausalWanDiT
from framecast.pipeline import Pipeline
from framecast.stream.config import StreamConfig

# `wide`: blocks that dominate the pass (as in Wan, where 30-40 blocks dwarf the embedding and the head)
CONFIGS = {
    "tiny": preset("tiny"),
    "wide": DiTConfig(dim=384, num_heads=6, num_layers=12, ffn_dim=1536, in_channels=16, out_channels=16,
                      text_dim=384, freq_dim=64, chunk_frames=1, latent_height=16, latent_width=16),  # fmt: skip
}


class _Text:
    """A fixed random prompt embedding: the text encoder is outside the pass."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def encode(self, texts: list[str]) -> torch.Tensor:
        return torch.randn(len(texts), 1, self.dim, generator=torch.Generator().manual_seed(len(texts[0])))


def _pipe(name: str) -> Pipeline:
    torch.manual_seed(0)
    c = CONFIGS[name]
    ae = TinyAutoencoder(AutoencoderConfig(latent_channels=c.in_channels))
    return Pipeline(CausalWanDiT(c), ae, _Text(c.text_dim))


def _decode_s(pipe: Pipeline, cfg: StreamConfig) -> float:
    fam = pipe.family
    assert isinstance(fam, CausalFamily)
    st = fam.new_state(cfg, 0)
    lat = torch.randn(*st.latent_shape)
    fam.decode([st], [lat])
    t0 = time.perf_counter()
    for _ in range(5):
        fam.decode([st], [lat])
    return (time.perf_counter() - t0) / 5


def model(name: str) -> None:
    pipe = _pipe(name)
    fam = pipe.family
    assert isinstance(fam, CausalFamily)
    cfg = pipe.stream_config()
    times = time_blocks(fam.dit, cfg, fam.device, repeats=5)
    dec, fpc = _decode_s(pipe, cfg), pipe.frames_per_chunk
    ms = ", ".join(f"{t * 1e3:.2f}" for t in times.blocks)
    print(f"{name}: {cfg.steps} steps, stream batch, {fpc} frames a chunk; torch threads {torch.get_num_threads()}")
    head, embed = times.head * 1e3, times.embed * 1e3
    print(f"embed {embed:.2f} ms, blocks [{ms}] ms, head {head:.2f} ms, decode {dec * 1e3:.2f} ms a chunk")
    print("| stages | split | stage times (ms) | 1 stream | S streams, this slice | S streams, circulating |")
    print("|---|---|---|---|---|---|")
    for S in (1, 2, 4):
        bounds = split_blocks(times, S)
        st = times.stage(bounds)
        one = fpc / (sum(st) + dec)  # a stream's passes go through the stages one after another
        step = _fill_drain(st, S) + S * dec  # this slice: S micro-batches fill and drain the stages every step
        steady = fpc / max([*st[:-1], st[-1] + dec])  # circulating across steps: a micro-batch out every slowest stage
        sizes = "+".join(str(b - a) for a, b in zip(bounds, bounds[1:], strict=False))
        st_ms = ", ".join(f"{t * 1e3:.2f}" for t in st)
        print(f"| {S} | {sizes} | {st_ms} | {one:.0f} | {S * fpc / step:.0f} | {steady:.0f} |")


def _fill_drain(stage_s: list[float], groups: int) -> float:
    """Seconds until the last of `groups` micro-batches leaves the last stage (each stage one at a time, in order)."""
    done = [0.0] * len(stage_s)  # when each stage finished its latest micro-batch
    for _ in range(groups):
        ready = 0.0
        for s, t in enumerate(stage_s):
            ready = done[s] = max(done[s], ready) + t
    return done[-1]


def measure(name: str, streams: int, steps: int, groups: int) -> None:
    """Frames per second of `streams` streams stepped together (under torchrun: the pipeline, `groups`
    micro-batches; one process with `groups` > 1: the same micro-batches run one after another)."""
    env = parallel.torchrun_env()
    pipe = _pipe(name)
    cfg = pipe.stream_config()
    fam = pipe.family
    if env is not None:
        parallel.init(env, "cpu")
        os.environ.setdefault("FRAMECAST_PP_GROUPS", str(groups))
        pipe = Pipeline.from_family(parallel.staged(pipe.family, env, cfg), pipe.config)
    elif groups > 1:
        assert isinstance(fam, CausalFamily)
        fam.denoise = lambda sts: [lat for g in micro_batches(sts, groups) for lat in fam.denoiser.run(g)]  # type: ignore[method-assign]
    ss = [pipe.stream(f"prompt {i}", i) for i in range(streams)]
    for _ in range(cfg.warm_chunks + 2):
        pipe.driver.step(ss)
    t0, frames = time.perf_counter(), 0
    for _ in range(steps):
        frames += sum(len(e.frames) for e in pipe.driver.step(ss))
    dt = time.perf_counter() - t0
    if env is None or env.rank == env.world - 1:
        world = 1 if env is None else env.world
        rate = f"{frames / dt:.1f} frames/s ({dt / steps * 1e3:.1f} ms a step)"
        print(f"{name}, {world} stage(s), {streams} stream(s), {groups} micro-batch(es): {rate}", flush=True)
    close = getattr(pipe.family, "close", None)  # the pipeline's passes still in flight (not in the time)
    if env is not None and close is not None:
        close()
    parallel.shutdown()


def compare(name: str, streams: list[int], rounds: int, steps: int, old_src: str | None) -> None:
    """Every configuration once a round, in turn; the median frames per second of each over the rounds."""
    here = Path(__file__).resolve()
    src = str(here.parent.parent / "src")
    configs = []
    for n in streams:
        configs += [(f"1 process, {n} streams, one batch", n, 1, 1, src)]
        configs += [(f"1 process, {n} streams, 2 micro-batches in turn", n, 2, 1, src)]
        configs += [(f"2 ranks, {n} streams, 2 micro-batches", n, 2, 2, src)]
        if old_src:
            configs += [(f"2 ranks, {n} streams, 2 micro-batches, {old_src}", n, 2, 2, old_src)]
    got: dict[str, list[float]] = {c[0]: [] for c in configs}
    for r in range(rounds):
        for label, n, groups, world, path in configs:
            rate = _run_one(here, name, n, groups, world, steps, path)
            got[label].append(rate)
            print(f"round {r + 1}: {label}: {rate:.1f} frames/s", flush=True)
    print(f"\n{name}, {steps} steps a run, {rounds} rounds, load average now {os.getloadavg()[0]:.1f}")
    print("| configuration | median frames/s | runs |\n|---|---|---|")
    for label, fps in got.items():
        print(f"| {label} | {statistics.median(fps):.1f} | {', '.join(f'{x:.0f}' for x in fps)} |")


def _run_one(script: Path, name: str, streams: int, groups: int, world: int, steps: int, src: str) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=src, FRAMECAST_PP_GROUPS=str(groups))
    env.pop("FRAMECAST_PP_BLOCKS", None)
    args = [str(script), "--measure", "--config", name, "--streams", str(streams), "--steps", str(steps)]
    args += ["--groups", str(groups)]
    if world > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launch = ["-m", "torch.distributed.run", f"--nproc-per-node={world}", "--master-addr=127.0.0.1"]
        cmd = [sys.executable, *launch, f"--master-port={port}", *args]
    else:
        cmd = [sys.executable, *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    m = re.search(r"([0-9.]+) frames/s", out.stdout)
    if out.returncode != 0 or m is None:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return float(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=tuple(CONFIGS), default="tiny")
    ap.add_argument("--measure", action="store_true", help="time the engine (under torchrun: the pipeline)")
    ap.add_argument("--streams", type=int, nargs="+", default=[1], help="(--compare: several counts)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--groups", type=int, default=1, help="micro-batches (--measure)")
    ap.add_argument("--compare", action="store_true", help="1 process against 2 ranks, interleaved rounds")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--old-src", help="--compare: also two ranks on this `src` folder")
    a = ap.parse_args()
    if a.compare:
        compare(a.config, a.streams, a.rounds, a.steps, a.old_src)
    elif a.measure:
        measure(a.config, a.streams[0], a.steps, a.groups)
    else:
        model(a.config)


if __name__ == "__main__":
    main()
