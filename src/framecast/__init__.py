"""framecast: real-time streaming video diffusion.

from framecast import Pipeline
pipe = Pipeline.load("tiny")
for frame in pipe.stream("a red circle moving left", seed=0): ...
"""

from framecast.errors import FramecastError, InputError, ModelLoadError
from framecast.pipeline import Pipeline
from framecast.stream.config import StreamConfig
from framecast.stream.live import Stream

__all__ = ["FramecastError", "InputError", "ModelLoadError", "Pipeline", "Stream", "StreamConfig"]
__version__ = "0.1.0"
