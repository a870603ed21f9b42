"""Throughput model of the pipeline-parallel DiT (docs/parallel.md): measured per-block times on this machine, the
balancer's split into 1, 2 and 4 stages, and the frames per second each predicts.

    OMP_NUM_THREADS=1 python scripts/pp_throughput.py [--config tiny|wide]           # the model (one process)
    OMP_NUM_THREADS=1 python scripts/pp_throughput.py --measure --streams 2          # one process, measured
    OMP_NUM_THREADS=1 torchrun --nproc-per-node=2 scripts/pp_throughput.py --measure --streams 2   # two stages

One thread a process: each stage stands for one device. Random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import time

import torch

from framecast.engine import parallel
from framecast.family.causal import CausalFamily
from framecast.family.stages import split_blocks, time_blocks
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


def measure(name: str, streams: int, steps: int) -> None:
    env = parallel.torchrun_env()
    pipe = _pipe(name)
    cfg = pipe.stream_config()
    if env is not None:
        parallel.init(env, "cpu")
        pipe = Pipeline.from_family(parallel.staged(pipe.family, env, cfg), pipe.config)
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
        print(f"{name}, {world} stage(s), {streams} stream(s): {rate}")
    parallel.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=tuple(CONFIGS), default="tiny")
    ap.add_argument("--measure", action="store_true", help="time the engine (under torchrun: the pipeline)")
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--steps", type=int, default=60)
    a = ap.parse_args()
    if a.measure:
        measure(a.config, a.streams, a.steps)
    else:
        model(a.config)


if __name__ == "__main__":
    main()
