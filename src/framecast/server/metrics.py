"""Prometheus metrics of one server, in its own registry (no process-wide state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ROWS = (1, 2, 3, 4, 6, 8, 12, 16, 32)
STAGES = ("forward", "decode", "encode", "send")


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.frames_emitted = Counter("framecast_frames_emitted", "Frames decoded for sessions", registry=r)
        self.frames_sent = Counter("framecast_frames_sent", "Frames sent to clients", registry=r)
        self.frames_dropped = Counter(
            "framecast_frames_dropped", "Frames dropped from a full session queue (slow client)", registry=r
        )
        self.stage_seconds = Histogram(
            "framecast_stage_seconds",
            "Latency per stage: forward (one engine pass), decode (all chunks of a pass), encode and send (one frame)",
            ["stage"],
            buckets=SECONDS,
            registry=r,
        )
        self.chunk_latency = Histogram(
            "framecast_chunk_latency_seconds", "A chunk from admission to decoded frames", buckets=SECONDS, registry=r
        )
        self.pass_rows = Histogram(
            "framecast_pass_rows", "Sessions batched in one engine pass", buckets=ROWS, registry=r
        )
        self.queue_depth = Gauge("framecast_queue_depth_frames", "Frames waiting in all session queues", registry=r)
        self.sessions = Gauge("framecast_sessions", "Sessions by state", ["state"], registry=r)
        self.deadline_misses = Counter("framecast_deadline_misses", "Chunks finished after their deadline", registry=r)
        self.refused = Counter("framecast_sessions_refused", "Sessions or starts refused", ["reason"], registry=r)
        self.bad_messages = Counter("framecast_bad_messages", "Control messages refused", ["code"], registry=r)
        self.messages_dropped = Counter(
            "framecast_messages_dropped", "Replies dropped because a session's message queue was full", registry=r
        )
        self.kv_cache_bytes = Gauge(
            "framecast_kv_cache_bytes", "Bytes of the KV caches of all live streams (engine thread)", registry=r
        )
        self.utilization = Gauge(
            "framecast_predicted_utilization", "Predicted engine busy fraction of the streaming sessions", registry=r
        )
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for state in ("connected", "streaming", "connecting"):
            self.sessions.labels(state).set(0)

    def pass_done(self, rows: int, forward_s: float, decode_s: float) -> None:
        self.pass_rows.observe(rows)
        self.stage_seconds.labels("forward").observe(forward_s)
        self.stage_seconds.labels("decode").observe(decode_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
