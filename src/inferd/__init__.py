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
    host: str = "127.0.0.1",
    http_port: int = 8000,
    block: bool = True,
    **settings: Any,
) -> RunningServer | None:
    """Serve a model repository and/or in-memory model objects over HTTP.

    `models` maps a name to a scikit-learn estimator, an object with
    `infer(inputs: dict[str, np.ndarray], parameters: dict) -> dict[str, np.ndarray]`, or
    `{"model": obj, "inputs": [...], "outputs": [...], ...}` with `model.yaml` fields.
    With `block=False` the server runs on a background thread and a `RunningServer`
    (`.url`, `.engine`, `.stop()`) is returned once it is ready; `http_port=0` picks a free port.
    Other keyword arguments are `Settings` fields (e.g. `log_level="warning"`).
    """
    from inferd.runner import run, start_in_thread
    from inferd.settings import HttpSettings, Settings

    http = HttpSettings(host=host, port=http_port, **settings.pop("http", {}))
    config = Settings(
        model_repository=Path(model_repository) if model_repository else None,
        http=http,
        **settings,
    )
    if block:
        run(config, models)
        return None
    return start_in_thread(config, models)


__all__ = ["__version__", "serve"]
