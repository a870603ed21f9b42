"""An image model on the live server: a webcam session (WebSocket JPEGs, img2img) beside a text-to-image session,
both batched on one model, each getting frames."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from framecast.pipeline import Pipeline
from tests.image_models import save, save_taesd, sd_pipeline
from tests.test_server_support import Client, running

pytest.importorskip("fastapi")


def _jpeg(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _frame(i: int) -> np.ndarray:
    img = np.zeros((40, 48, 3), dtype=np.uint8)  # not the model's size: the server fits it on arrival
    img[..., 2] = 160
    img[10:24, 4 + 2 * i : 16 + 2 * i] = (230, 60, 40)
    return img


def test_a_webcam_session_and_a_text_session_share_one_image_model(tmp_path: Path) -> None:
    folder = save(sd_pipeline("lcm"), tmp_path / "sd")
    pipe = Pipeline.load_image(folder, tiny_vae=save_taesd(tmp_path / "taesd"))
    with running(pipe, input_timeout_s=1.0) as srv:
        text, cam = Client(srv.ws_url), Client(srv.ws_url)
        for c in (text, cam):
            assert c.message("hello")["frames_per_chunk"] == 1
        text.send({"type": "start", "prompt": "a red circle", "seed": 1, "steps": 2, "fps": 60, "format": "raw"})
        cam.send({"type": "start", "prompt": "a blue square", "seed": 2, "steps": 2, "fps": 30, "format": "raw",
                  "source": "webcam", "strength": 0.5})  # fmt: skip
        assert cam.message("started")["source"] == "webcam"
        for i in range(16):
            cam.ws.send(_jpeg(_frame(i)))
            time.sleep(1 / 30)
        cam.wait_for(lambda c: len(c.frames) >= 8)
        text.wait_for(lambda c: len(c.frames) >= 8)
        stats = cam.message("stats")
        for c in (text, cam):
            c.close()
    assert stats["input"]["source"] == "webcam" and stats["input"]["frames"] >= 8
    assert all(f.shape == (32, 32, 3) for _, f in cam.frames + text.frames)
    ref = pipe.generate("a red circle", 8, seed=1, steps=2)
    got = np.stack([f for _, f in text.frames[:8]])
    assert np.abs(got.astype(int) - ref).max() <= 1  # the text session's frames are its own, beside the webcam
