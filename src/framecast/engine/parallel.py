"""Launching a pipeline-parallel DiT over torch.distributed (docs/parallel.md).

    torchrun --nproc-per-node=2 -m framecast generate "a red circle" -o out.mp4 --random-weights

torchrun starts one process per stage and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
`torchrun_env()` reads them. `init(env, device)` joins the process group (NCCL for CUDA, gloo otherwise) with an
explicit timeout; `staged(family, env, ...)` measures the blocks, splits them into stages on rank 0 (the others
take its split) and gives this rank's `StagedFamily`. Every rank then runs the same front end; the last rank's
frames are the real ones.

Settings from the environment (torchrun passes it to every rank):
    FRAMECAST_PP_TIMEOUT  seconds any rank waits for another before it ends with an error (default 60)
    FRAMECAST_PP_BLOCKS   blocks per stage, e.g. "2,2" (default: split by measured block times)
    FRAMECAST_PP_GROUPS   micro-batches the streams are split into, which circulate across steps (default: one
                          per stage)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from framecast.errors import InputError
from framecast.family.contract import ModelFamily
from framecast.family.link import Link
from framecast.family.stages import StagedFamily, StagePlan, as_causal, split_blocks, time_blocks
from framecast.stream.config import StreamConfig

DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun launch."""

    rank: int
    world: int
    local_rank: int
    timeout_s: float = DEFAULT_TIMEOUT_S


def torchrun_env() -> DistEnv | None:
    """The launch torchrun (or a launcher that sets the same variables) made, or None in a plain process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        timeout = float(os.environ.get("FRAMECAST_PP_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError as e:
        raise InputError(f"bad torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, timeout): {e}") from None
    if not timeout > 0:
        raise InputError(f"FRAMECAST_PP_TIMEOUT must be positive, got {timeout}")
    return DistEnv(rank, world, local, timeout)


def init(env: DistEnv, device: str) -> str:
    """Join the process group (NCCL on CUDA, gloo otherwise) with `env.timeout_s` as its timeout; returns the device
    this rank runs on (cuda:LOCAL_RANK for "cuda")."""
    if device.startswith("cuda"):
        device = f"cuda:{env.local_rank}"
        torch.cuda.set_device(device)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=env.timeout_s))
    return device


def staged(family: ModelFamily, env: DistEnv, cfg: StreamConfig) -> StagedFamily:
    """This rank's stage of `family` (a causal DiT family): the split from FRAMECAST_PP_BLOCKS, or measured on rank 0
    under `cfg` and broadcast; the DiT trimmed to this rank's blocks."""
    causal = as_causal(family)
    layers, device = len(causal.dit.blocks), causal.device
    probe = Link(env.rank, env.world, env.timeout_s, device)  # for the split, before stages have names
    bounds = _blocks_from_env(layers, env.world)
    if bounds is None:
        mine = split_blocks(time_blocks(causal.dit, cfg, device), env.world) if env.rank == 0 else None
        sent = probe.broadcast(None if mine is None else torch.tensor(mine, device=device), 0)
        bounds = tuple(int(b) for b in sent.tolist())
    probe.watchdog.stop()
    plan = StagePlan(bounds, env.rank)
    link = Link(env.rank, env.world, env.timeout_s, device, plan.names())
    groups = int(os.environ.get("FRAMECAST_PP_GROUPS", "0")) or None
    return StagedFamily(causal, plan, link, groups)


def _blocks_from_env(layers: int, world: int) -> tuple[int, ...] | None:
    text = os.environ.get("FRAMECAST_PP_BLOCKS", "").strip()
    if not text:
        return None
    try:
        sizes = [int(x) for x in text.split(",")]
    except ValueError:
        raise InputError(f"FRAMECAST_PP_BLOCKS must be block counts like 2,2, got {text!r}") from None
    if len(sizes) != world or sum(sizes) != layers or min(sizes) < 1:
        raise InputError(f"FRAMECAST_PP_BLOCKS={text} must give {world} stages of at least one block, {layers} in all")
    bounds = [0]
    for s in sizes:
        bounds.append(bounds[-1] + s)
    return tuple(bounds)


def shutdown() -> None:
    """Leave the process group after a clean run (after an error the process just ends). A rank before the last
    finishes its run while its last passes are still on their way (they circulate across steps), so every rank
    first waits at a barrier for the others to finish theirs."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
