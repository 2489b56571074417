"""Fuzz target: the gRPC request decoder (`ModelInferRequest` bytes -> core types, `to_core`).

A message that protobuf cannot parse is answered by the transport (INTERNAL, "cannot parse the
request message") before the codec runs, so DecodeError is not the codec's to raise.

Invariant: a parsed message decodes to inputs that are arrays of their datatype, or raises
InvalidInput; and the decoded inputs, echoed as a response (`from_core`, raw contents) and sent
back as a request, decode to the same tensors. Anything else escaping is a bug.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError
from harness import check_request, instrument, run, same_tensor

with instrument(__name__, "inferd"):
    from tritonclient.grpc import service_pb2 as pb

    from inferd.api.grpc.codec import from_core, to_core
    from inferd.core.errors import InvalidInput
    from inferd.core.tensors import InferenceRequest, InferenceResponse, Tensor


def _round_trip(request: InferenceRequest) -> None:
    echo = [Tensor(t.name, t.datatype, t.data) for t in request.inputs]
    reply = from_core(InferenceResponse("m", "1", echo))
    again = pb.ModelInferRequest(model_name="m")
    for out in reply.outputs:
        inp = again.inputs.add()
        inp.name, inp.datatype = out.name, out.datatype
        inp.shape.extend(out.shape)
    again.raw_input_contents.extend(reply.raw_output_contents)
    decoded = to_core(pb.ModelInferRequest.FromString(again.SerializeToString()))
    for a, b in zip(echo, decoded.inputs, strict=True):
        assert same_tensor(a, b), (a, b)


def test_one_input(data: bytes) -> None:
    try:
        message = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return
    try:
        request = to_core(message, 1.0)
    except InvalidInput:
        return
    check_request(request)
    _round_trip(request)


if __name__ == "__main__":
    run(test_one_input)
