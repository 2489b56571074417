"""Batch jobs in the SDK (`/api/v1/batch-jobs`): submit a file, follow its progress, cancel it,
download its output. Mixed into `Client`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from inferd.client.errors import InferdClientError, error_from_response
from inferd.client.upload import Progress, ProgressFile

#: Statuses a batch job ends in.
DONE = ("completed", "failed", "cancelled", "expired")


def _seg(value: object) -> str:
    return quote(str(value), safe="")


class BatchJobs:
    """The batch job calls of `Client` (which provides `request`, `_http` and `_headers`)."""

    _http: httpx.Client

    def request(self, method: str, path: str, **kwargs: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    def _headers(self) -> dict[str, str]:  # pragma: no cover
        raise NotImplementedError

    def submit_batch(
        self, model: str, path: str | Path, *, version: int | str | None = None,
        format: str | None = None, api: str | None = None,
        metadata: Mapping[str, str] | None = None, on_progress: Progress | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Upload `path` (JSONL, CSV or Parquet) and run it through `model`; returns the job
        (`id`, `status`, `progress`). The file is checked before the answer: a bad one raises
        (400) naming the line or field. `on_progress(sent, total)` follows the upload."""
        fields: dict[str, str] = {"model": model}
        if version is not None:
            fields["version"] = str(version)
        if format is not None:
            fields["format"] = format
        if api is not None:
            fields["api"] = api
        if metadata:
            fields["metadata"] = json.dumps(dict(metadata))
        with ProgressFile(path, on_progress) as f:
            files = {"file": (Path(path).name, f, "application/octet-stream")}
            return self.request("POST", "/api/v1/batch-jobs", files=files, data=fields)

    def submit_batch_from(
        self, model: str, *, input_file_id: str | None = None, input_key: str | None = None,
        version: int | str | None = None, format: str | None = None, api: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """A batch job over a file stored before: one uploaded to `/v1/files`
        (`input_file_id`) or, for admins, an object of the artifact store (`input_key`)."""
        doc: dict[str, Any] = {
            "model": model, "input_file_id": input_file_id, "input_key": input_key,
            "version": version, "format": format, "api": api,
            "metadata": dict(metadata) if metadata else None,
        }  # fmt: skip
        body = {k: v for k, v in doc.items() if v is not None}
        return self.request("POST", "/api/v1/batch-jobs", json=body)

    def batch(self, batch_id: str) -> dict[str, Any]:
        """A batch job with its progress (rows done, rows per second, seconds left)."""
        return self.request("GET", f"/api/v1/batch-jobs/{_seg(batch_id)}")

    def batches(self, status: str | None = None, limit: int = 50,
                offset: int = 0) -> list[dict[str, Any]]:  # fmt: skip
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return self.request("GET", "/api/v1/batch-jobs", params=params)

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Stop a job; what it stored so far is its output."""
        return self.request("POST", f"/api/v1/batch-jobs/{_seg(batch_id)}/cancel")

    def wait_batch(
        self, batch_id: str, timeout: float = 86400,
        on_status: Callable[[dict[str, Any]], None] | None = None, interval: float = 1.0,
    ) -> dict[str, Any]:  # fmt: skip
        """Poll until the job ends (`completed`, `failed`, `cancelled`, `expired`) and return
        it; `on_status(job)` sees every poll. A wait that times out raises (status 0)."""
        deadline = time.monotonic() + timeout
        delay = min(0.1, interval)
        while True:
            job = self.batch(batch_id)
            if on_status is not None:
                on_status(job)
            if job["status"] in DONE:
                return job
            if time.monotonic() > deadline:
                raise InferdClientError(0, f"batch {batch_id} still {job['status']} after "
                                        f"{timeout:g} s")  # fmt: skip
            time.sleep(delay)
            delay = min(delay * 2, interval)

    def batch_output(self, batch_id: str) -> Iterator[bytes]:
        """The output file of an ended job, streamed (JSONL: one line per input row)."""
        path = f"/api/v1/batch-jobs/{_seg(batch_id)}/output"
        try:
            with self._http.stream("GET", path, headers=self._headers()) as r:
                if not r.is_success:
                    r.read()
                    raise error_from_response(r)
                yield from r.iter_bytes()
        except httpx.TransportError as e:
            raise InferdClientError(0, f"downloading batch {batch_id}: {e}") from e

    def download_batch(self, batch_id: str, dest: str | Path) -> int:
        """Write an ended job's output file to `dest`; returns the bytes written."""
        written = 0
        with Path(dest).open("wb") as out:
            for chunk in self.batch_output(batch_id):
                out.write(chunk)
                written += len(chunk)
        return written
