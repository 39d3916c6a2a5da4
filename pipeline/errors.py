"""Errors a user can act on: stages print them as one line, never a traceback."""

from __future__ import annotations


class ProtomaskError(Exception):
    """Base class of every user-facing error; its message is the whole story."""


class ParamsError(ProtomaskError):
    """params.yaml has an unknown key, a wrong type or a value out of range."""


class DatasetError(ProtomaskError):
    """A dataset listing is missing, malformed or inconsistent (names file and line)."""


class ImageDecodeError(ProtomaskError):
    """A file is not a decodable image; ``reason`` says why."""

    def __init__(self, path: str, reason: str | None = None) -> None:
        # one argument: a whole message (how torch's DataLoader re-raises a worker's error)
        super().__init__(path if reason is None else f"{path}: {reason}")
        self.path = path
        self.reason = reason


class UnsafePathError(DatasetError):
    """A listed path escapes the dataset root."""


class ArtifactError(ProtomaskError):
    """An artifact is missing, corrupt, or of a format version this code does not know."""
