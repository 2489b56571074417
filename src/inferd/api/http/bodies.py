"""A stored request body, run to the response body its route would have answered: what an
async prediction or a batch line does, with no connection held. The body is decoded by the
same code as on the wire (V2, KServe V1, OpenAI) and makes the same data-plane calls, as the
principal who submitted it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from inferd.api.dataplane import DataPlane
from inferd.api.http import v1
from inferd.api.http.openai import OpenAIRoutes
from inferd.api.http.v2codec import decode_request, encode_response
from inferd.auth.principal import Principal
from inferd.core import bodies
from inferd.core.errors import InvalidInput


class BodyRunner:
    """Runs request bodies of every dialect in `inferd.core.bodies` through the data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.openai = OpenAIRoutes(plane)

    async def run(
        self, api: str, p: Principal, model: str, version: str | None, body: dict[str, Any],
        request_id: str | None = None, progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """The response body of `body` (dialect `api`) sent to `model` by `p`; errors raise as
        they would on the wire (`InferdError`). `progress` is told what is done so far where
        the work reports it (a generation: `{"tokens": n}`)."""
        plane = self.plane
        if api in (bodies.V2, bodies.V1):
            plane.allow("infer", p, model)
            sv = plane.version(model, version)
            raw = orjson.dumps(body)
            if api == bodies.V1:
                with plane.decoding(sv) as decoding:
                    request = v1.decode_predict(raw, sv.inputs)
                return v1.encode_predictions(await plane.infer(sv, request, decoding))
            with plane.decoding(sv) as decoding:
                request = decode_request(raw, None)
            request.id = request.id or request_id
            response = await plane.infer(sv, request, decoding)
            out, _ = encode_response(response, request)
            doc: dict[str, Any] = orjson.loads(out)
            return doc
        if version is not None:
            raise InvalidInput("version: OpenAI requests go where the model's deployment routes "
                               "them; leave version out")  # fmt: skip
        doc = {**body, "model": model, "stream": False}
        openai = self.openai
        if api == bodies.EMBEDDINGS:
            return (await openai.embeddings(doc, p))[0]
        if api == bodies.IMAGES or (api == bodies.COMPLETIONS and self._draws(model)):
            return (await openai.images(doc, p))[0]
        kind = "chat" if api == bodies.CHAT else "completion"
        tokens = None if progress is None else (lambda n: progress({"tokens": n}))
        return (await openai.complete(kind, doc, p, tokens=tokens))[0]

    def _draws(self, model: str) -> bool:
        """Whether `model` generates images (a `prompt` body is then an image generation)."""
        m = self.plane.model(model)
        sv = m.default
        return sv is not None and sv.runtime_name != "llm" and "image" in sv.output_map
