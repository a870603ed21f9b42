"""Peak memory of a stream on the CPU, run in its own process (tests/test_planner.py starts it).

    python tests/memory_probe.py '{"dit": {...DiTConfig fields...}, "stream": {...}, "chunks": 6, "tokens": 512}'

prints one JSON line: `baseline` (RSS after imports, before anything is built), `built` (after the model, the
state and the conditions, before the first pass), `peak` (the high-water mark of the whole run, VmHWM), `passes`
(its peak above `built`: reset by /proc/self/clear_refs before the passes), and the seconds it took. Everything is
float32 on the CPU; the text encoder is a seeded random stand-in of `tokens` tokens.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

import torch  # noqa: E402

from framecast.models.autoencoder import AutoencoderConfig, TinyAutoencoder  # noqa: E402
from framecast.models.config import DiTConfig  # noqa: E402
from framecast.models.dit import CausalWanDiT  # noqa: E402
from framecast.pipeline import Pipeline, PipelineConfig  # noqa: E402
from framecast.stream.config import StreamConfig  # noqa: E402
from tests.conftest import RandomTextEncoder  # noqa: E402


def rss(field: str) -> int:
    """VmRSS or VmHWM of this process in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main(spec: dict) -> dict:
    torch.set_grad_enabled(False)
    baseline = rss("VmRSS")
    t0 = time.perf_counter()
    torch.manual_seed(0)
    dit = CausalWanDiT(DiTConfig(**spec["dit"])).eval()
    ae = TinyAutoencoder(AutoencoderConfig(latent_channels=dit.config.in_channels)).eval()
    enc = RandomTextEncoder(dit.config.text_dim, spec.get("tokens", 1))
    pipe = Pipeline(dit, ae, enc, PipelineConfig(stream=StreamConfig(**spec["stream"])))
    frames = spec["chunks"] * pipe.frames_per_chunk
    stream = pipe.stream("a red circle", seed=0)
    stream_iter = iter(stream)
    first = next(stream_iter)  # the conditions are encoded, the state exists; warm-up passes ran
    built = rss("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: what follows is the steady passes' peak
    n = 1
    for _ in stream_iter:
        n += 1
        if n == frames:
            break
    passes = rss("VmHWM")
    return {
        "baseline": baseline, "built": built, "passes": passes, "frames": n, "seconds": time.perf_counter() - t0,
        "shape": list(first.shape),
    }  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
