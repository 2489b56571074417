"""What a worker process is given: its environment (an allow-list), its network by the model's
source, the folders its sandbox covers."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from inferd.control.deployments import deployment_spec, parse_config
from inferd.core.records import Model, ModelVersion, VersionStatus, Visibility
from inferd.core.scaling import Resources
from inferd.core.spec import parse_model_config, spec_to_config
from inferd.serving.repository import ModelRepository
from inferd.workers.isolation import allowed, worker_env
from inferd.workers.sandbox import closed_ancestor, outermost

SERVER_ENV = {
    "PATH": "/usr/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "LC_ALL": "C",
    "PYTHONPATH": "/srv/lib",
    "OMP_NUM_THREADS": "8",
    "CUDA_VISIBLE_DEVICES": "0",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # the server's configuration and credentials
    "INFERD_AUTH__JWT_SECRET": "j" * 32,
    "INFERD_AUTH__BOOTSTRAP_KEY": "inferd_x",
    "INFERD_AUTH__BOOTSTRAP_PASSWORD": "pw",
    "INFERD_REGISTRY__S3_SECRET_KEY": "s3",
    "INFERD_REGISTRY__DATABASE_URL": "postgresql+asyncpg://u:pw@db/inferd",
    "AWS_ACCESS_KEY_ID": "AKIA",
    "AWS_SECRET_ACCESS_KEY": "aws",
    "DATABASE_URL": "postgresql://u:pw@db/x",
    "PGPASSWORD": "pg",
    "HF_TOKEN": "hf_x",
    "VLLM_API_KEY": "v",
    "CUDA_AUTH_TOKEN": "c",
    "GITHUB_TOKEN": "gh",
    "SOME_SETTING": "1",
}


def test_the_environment_is_an_allow_list() -> None:
    env = worker_env(SERVER_ENV, Resources(), None)
    allowed_part = dict(list(SERVER_ENV.items())[:9])  # everything above the credentials
    assert env == allowed_part and "SOME_SETTING" not in env


def test_scratch_home_and_resources(tmp_path: Path) -> None:
    server = {**SERVER_ENV, "TORCHINDUCTOR_CACHE_DIR": "/tmp/torchinductor_root"}
    env = worker_env(server, Resources(gpu=0), [0, 1], scratch=tmp_path, own_home=True)
    # the server's home and caches are not its own
    assert env["TMPDIR"] == env["HOME"] == str(tmp_path) and "TORCHINDUCTOR_CACHE_DIR" not in env
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["OMP_NUM_THREADS"] == "2"
    # as the server's own user, HOME stays (caches the operator filled in, e.g. Hugging Face)
    assert worker_env(SERVER_ENV, Resources(), None, scratch=tmp_path)["HOME"] == "/root"


def test_operator_additions_never_pass_inferd_settings() -> None:
    extra = ("SOME_SETTING", "AWS_*", "INFERD_*", "INFERD_AUTH__JWT_SECRET")
    env = worker_env(SERVER_ENV, Resources(), None, extra)
    assert env["SOME_SETTING"] == "1" and env["AWS_SECRET_ACCESS_KEY"] == "aws"
    assert not [k for k in env if k.startswith("INFERD_")]
    assert not allowed("INFERD_REGISTRY__DATABASE_URL", ("INFERD_*",))


def test_network_by_source(tmp_path: Path) -> None:
    (tmp_path / "open" / "1").mkdir(parents=True)
    (tmp_path / "shut" / "1").mkdir(parents=True)
    (tmp_path / "shut" / "model.yaml").write_text("network: false\n")
    # the operator's repository: on unless model.yaml says otherwise (or the setting does)
    assert ModelRepository(tmp_path).source("open").spec.network is True
    assert ModelRepository(tmp_path).source("shut").spec.network is False
    assert ModelRepository(tmp_path, network=False).source("open").spec.network is False
    # anything else (an upload's probe, the Python API): off unless said
    assert parse_model_config("m", {}).network is False
    spec = parse_model_config("m", {"network": True})
    assert parse_model_config("m", spec_to_config(spec)) == spec  # what the worker is sent
    with pytest.raises(Exception, match="'network' must be true or false"):
        parse_model_config("m", {"network": "yes"})


def test_deployed_uploads_never_get_the_network() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    model = Model("m1", "up", "u1", Visibility.PRIVATE, now, now)
    version = ModelVersion("v1", "m1", 1, VersionStatus.READY, now, runtime="python",
                           inputs=({"name": "X", "datatype": "FP32", "shape": [-1]},),
                           outputs=({"name": "Y", "datatype": "FP32", "shape": [-1]},))  # fmt: skip
    spec = deployment_spec(model, version, parse_config(None), trusted=True)
    assert spec.network is False and spec_to_config(spec)["network"] is False


def test_covered_folders(tmp_path: Path) -> None:
    closed = tmp_path / "data"
    (closed / "cache" / "m").mkdir(parents=True)
    closed.chmod(0o700)
    nobody = 65534
    if os.stat(tmp_path).st_uid == nobody:
        pytest.skip("the test's folders belong to the worker user")
    # the highest folder the worker user cannot enter (pytest's own base may be the one)
    found = closed_ancestor(str(closed / "cache" / "m"), nobody, nobody)
    assert found is not None and closed.is_relative_to(found)
    assert not os.stat(found).st_mode & 0o001
    assert all(os.stat(p).st_mode & 0o001 for p in Path(found).parents)
    assert closed_ancestor("/usr/lib", nobody, nobody) is None
    assert outermost(["/a/b", "/a", "/c/d", "/a/b/c", "/c/d"]) == ["/a", "/c/d"]
    assert outermost(["/ab", "/a"]) == ["/a", "/ab"]
