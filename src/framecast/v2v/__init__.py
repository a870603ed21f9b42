"""Video to video: input sources, the motion-aware strength controller, the similarity filter and the feed
that hands input chunks to a stream (docs/v2v.md).

    pipe = Pipeline.load("tiny")
    for frame in pipe.video_to_video("a blue square", "in.mp4"): ...       # motion-aware strength
    for frame in pipe.video_to_video("a blue square", clip, strength=0.7): ...
"""

from framecast.v2v.controller import MotionConfig, MotionController, MotionState, frame_motion, step, target_strength
from framecast.v2v.feed import Action, FeedStats, InputFeed, V2VConfig
from framecast.v2v.frames import as_rgb, fit_chunk, fit_frame
from framecast.v2v.similarity import SimilarityConfig, SimilarityFilter, chunk_difference
from framecast.v2v.sources import FrameSource, Grab, IteratorSource, LiveSource, VideoFileSource, as_source

__all__ = [
    "Action",
    "FeedStats",
    "FrameSource",
    "Grab",
    "InputFeed",
    "IteratorSource",
    "LiveSource",
    "MotionConfig",
    "MotionController",
    "MotionState",
    "SimilarityConfig",
    "SimilarityFilter",
    "V2VConfig",
    "VideoFileSource",
    "as_rgb",
    "as_source",
    "chunk_difference",
    "fit_chunk",
    "fit_frame",
    "frame_motion",
    "step",
    "target_strength",
]
