"""Image models side by side in one run: the stream batch against sequential, and residual CFG ("self",
"initialize") against full CFG, on one loaded model, rounds interleaved so that machine noise hits every variant
alike. Prints frames per second (median over rounds) and the ratios.

    python scripts/image_bench.py MODEL_DIR [--steps 3] [--guidance 2] [--rounds 5] [--seconds 1] [--tiny-vae DIR]
"""

from __future__ import annotations

import argparse
import statistics
import time

from framecast.family.image import ImageFamily
from framecast.family.image_settings import ImageSettings
from framecast.models.diffusers_image import load_image_folder
from framecast.pipeline import Pipeline, PipelineConfig
from framecast.stream.config import StreamConfig

VARIANTS = {"no guidance": None, "full CFG": "full", "RCFG self": "self", "RCFG initialize": "initialize"}


def fps(pipe: Pipeline, cfg: StreamConfig, seconds: float) -> float:
    """Frames per second of one stream in steady state (after its warm-up passes), over about `seconds`."""
    stream = pipe.stream("a watercolor fox", 0, config=cfg)
    for _ in range(2 * cfg.steps):
        pipe.driver.step([stream])
    frames, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        frames += len(pipe.driver.step([stream])[0].frames)
    return frames / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--tiny-vae", default=None)
    a = ap.parse_args()
    parts = load_image_folder(a.model, a.tiny_vae)
    runs: dict[tuple[str, str], list[float]] = {}
    pipes = {}
    for name, kind in VARIANTS.items():
        fam = ImageFamily(parts, ImageSettings(cfg_type=kind or "self"))
        pipes[name] = (Pipeline.from_family(fam, PipelineConfig()), 1.0 if kind is None else a.guidance)
    for _ in range(a.rounds):
        for name, (pipe, guidance) in pipes.items():
            for schedule, batch in (("stream batch", True), ("sequential", False)):
                cfg = StreamConfig(steps=a.steps, batch_steps=batch, guidance=guidance)
                runs.setdefault((name, schedule), []).append(fps(pipe, cfg, a.seconds))
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"{a.model}: {a.steps} steps, guidance {a.guidance:g}, {a.rounds} interleaved rounds of ~{a.seconds:g} s")
    print("variant".ljust(18) + "stream batch fps".rjust(18) + "sequential fps".rjust(16) + "batch/seq".rjust(11))
    for name in VARIANTS:
        b, s = med[(name, "stream batch")], med[(name, "sequential")]
        print(name.ljust(18) + f"{b:18.1f}{s:16.1f}{b / s:10.2f}x")
    for name in ("RCFG self", "RCFG initialize"):
        ratio = med[(name, "stream batch")] / med[("full CFG", "stream batch")]
        print(f"{name} / full CFG (stream batch): {ratio:.2f}x")


if __name__ == "__main__":
    main()
