"""Where a viewer's defects come from: the viewer eval (`framecast.evaluation.viewer`) read on the world's own
renders and on the built-in autoencoder's streaming reconstructions of the same clips (encode, then decode chunk
by chunk with the decoder's carried state, as a stream does), canonical wording. Defects already in the
reconstructions (ghosts, seam steps) are the autoencoder's; the rest of what `framecast eval --viewer` finds is
the DiT's.

    python scripts/viewer_probe.py [--model tiny] [--seconds 4] [--seeds 2]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from framecast.evaluation.viewer import ViewerCase, ViewerSettings, run_viewer
from framecast.pipeline import Pipeline
from framecast.world import render

KEYS = ("exact", "extra", "missing", "ghost", "fringe", "background_clips", "color", "shape", "motion")
KEYS += ("step_inside", "step_seam", "step_ratio", "change_ratio")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--seeds", type=int, default=2)
    a = ap.parse_args()
    pipe = Pipeline.load(a.model)
    fam, fpc = pipe.family, pipe.frames_per_chunk

    def world(case: ViewerCase, n: int) -> np.ndarray:
        return render(case.scene, 0, n)

    @torch.inference_mode()
    def reconstructed(case: ViewerCase, n: int) -> np.ndarray:
        clip = render(case.scene, 0, n - n % fpc)
        z = fam.encode(clip)  # (1, C, F, h, w)
        state = fam.new_state(pipe.config.stream, 0)
        return np.concatenate([fam.decode([state], [z[0, :, f : f + 1]])[0] for f in range(z.shape[2])])

    s = ViewerSettings(seconds=a.seconds, seeds=a.seeds, wordings=("canonical",))
    print("clips".ljust(14) + "".join(k.rjust(14) for k in KEYS))
    for name, gen in (("world", world), ("autoencoder", reconstructed)):
        r = run_viewer(gen, s, pipe.config.fps, fpc, pipe.frame_size)
        print(name.ljust(14) + "".join(f"{r.overall[k]:14.3f}" for k in KEYS))


if __name__ == "__main__":
    main()
