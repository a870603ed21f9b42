"""Settings of one stream: denoising steps, cache window, sinks and RoPE refresh."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from framecast.errors import InputError
from framecast.sampling.flow import DEFAULT_SHIFT, MAX_STEPS, SAMPLERS, listed_sigmas, sdedit_sigmas, sigmas

MAX_GUIDANCE = 20.0
MAX_TIMESTEPS = 8  # longest explicit timestep list (its first `steps` are used)


@dataclass(frozen=True)
class StreamConfig:
    """How a stream denoises and what it remembers. Sizes are in chunks of `chunk_frames` latent frames.

    steps:          denoising passes per chunk (1..4).
    shift:          flow-matching time shift of the schedule.
    timesteps:      an explicit timestep list (t in (0, 1000], descending) whose first `steps` entries are the
                    schedule, each warped by `shift` (shift 1: as listed); empty (default): `steps` levels
                    evenly spaced from 1000, warped by `shift` (`flow.sigmas`). Recipes set it (docs/models.md).
    window_chunks:  chunks of the rolling window a chunk attends to, besides the sinks.
    sink_chunks:    first chunks of the stream, never evicted.
    refresh_chunks: every this many chunks, RoPE positions wrap back, so they stay bounded.
    clean_pass:     write a chunk's cache from an extra pass at t=0 over the finished latent (CausVid,
                    Self-Forcing); otherwise keep the keys/values of its last denoising pass.
    batch_steps:    stream batch: keep `steps` chunks in flight, one forward per emitted chunk; else
                    sequential, one chunk at a time (lowest latency and activation memory).
    blend_chunks:   chunks over which a prompt change blends the old condition into the new one.
    switch_passes:  a prompt change also applies to the chunks in flight that have run fewer than this many
                    of their denoising passes (0: only to chunks started after it; `steps` or more: to all
                    that are still denoising). The stream batch keeps up to `steps` chunks in flight, so a
                    change shows up to that many chunks sooner; the sequential schedule finishes a chunk
                    before its frames come out, so there it changes nothing. A blended change
                    (`blend_chunks`) leaves the chunks in flight as they are.
    guidance:       classifier-free guidance scale w: velocity = v(empty prompt) + w * (v(prompt) - v(empty
                    prompt)), the empty-prompt row sharing the stream's cache; 1 is off (one row per pass).
    context_noise:  noise level at which the clean pass reads a finished chunk into the cache (0: clean).
                    A little noise hides the model's own small errors from the chunks after it, so they do
                    not compound over a long stream; needs `clean_pass`.
    sampler:        how a chunk steps between noise levels: "euler" (default), x + (s' - s) v; or "renoise",
                    the clean estimate x0 = x - s v noised afresh to s' (CausVid, Self-Forcing and kin), with
                    `steps - 1` noise draws per chunk from the stream's own re-noise generator, made when the
                    chunk is admitted (so both schedules draw the same). The last step gives x0 in both.
    recache:        on an unblended prompt change, recompute the keys/values of the cached chunks (sinks and
                    window) under the new prompt (LongLive's KV re-cache): their final passes run again, oldest
                    first, from the inputs they read, each seeing the re-cached ones before it, before the first
                    pass of the first chunk of the new prompt; every later chunk sees them at that final pass.
                    The chunks in flight finish first (the stream batch admits nothing meanwhile), so both
                    schedules give the same frames. The empty prompt's ring (guidance) stays: its condition did
                    not change. The stream keeps each cached chunk's input (`StreamState.memory_bytes`).
    """

    steps: int = 4
    shift: float = DEFAULT_SHIFT
    window_chunks: int = 6
    sink_chunks: int = 1
    refresh_chunks: int = 48
    clean_pass: bool = True
    batch_steps: bool = True
    blend_chunks: int = 0
    switch_passes: int = 0
    guidance: float = 1.0
    context_noise: float = 0.0
    timesteps: tuple[float, ...] = ()
    sampler: str = "euler"
    recache: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= MAX_STEPS:
            raise InputError(f"steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        if not self.shift > 0:
            raise InputError(f"shift must be positive, got {self.shift}")
        self._check_timesteps()
        if self.window_chunks < 1:
            raise InputError(f"window_chunks must be at least 1, got {self.window_chunks}")
        if self.sink_chunks < 0:
            raise InputError(f"sink_chunks must be 0 or more, got {self.sink_chunks}")
        if self.refresh_chunks < 1:
            raise InputError(f"refresh_chunks must be at least 1, got {self.refresh_chunks}")
        if self.blend_chunks < 0:
            raise InputError(f"blend_chunks must be 0 or more, got {self.blend_chunks}")
        if self.switch_passes < 0:
            raise InputError(f"switch_passes must be 0 or more, got {self.switch_passes}")
        if not 0.0 <= self.guidance <= MAX_GUIDANCE:
            raise InputError(f"guidance must be between 0 and {MAX_GUIDANCE:g}, got {self.guidance}")
        if not 0.0 <= self.context_noise < 1.0:
            raise InputError(f"context_noise must be in [0, 1), got {self.context_noise}")
        if self.context_noise and not self.clean_pass:
            raise InputError("context_noise needs clean_pass: only the clean pass reads a finished chunk")
        if self.sampler not in SAMPLERS:
            raise InputError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if not isinstance(self.recache, bool):
            raise InputError(f"recache must be true or false, got {self.recache!r}")

    def _check_timesteps(self) -> None:
        if isinstance(self.timesteps, (str, bytes)) or not isinstance(self.timesteps, (tuple, list)):
            raise InputError(f"timesteps must be a list of numbers, got {self.timesteps!r}")
        ts = tuple(self.timesteps)
        if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in ts):
            raise InputError(f"timesteps must be numbers, got {list(ts)}")
        object.__setattr__(self, "timesteps", tuple(float(t) for t in ts))  # a JSON list becomes a tuple
        if not ts:
            return
        if len(ts) > MAX_TIMESTEPS or not all(0 < t <= 1000 for t in ts):
            raise InputError(f"timesteps must be 1 to {MAX_TIMESTEPS} values in (0, 1000], got {list(ts)}")
        if any(a <= b for a, b in zip(ts, ts[1:], strict=False)):
            raise InputError(f"timesteps must be strictly descending, got {list(ts)}")
        if self.steps > len(ts):
            raise InputError(f"steps {self.steps} is more than the {len(ts)} listed timesteps {list(ts)}")

    def noise_levels(self, strength: float = 1.0) -> Tensor:
        """Noise levels (steps + 1,) float32 of a chunk that starts at `strength` (1: from pure noise; below: a
        video-to-video chunk, the schedule restricted to [0, strength]); the last level is 0."""
        if self.timesteps:
            return listed_sigmas(self.timesteps[: self.steps], self.shift, strength)
        if strength == 1.0:
            return sigmas(self.steps, self.shift)
        return sdedit_sigmas(self.steps, self.shift, strength)

    @property
    def guided(self) -> bool:
        """True when every pass also runs the empty prompt (classifier-free guidance)."""
        return self.guidance != 1.0

    @property
    def rows(self) -> int:
        """Batch rows a pass of this stream takes: two when guided (the empty prompt's row), else one."""
        return 2 if self.guided else 1

    @property
    def final_pass(self) -> int:
        """Index of the pass whose keys/values a chunk leaves in the cache."""
        return self.steps if self.clean_pass else self.steps - 1

    @property
    def cache_chunks(self) -> int:
        """Chunks the KV cache holds: the sinks and the window."""
        return self.sink_chunks + self.window_chunks

    # -- schedule facts: what every front end needs to know of a schedule, computed here only --------------
    @property
    def passes_per_chunk(self) -> int:
        """Denoiser passes per emitted chunk in steady state."""
        return 1 if self.batch_steps else self.final_pass + 1

    @property
    def emit_delay(self) -> int:
        """Passes between the pass that admits a chunk and the pass that emits it (the stream batch's latency)."""
        return self.steps - 1 if self.batch_steps else 0

    @property
    def chunk_units(self) -> int:
        """Work of one steady pass in chunk-rows: chunks in the row times batch rows (2 when guided). Sequential
        passes are one chunk each, but `final_pass + 1` of them make a chunk, so both schedules cost the same
        units per emitted chunk."""
        return (self.final_pass + 1) * self.rows

    @property
    def warm_chunks(self) -> int:
        """Chunks after which a stream runs in steady state: the cache full and the row at its full length."""
        return self.cache_chunks + self.steps + 2
