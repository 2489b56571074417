"""A file that reports how much of it has been read: upload progress without buffering.

httpx streams a multipart file part by calling `read(64 KiB)` until it is empty, and sizes the
body with `fileno()`; a FileIO subclass keeps both, so the body is never held in memory and the
Content-Length stays known (the server checks it against the upload limit before reading).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

Progress = Callable[[int, int], None]


class ProgressFile(io.FileIO):
    """A binary file opened for reading that calls `on_progress(sent, total)` per chunk read."""

    def __init__(self, path: str | Path, on_progress: Progress | None) -> None:
        super().__init__(os.fspath(path), "rb")
        self.total = os.fstat(self.fileno()).st_size
        self.sent = 0
        self._on_progress = on_progress

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        if chunk:
            self.sent += len(chunk)
            if self._on_progress is not None:
                self._on_progress(self.sent, self.total)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        # httpx rewinds before (re)sending the body, e.g. when a retry follows a token refresh
        position = super().seek(offset, whence)
        self.sent = position
        return position
