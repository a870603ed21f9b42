"""The command line on a Wan2.1 folder: --size, --chunk-frames reach WanOptions; other models refuse them."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from framecast.cli import main
from tests.wan_parts import HEIGHT, WIDTH, parts, save_diffusers

pytest.importorskip("diffusers")


def test_size_and_chunk_frames_reach_a_wan_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = save_diffusers(parts(dit_seed=1), tmp_path / "wan")
    out = tmp_path / "out.mp4"
    size = f"{WIDTH}x{HEIGHT}"
    assert main(["generate", "a fox", "--model", str(folder), "--size", size, "--chunk-frames", "3",
                 "--seconds", "1", "--fps", "16", "-o", str(out)]) == 0  # fmt: skip
    with av.open(str(out)) as f:
        stream = f.streams.video[0]
        assert (stream.width, stream.height) == (WIDTH, HEIGHT)
    assert main(["generate", "a fox", "--model", str(folder), "--size", "100x90", "-o", str(out)]) == 2
    assert "multiple of 16" in capsys.readouterr().err
    assert main(["generate", "a fox", "--chunk-frames", "2", "-o", str(out)]) == 2
    assert "for Wan2.1 folders" in capsys.readouterr().err
