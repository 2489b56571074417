"""Fuzz target: the V2 REST JSON request decoder (`decode_request`, body without binary part).

Invariant: any body decodes to an InferenceRequest whose inputs are arrays of their datatype,
or raises InvalidInput (a 400 naming the field). Anything else escaping (IndexError, numpy's
ValueError, RecursionError, MemoryError, ...) is a bug, and so is a hang (libFuzzer -timeout).
"""

from __future__ import annotations

from harness import check_request, instrument, run

with instrument(__name__, "inferd"):
    from inferd.api.http.v2codec import decode_request
    from inferd.core.errors import InvalidInput


def test_one_input(data: bytes) -> None:
    try:
        request = decode_request(data, None)
    except InvalidInput:
        return
    check_request(request)


if __name__ == "__main__":
    run(test_one_input)
