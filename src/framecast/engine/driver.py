"""The streaming driver: one step over any number of streams, the only path from inputs to frames.

    driver = Driver(family)
    for out in driver.step([stream_a, stream_b, stream_c]):    # one batched pass, one batched decode
        for frames in out.chunks: ...                           # uint8 (T, H, W, 3) per finished chunk

A step, for every stream given:
1. prepare its input: a video-to-video stream takes its next input chunk (RUN), re-emits its last output
   chunk when the chunk is nearly the same as the last (SKIP), sits out while a live input has no whole
   chunk (WAIT), and after a finite input ended drains its chunks in flight (then END), or, when it was
   made to go on (`Stream.input_end == "prompt"`), goes on from the prompt alone;
2. admit a new chunk where the schedule needs one, under the stream's next condition;
3. run ONE batched denoiser call over all streams that run (`ModelFamily.denoise`);
4. decode every finished chunk in ONE batch, each with its stream's carried decoder state;
5. emit: each stream's frames, in input order for video to video.
Iterating a `Stream` (a batch of one), the server's engine thread, `bench` and `eval` all call this.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from framecast.engine.live import Emitted, Stream
from framecast.errors import InputError
from framecast.family.contract import ModelFamily
from framecast.stream.state import ChunkInput
from framecast.v2v.feed import Action

Finished = tuple[Stream, Tensor]  # a stream and a latent chunk it finished (family layout), not yet decoded


class Driver:
    """Steps streams of one model family: prepare inputs, one pass, one decode, emit.

    `batch_invariant`: run each stream's pass and decode on its own (one call per stream), so that a stream's
    frames are bit for bit what it gets alone, whatever streams run beside it. Batched kernels round by batch
    size (CPU conv and padded attention), which otherwise leaves a stream a level of uint8 off now and then; the
    price is the batching (a call per stream).
    """

    def __init__(self, family: ModelFamily, batch_invariant: bool = False) -> None:
        self.family, self.batch_invariant = family, batch_invariant

    def step(self, streams: Sequence[Stream], timeout: float = 0.0) -> list[Emitted]:
        """One step of every stream (at most once each); a live input is waited for up to `timeout` s."""
        out, done = self.advance(streams, timeout)
        if done:
            self._emit(streams, out, done)
        return out

    def advance(self, streams: Sequence[Stream], timeout: float = 0.0) -> tuple[list[Emitted], list[Finished]]:
        """Steps 1-3: inputs, admission and the batched pass. Returns what each stream did so far and the latents
        that finished, not yet decoded (`step` decodes them; `bench` times this against the bare forward loop)."""
        out = [self._prepare(s, timeout) for s in streams]
        running = [s for s, e in zip(streams, out, strict=True) if e.action is Action.RUN]
        if not running:
            return out, []
        if self.batch_invariant:
            latents = [self.family.denoise([s.state])[0] for s in running]
        else:
            latents = self.family.denoise([s.state for s in running])
        return out, [(s, lat) for s, lats in zip(running, latents, strict=True) for lat in lats]

    def _emit(self, streams: Sequence[Stream], out: list[Emitted], done: list[Finished]) -> None:
        """Steps 4-5: one batched decode, each stream's frames to its `Emitted`."""
        if self.batch_invariant:
            frames = [self.family.decode([s.state], [lat])[0] for s, lat in done]
        else:
            frames = self.family.decode([s.state for s, _ in done], [lat for _, lat in done])
        emitted = {id(s): e for s, e in zip(streams, out, strict=True)}
        for (s, _), chunk in zip(done, frames, strict=True):
            chunk = chunk if s.feed is None else s.feed.emitted(chunk)  # a padding chunk gives none
            if len(chunk):
                emitted[id(s)].chunks.append(chunk)
                s.frames_emitted += len(chunk)

    def _prepare(self, s: Stream, timeout: float) -> Emitted:
        """Take the stream's input and admit its next chunk where the schedule needs one."""
        fam = self.family
        if not fam.needs_chunk(s.state):
            return Emitted(Action.RUN)
        e, inp = Emitted(Action.RUN), None
        if s.feed is not None:
            e.action, inp = self._input(s, e, timeout)
            if e.action is Action.SKIP:
                e.chunks.append(s.feed.repeat())
                s.frames_emitted += len(e.chunks[0])
            if e.action is not Action.RUN:
                return e
        fam.admit(s.state, s.next_condition(), inp)
        e.admitted = 1
        return e

    def _input(self, s: Stream, e: Emitted, timeout: float) -> tuple[Action, ChunkInput | None]:
        """The next input chunk of a video-to-video stream (action, its input); an input that ends under a stream
        that goes on from the prompt is detached and said in `e`."""
        feed = s.feed
        assert feed is not None
        if not feed.done:
            try:
                action, inp = feed.prepare(timeout)
            except InputError as err:  # a file found corrupt part way: the caller's error, unless the stream goes on
                if s.input_end != "prompt":
                    raise
                feed.done, action, inp = True, Action.END, None
                feed.source.error = feed.source.error or str(err)
            if action is not Action.END:
                return action, inp
        if s.input_end == "prompt":  # go on from the prompt alone, cache kept
            e.input_ended, e.input_error = True, s.detach_input()
            return Action.RUN, None
        if feed.pending():  # drain: the last input again pushes the chunks in flight out
            return Action.RUN, feed.pad()
        return Action.END, None
