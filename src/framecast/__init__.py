"""framecast: real-time streaming video diffusion.

from framecast import Pipeline
pipe = Pipeline.load("tiny")
for frame in pipe.stream("a red circle moving left", seed=0): ...
"""

import os

# Idle OpenMP threads sleep instead of spinning, unless the user chose (read when torch loads, so it is set
# before any framecast import of torch). Spinning threads stall a small model at every parallel region when
# anything else uses the CPU: measured on 2 cores beside one busy process, 6.4 against 359 frames/s. Idle,
# sleeping threads cost some speed (150 against 210 frames/s); OMP_WAIT_POLICY=ACTIVE keeps them spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from framecast.engine.live import Stream  # noqa: E402
from framecast.errors import FramecastError, InputError, ModelLoadError  # noqa: E402
from framecast.pipeline import Pipeline  # noqa: E402
from framecast.stream.config import StreamConfig  # noqa: E402

__all__ = ["FramecastError", "InputError", "ModelLoadError", "Pipeline", "Stream", "StreamConfig"]
__version__ = "0.1.0"
