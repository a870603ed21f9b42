"""Flicker of img2img on video with an image model: noise reuse and latent feedback against plain per-frame
img2img (fresh noise every frame). Prints, per setting, the mean absolute change between consecutive output
frames (uint8 levels) on a still camera with sensor noise and on a slowly panning scene.

    python scripts/image_flicker.py MODEL_DIR [--tiny-vae DIR] [--strength 0.5] [--frames 24]
"""

from __future__ import annotations

import argparse

import numpy as np

from framecast.family.image_settings import ImageSettings
from framecast.pipeline import Pipeline
from framecast.v2v import V2VConfig

SETTINGS = {
    "fresh noise (plain img2img)": ImageSettings(noise="fresh"),
    "fixed noise": ImageSettings(noise="fixed"),
    "fixed noise + feedback 0.3": ImageSettings(noise="fixed", feedback=0.3),
}


def clips(size: tuple[int, int], n: int) -> dict[str, np.ndarray]:
    h, w = size
    rng = np.random.default_rng(0)
    base = np.zeros((h, w, 3), dtype=np.float64)
    base[..., 2] = np.linspace(40, 200, w)
    base[h // 3 : h // 2, w // 4 : w // 2] = (230, 60, 40)
    still = np.clip(base[None] + rng.normal(0, 3, (n, h, w, 3)), 0, 255).astype(np.uint8)  # sensor noise
    pan = np.stack([np.roll(base, i // 2, axis=1) for i in range(n)]).astype(np.uint8)  # half a pixel per frame
    return {"still camera (noise 3 levels)": still, "slow pan (0.5 px/frame)": pan}


def flicker(frames: np.ndarray) -> float:
    return float(np.abs(np.diff(frames.astype(np.int16), axis=0)).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tiny-vae", default=None)
    ap.add_argument("--strength", type=float, default=0.5)
    ap.add_argument("--frames", type=int, default=24)
    a = ap.parse_args()
    v2v = V2VConfig.fixed(a.strength, skip_similar=False)
    first = Pipeline.load_image(a.model, tiny_vae=a.tiny_vae)
    inputs = clips(first.frame_size, a.frames)
    print("setting".ljust(30) + "".join(name.rjust(32) for name in inputs))
    print("input itself".ljust(30) + "".join(f"{flicker(c):32.2f}" for c in inputs.values()))
    for label, settings in SETTINGS.items():
        pipe = Pipeline.load_image(a.model, settings, tiny_vae=a.tiny_vae)
        row = [flicker(np.stack(list(pipe.video_stream("a watercolor painting", c, v2v=v2v)))) for c in inputs.values()]
        print(label.ljust(30) + "".join(f"{v:32.2f}" for v in row))


if __name__ == "__main__":
    main()
