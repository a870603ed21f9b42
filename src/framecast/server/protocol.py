"""Control messages (JSON) between a client and its session, validated strictly.

Client -> server, each a JSON object of at most `MAX_CONTROL_BYTES` bytes with no unknown fields:

    {"type": "start", "prompt": str, "seed": int, "steps": int, "fps": float, "format": "jpeg"|"png"|"raw",
     "quality": int, "source": "none"|"webcam"|"file", "strength": float}    all but type and prompt optional
    {"type": "prompt", "text": str, "blend": int}           blend optional (chunks to blend over)
    {"type": "stop"}

Server -> client: {"type": "hello" | "started" | "prompt" | "stopped" | "stats" | "input_ended" | "error", ...};
an error is {"type": "error", "code": str, "message": str} and never ends the session by itself.
"input_ended" says that a video-to-video input (webcam, file) ended or broke and the stream goes on from the
prompt alone.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from framecast.sampling.flow import MAX_STEPS
from framecast.server.settings import ABSOLUTE_MAX_FPS, MAX_CONTROL_BYTES, MAX_PROMPT_CHARS, MAX_SEED, MIN_FPS

FORMATS = ("jpeg", "png", "raw")
_STRICT = ConfigDict(extra="forbid", strict=True)


class StartMsg(BaseModel):
    model_config = _STRICT
    type: Literal["start"]
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    fps: float | None = Field(None, ge=MIN_FPS, le=ABSOLUTE_MAX_FPS)
    format: Literal["jpeg", "png", "raw"] = "jpeg"
    quality: int = Field(80, ge=10, le=95)
    source: Literal["none", "webcam", "file"] = "none"
    strength: float | None = Field(None, gt=0, le=1)


class PromptMsg(BaseModel):
    model_config = _STRICT
    type: Literal["prompt"]
    text: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    blend: int = Field(0, ge=0, le=16)


class StopMsg(BaseModel):
    model_config = _STRICT
    type: Literal["stop"]


ControlMsg = Annotated[StartMsg | PromptMsg | StopMsg, Field(discriminator="type")]
_ADAPTER: TypeAdapter[StartMsg | PromptMsg | StopMsg] = TypeAdapter(ControlMsg)
TYPES = ("start", "prompt", "stop")


class ControlError(Exception):
    """A control message was refused; `code` is stable for programs, `message` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message

    def to_json(self) -> dict[str, Any]:
        return error_json(self.code, self.message)


def error_json(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def parse_control(raw: str | bytes, max_bytes: int = MAX_CONTROL_BYTES) -> StartMsg | PromptMsg | StopMsg:
    """One control message from the wire, or `ControlError` saying exactly what is wrong with it."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ControlError("too_large", f"control messages are limited to {max_bytes} bytes, got {size}")
    if isinstance(raw, bytes):
        raise ControlError("binary", "control messages are JSON text; binary messages are not accepted")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ControlError("bad_json", f"not valid JSON: {e.msg} at character {e.pos}") from None
    except RecursionError:  # e.g. 4000 bytes of "[": Python's parser recurses once per level
        raise ControlError("bad_json", "not valid JSON for a control message: nested too deeply") from None
    if not isinstance(data, dict) or data.get("type") not in TYPES:
        raise ControlError("bad_message", 'a control message is a JSON object with "type": start, prompt or stop')
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as e:
        raise ControlError("invalid", f"invalid {data['type']} message: {_described(e)}") from None
    except RecursionError:
        raise ControlError("invalid", f"invalid {data['type']} message: a value is nested too deeply") from None


def _described(e: ValidationError) -> str:
    try:
        return describe(e)
    except RecursionError:  # the repr of a deeply nested value
        return "a value is nested too deeply"


def describe(e: ValidationError) -> str:
    """The first few problems of a validation error, one clause each: `field: what is wrong (got value)`."""
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(x) for x in err["loc"][1:]) or "message"  # loc[0] is the union tag
        if err["type"] in ("extra_forbidden", "missing"):
            parts.append(f"{'unknown' if err['type'] == 'extra_forbidden' else 'missing'} field {loc!r}")
            continue
        got = repr(err.get("input"))
        parts.append(f"{loc}: {err['msg'].lower()} (got {got[:40]})")
    return "; ".join(parts)
