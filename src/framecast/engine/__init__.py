"""The streaming driver (`driver.Driver`) and the live stream it steps (`live.Stream`)."""

from framecast.engine.driver import Driver
from framecast.engine.live import Emitted, Stream

__all__ = ["Driver", "Emitted", "Stream"]
