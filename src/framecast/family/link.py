"""Point-to-point links between the stages of a pipeline-parallel DiT over torch.distributed, every wait bounded.

    link = Link(rank, world, timeout_s=60.0, device=device, names=["rank 0 (blocks 0-1)", "rank 1 (blocks 2-3)"])
    link.send(tokens, dst=1)                          # asynchronous (isend); `flush` waits for the sends
    tokens = link.recv((B, F, P, D), dtype, src=0)    # bounded by `timeout_s`
    later = link.post((B, C, F, H, W), dtype, src=1, tag=VELOCITY)   # irecv started now ...
    v = later.wait()                                  # ... waited for (bounded) when it is needed
    emb = link.broadcast(emb_or_none, src=0)          # shape and data from `src` to every rank

A rank that dies shows on its neighbours' next send or receive (gloo: "Connection reset by peer"; NCCL: its own
watchdog); a rank that hangs shows when a wait runs past `timeout_s`. Either way the link raises `StageError`
naming the peer and its blocks. A `Watchdog` thread backs this up for any wait that does not honour its timeout:
when one has been pending for `timeout_s` plus a grace period it prints the same kind of message and ends the
process, so no rank ever waits for ever. The process group's own timeout (`init_process_group(timeout=...)`,
engine/parallel.py) is set to the same bound.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from framecast.errors import FramecastError

GRACE_S = 5.0  # the watchdog ends a process this long after a wait's own timeout should have fired

# message kinds (gloo matches a receive with the sends of its tag; NCCL, which ignores tags, in posting order, which
# the stages keep the same on both sides)
TOKENS, VELOCITY, COUNTS = 0, 1, 2


class StageError(FramecastError):
    """Another rank of the pipeline died, hung or broke its link."""


class Link:
    """This rank's sends and receives to the other stages; every wait bounded by `timeout_s`."""

    def __init__(
        self, rank: int, world: int, timeout_s: float, device: torch.device, names: Sequence[str] | None = None
    ) -> None:
        self.rank, self.world, self.timeout_s, self.device = rank, world, timeout_s, device
        self.names = list(names) if names is not None else [f"rank {r}" for r in range(world)]
        self._sends: list[tuple[dist.Work, Tensor, int]] = []  # pending isends and the tensors they read, oldest first
        self._waiting: tuple[float, str] | None = None  # (since, what) of the wait in progress
        self.watchdog = Watchdog(self)

    def send(self, tensor: Tensor, dst: int, tag: int = TOKENS) -> None:
        """Start sending `tensor` (contiguous, not modified until `flush`) to rank `dst`."""
        try:
            work = dist.isend(tensor, dst, tag=tag)
        except RuntimeError as e:
            raise self._error(dst, "sending to", e) from None
        assert work is not None
        self._sends.append((work, tensor, dst))

    def post(self, shape: Sequence[int], dtype: torch.dtype, src: int, tag: int = TOKENS) -> Incoming:
        """Start receiving a tensor of `shape` and `dtype` from rank `src`; `wait()` on the answer gives it."""
        buf = torch.empty(tuple(shape), dtype=dtype, device=self.device)
        try:
            work = dist.irecv(buf, src, tag=tag)
        except RuntimeError as e:
            raise self._error(src, "receiving from", e) from None
        assert work is not None
        return Incoming(self, work, buf, src)

    def recv(self, shape: Sequence[int], dtype: torch.dtype, src: int, tag: int = TOKENS) -> Tensor:
        """A tensor of `shape` and `dtype` from rank `src`."""
        return self.post(shape, dtype, src, tag).wait()

    def flush(self, keep: int = 0) -> None:
        """Wait for every pending send but the `keep` newest (those travel on while this rank works)."""
        cut = max(0, len(self._sends) - keep)
        sends, self._sends = self._sends[:cut], self._sends[cut:]
        for work, _, dst in sends:
            self._wait(work, dst, "sending to")

    def broadcast(self, tensor: Tensor | None, src: int = 0) -> Tensor:
        """`tensor` (given on `src` only) on every rank: its shape, dtype code and data, one collective each."""
        codes = list(DTYPES)
        head = torch.zeros(9, dtype=torch.long, device=self.device)  # dtype code, ndim, up to 7 sizes
        if self.rank == src:
            assert tensor is not None and tensor.dim() <= 7
            head[0], head[1] = codes.index(tensor.dtype), tensor.dim()
            head[2 : 2 + tensor.dim()] = torch.tensor(tensor.shape)
        self._collective(head, src)
        if self.rank != src:
            dtype, ndim = codes[int(head[0])], int(head[1])  # host sync: once per prompt, not per pass
            tensor = torch.empty(head[2 : 2 + ndim].tolist(), dtype=dtype, device=self.device)
        assert tensor is not None
        tensor = tensor.contiguous()
        self._collective(tensor, src)
        return tensor

    def _collective(self, tensor: Tensor, src: int) -> None:
        try:
            work = dist.broadcast(tensor, src, async_op=True)
        except RuntimeError as e:
            raise self._error(src, "a broadcast from", e) from None
        assert work is not None
        self._wait(work, src, "a broadcast from")

    def _wait(self, work: dist.Work, peer: int, what: str) -> None:
        self._waiting = (time.monotonic(), f"{what} {self.names[peer]}")
        try:
            work.wait(timedelta(seconds=self.timeout_s))
        except RuntimeError as e:
            raise self._error(peer, what, e) from None
        finally:
            self._waiting = None

    def _error(self, peer: int, what: str, cause: BaseException) -> StageError:
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        return StageError(
            f"{self.names[self.rank]}: the pipeline broke while {what} {self.names[peer]}: it died, hung or "
            f"broke its link (no answer within {self.timeout_s:g} s, or the connection closed): {detail[:200]}"
        )

    def waiting(self) -> tuple[float, str] | None:
        """(seconds, what) of the wait in progress, or None."""
        w = self._waiting
        return None if w is None else (time.monotonic() - w[0], w[1])


class Incoming:
    """A receive in progress (`Link.post`): `wait()` gives its tensor, waiting at most the link's timeout."""

    def __init__(self, link: Link, work: dist.Work, buf: Tensor, src: int) -> None:
        self.link, self.work, self.buf, self.src = link, work, buf, src
        self.done = False

    def wait(self) -> Tensor:
        if not self.done:
            self.link._wait(self.work, self.src, "receiving from")
            self.done = True
        return self.buf


DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int32, torch.uint8)


class Watchdog:
    """A daemon thread that ends the process when one of its link's waits outlives its timeout (a backstop: the
    waits raise `StageError` themselves when the backend honours the timeout, as gloo does)."""

    def __init__(self, link: Link, period_s: float = 1.0) -> None:
        self.link, self.period_s = link, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="framecast-stage-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        limit = self.link.timeout_s + GRACE_S
        while not self._stop.wait(self.period_s):
            w = self.link.waiting()
            if w is not None and w[0] > limit:
                me = self.link.names[self.link.rank]
                print(
                    f"framecast: error: {me}: waited {w[0]:.0f} s {w[1]}, past the {self.link.timeout_s:g} s "
                    "timeout: a rank died or hangs; ending this process",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(1)
