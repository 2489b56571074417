"""Deadlines, back-pressure and client disconnects over real HTTP."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import orjson
import pytest

from inferd.runner import RunningServer


def body(sleep: float, **params: object) -> dict:
    return {
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}],
        "parameters": {"sleep": sleep, **params},
    }


def stats(client: httpx.Client) -> dict:
    return client.get("/v2/models/sleeper/stats").json()["model_stats"][0]


def test_timeout_header_gives_504(client: httpx.Client) -> None:
    start = time.monotonic()
    r = client.post("/v2/models/sleeper/infer", json=body(1.0),
                    headers={"X-Request-Timeout-Ms": "150"})  # fmt: skip
    assert r.status_code == 504 and "timeout" in r.json()["error"]
    assert time.monotonic() - start < 0.9
    time.sleep(1.0)  # let the started execution finish
    r = client.post("/v2/models/sleeper/infer", json=body(0))
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2.0]


def test_v2_timeout_parameter_in_microseconds(client: httpx.Client) -> None:
    r = client.post("/v2/models/sleeper/infer", json=body(0.6, timeout=100_000))
    assert r.status_code == 504
    time.sleep(0.6)
    r = client.post("/v2/models/sleeper/infer", json=body(0, timeout=-5))
    assert r.status_code == 400 and "timeout" in r.json()["error"]


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_bad_timeout_header(client: httpx.Client, value: str) -> None:
    r = client.post(
        "/v2/models/sleeper/infer", json=body(0), headers={"X-Request-Timeout-Ms": value}
    )
    assert r.status_code == 400 and "X-Request-Timeout-Ms" in r.json()["error"]


def test_queue_full_is_503_with_retry_after(server: RunningServer, client: httpx.Client) -> None:
    results: list[int] = []

    def send(sleep: float) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            results.append(c.post("/v2/models/sleeper/infer", json=body(sleep)).status_code)

    running = threading.Thread(target=send, args=(0.8,))
    running.start()
    time.sleep(0.2)
    queued = threading.Thread(target=send, args=(0,))
    queued.start()
    time.sleep(0.2)
    r = client.post("/v2/models/sleeper/infer", json=body(0))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "max_queue_size 1" in r.json()["error"]
    running.join()
    queued.join()
    assert results == [200, 200]


def test_client_disconnect_cancels_its_queued_request(
    server: RunningServer, client: httpx.Client
) -> None:
    before = stats(client)["inference_count"]
    slow = threading.Thread(
        target=lambda: httpx.post(
            f"{server.url}/v2/models/sleeper/infer", json=body(0.8), timeout=30
        )
    )
    slow.start()
    time.sleep(0.2)
    payload = orjson.dumps(body(0))
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(
        b"POST /v2/models/sleeper/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    time.sleep(0.2)
    sock.close()  # gone while queued behind the slow request
    slow.join()
    time.sleep(0.3)
    assert stats(client)["inference_count"] == before + 1  # the cancelled one never ran
    metrics = client.get("/metrics").text
    assert (
        'inferd_inference_failures_total{model="sleeper",reason="cancelled",version="1"} 1.0'
        in metrics
    )
