"""inferd: self-hosted model serving (Open Inference Protocol V2, KServe V1)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferd._version import __version__

if TYPE_CHECKING:
    from inferd.runner import RunningServer


def serve(
    model_repository: str | Path | None = None,
    models: dict[str, Any] | None = None,
    host: str | None = None,
    http_port: int | None = None,
    block: bool = True,
    **settings: Any,
) -> RunningServer | None:
    """Serve a model repository and/or in-memory model objects over HTTP.

    `models` maps a name to a scikit-learn estimator, an object with
    `infer(inputs: dict[str, np.ndarray], parameters: dict) -> dict[str, np.ndarray]`, or
    `{"model": obj, "inputs": [...], "outputs": [...], ...}` with `model.yaml` fields.
    With `block=False` the server runs on a background thread and a `RunningServer`
    (`.url`, `.engine`, `.stop()`) is returned once it is ready; `http_port=0` picks a free port.
    Other keyword arguments are `Settings` fields (e.g. `log_level="warning"`,
    `http={"max_body_bytes": 1 << 20}`); anything not given comes from `INFERD_*` variables.
    """
    from inferd.runner import run, start_in_thread
    from inferd.settings import Settings

    http = dict(settings.pop("http", {}))
    if host is not None:
        http["host"] = host
    if http_port is not None:
        http["port"] = http_port
    if model_repository is not None:
        settings["model_repository"] = Path(model_repository)
    config = Settings(**settings)
    if http:
        config.http = config.http.model_validate({**config.http.model_dump(), **http})
    if block:
        run(config, models)
        return None
    return start_in_thread(config, models)


__all__ = ["__version__", "serve"]
