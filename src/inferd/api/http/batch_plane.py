"""Batch job rows through the data plane: each row's request body runs as its route would run
it (`BodyRunner`), and its answer, or its error in the route's dialect with the route's status,
becomes the row's result. What `inferd.control.batch_runner.RowPlane` asks for."""

from __future__ import annotations

import logging
from typing import Any

from inferd.api.dataplane import DataPlane
from inferd.api.http.bodies import BodyRunner
from inferd.api.http.errors import status_of
from inferd.api.http.openai import error_body
from inferd.auth.principal import Principal
from inferd.core.errors import InferdError
from inferd.core.spec import TensorSpec

log = logging.getLogger("inferd.batches")


class BatchPlane:
    """Runs batch rows through the data plane and answers the models' signatures."""

    def __init__(self, plane: DataPlane, runner: BodyRunner | None = None) -> None:
        self.plane = plane
        self.runner = runner or BodyRunner(plane)

    async def run(self, api: str, p: Principal, model: str, version: str | None,
                  body: dict[str, Any], request_id: str,
                  ) -> tuple[int, dict[str, Any], str | None]:  # fmt: skip
        """(200, the response body, None), or (the status, the error body, its message) as
        the route would have answered."""
        try:
            return 200, await self.runner.run(api, p, model, version, body, request_id), None
        except InferdError as e:
            status = status_of(e)
            if api.startswith("openai."):
                return status, error_body(e, status), e.message
            return status, {"error": e.message}, e.message
        except Exception:
            log.exception("batch row %s failed", request_id)
            return 500, {"error": "internal server error"}, "internal server error"

    def signature(self, model: str, version: str | None) -> tuple[tuple[TensorSpec, ...], int]:
        """The inputs and max_batch_size of the version a request for `model` goes to."""
        sv = self.plane.version(model, version)
        return tuple(sv.inputs), sv.spec.max_batch_size
