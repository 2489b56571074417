"""Models and versions: create, list, import artifacts (upload or URL), validate, samples.

An imported artifact goes: staged file → format detected from its bytes → refused if it executes
code and the owner is not trusted → archives extracted with confinement → stored in the artifact
store → loaded once in a throw-away worker (a corrupt file fails here, with the reason) to read
its signature and, given a sample input, the sample output.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from inferd.auth.policy import can_see, manageable, require, visible
from inferd.control.audit import Actor, Audit
from inferd.core.errors import (
    Conflict,
    InferdError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unprocessable,
    UnsafeArtifact,
)
from inferd.core.records import Model, ModelVersion, Scope, User, VersionStatus, Visibility
from inferd.core.spec import check_name, parse_model_config
from inferd.core.tensors import InferenceRequest, InferenceResponse
from inferd.core.trust import check_loosening, strip_loosening, with_operator_types
from inferd.registry.archives import extract
from inferd.registry.artifacts import ArtifactStore, version_prefix
from inferd.registry.fetch import FetchResult, check_url, download, is_public_ip
from inferd.registry.formats import Format, detect_dir_format, detect_format
from inferd.registry.store import RegistryStore
from inferd.serving.engine import InferenceEngine
from inferd.serving.repository import ModelSource
from inferd.settings import LimitSettings, RegistrySettings

log = logging.getLogger("inferd.registry")

#: Where each single-file format is stored, so runtimes find it by its usual name.
FILENAMES = {
    "onnx": "model.onnx",
    "skops": "model.skops",
    "pickle": "model.pkl",
    "joblib": "model.joblib",
    "lightgbm": "model.txt",
    "torchscript": "model.pt",
    "torch_export": "model.pt2",
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MODEL_FIELDS = ("description", "framework", "model_type", "task_type", "tags", "visibility")


@dataclass(frozen=True, slots=True)
class SampleCodec:
    """V2 JSON ↔ core types, injected by the composition root (the codec lives in the API)."""

    decode: Callable[[dict[str, Any]], InferenceRequest]
    encode: Callable[[InferenceResponse, InferenceRequest], dict[str, Any]]


@dataclass(slots=True)
class VersionMeta:
    """What a user may state about a new version (the rest is detected)."""

    runtime: str | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    max_batch_size: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)
    sample_input: dict[str, Any] | None = None
    sample_output: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Staged:
    """A fully received artifact file in the staging area."""

    path: Path
    filename: str
    size: int
    sha256: str
    source: str


def compare_outputs(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Differences between two V2 response bodies' outputs (names, shapes, values)."""
    want = {o["name"]: o for o in expected.get("outputs", []) if isinstance(o, dict)}
    got = {o["name"]: o for o in actual.get("outputs", []) if isinstance(o, dict)}
    problems = []
    for name, w in want.items():
        g = got.get(name)
        if g is None:
            problems.append(f"output '{name}' is missing")
            continue
        if list(w.get("shape", [])) != list(g.get("shape", [])):
            problems.append(f"output '{name}': shape {g.get('shape')} != {w.get('shape')}")
            continue
        wd, gd = w.get("data"), g.get("data")
        try:
            same = np.allclose(np.asarray(wd, dtype=float), np.asarray(gd, dtype=float),
                               rtol=1e-4, atol=1e-5, equal_nan=True)  # fmt: skip
        except (TypeError, ValueError):
            same = wd == gd
        if not same:
            problems.append(f"output '{name}': values differ")
    return problems


class Catalog:
    """Model and version use-cases, with ownership checks on every call."""

    def __init__(
        self,
        store: RegistryStore,
        artifacts: ArtifactStore,
        audit: Audit,
        engine: InferenceEngine,
        codec: SampleCodec,
        settings: RegistrySettings,
        limits: LimitSettings,
        data_dir: Path,
        anonymous: bool,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.audit = audit
        self.engine = engine
        self.codec = codec
        self.settings = settings
        self.limits = limits
        self.anonymous = anonymous
        self.staging = data_dir / "staging"
        self.cache = data_dir / "cache"
        #: Every registry model by name: the data plane's access map (refreshed on change).
        self.by_name: dict[str, Model] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def refresh(self) -> None:
        self.by_name = {m.name: m for m in await self.store.list_models()}

    # ---- models ----------------------------------------------------------------------------

    def _repository_names(self) -> list[str]:
        repo = self.engine.repository
        return repo.names() if repo is not None else []

    async def create_model(self, actor: Actor, fields: dict[str, Any]) -> Model:
        p = actor.principal
        require(p, Scope.MANAGE)
        name = check_name(fields.get("name", ""), "name")
        taken = set(self._repository_names()) | {m.name for m in self.system_models()}
        if name in taken or name.startswith("probe-"):
            raise Conflict(f"model name '{name}' is taken")
        assert p.user_id is not None
        model = await self.store.create_model(
            name=name,
            owner_id=p.user_id,
            visibility=Visibility(fields.get("visibility", Visibility.PRIVATE)),
            description=fields.get("description", ""),
            framework=fields.get("framework", ""),
            model_type=fields.get("model_type", ""),
            task_type=fields.get("task_type", ""),
            tags=list(fields.get("tags", [])),
        )
        self.by_name[model.name] = model
        await self.audit.record(actor, "model.create", "model", model.id, name=name)
        return model

    def system_models(self) -> list[Model]:
        """Models from the repository folder: public, owned by the system."""
        out = []
        for sm in self.engine.models():
            if sm.name in self.by_name:
                continue
            spec = sm.spec
            runtime = sm.default.runtime_name if sm.default else (spec.runtime if spec else None)
            out.append(Model(
                id=f"system:{sm.name}", name=sm.name, owner_id="", visibility=Visibility.PUBLIC,
                created_at=_EPOCH, updated_at=_EPOCH, framework=runtime or "",
                task_type=(spec.task or "") if spec else "", system=True,
            ))  # fmt: skip
        return out

    async def list_models(self, actor: Actor) -> list[Model]:
        p = actor.principal
        if p.anonymous and not self.anonymous:
            require(p, Scope.INFER)
        own = await self.store.list_models(visible_to=None if p.is_admin else p.user_id or "-")
        own = [m for m in own if can_see(p, m, self.anonymous)]
        return sorted(own + self.system_models(), key=lambda m: m.name)

    async def find(self, actor: Actor, name: str) -> Model:
        """The model if the caller may see it; 404 (same message) otherwise."""
        model = await self.store.find_model(name) if isinstance(name, str) else None
        if model is None:
            system = next((m for m in self.system_models() if m.name == name), None)
            if system is None:
                raise NotFound(f"model '{str(name)[:128]}' not found")
            model = system
        return visible(actor.principal, model, self.anonymous)

    async def find_known(self, actor: Actor, name: str) -> Model:
        """`find`, answered from the models this server knows (`by_name`, as the data plane's
        access checks are) when it knows `name`: no database read on a hot path."""
        model = self.by_name.get(name)
        if model is None:
            if any(sm.name == name for sm in self.engine.models()):  # the repository's
                model = next(m for m in self.system_models() if m.name == name)
            else:
                return await self.find(actor, name)
        return visible(actor.principal, model, self.anonymous)

    async def manage(self, actor: Actor, name: str) -> Model:
        model = manageable(actor.principal, await self.find(actor, name))
        if model.system:
            raise Conflict(f"'{model.name}' comes from the model repository folder; edit it there")
        return model

    async def update_model(self, actor: Actor, name: str, fields: dict[str, Any]) -> Model:
        model = await self.manage(actor, name)
        unknown = set(fields) - set(MODEL_FIELDS)
        if unknown:
            raise InvalidInput(f"{sorted(unknown)[0]}: cannot be changed")
        # none of a model's fields has a null (types are the request model's job: ModelPatch)
        null = sorted(k for k, v in fields.items() if v is None)
        if null:
            raise InvalidInput(f"{null[0]}: must not be null")
        if "visibility" in fields:
            if fields["visibility"] not in tuple(Visibility):
                raise InvalidInput("visibility: must be 'private' or 'public'")
            fields["visibility"] = Visibility(fields["visibility"])
        model = await self.store.update_model(model.id, **fields)
        self.by_name[model.name] = model
        await self.audit.record(actor, "model.update", "model", model.id, fields=sorted(fields))
        return model

    async def delete_model(self, actor: Actor, name: str) -> Model:
        model = await self.manage(actor, name)
        await self.store.delete_model(model.id)
        self.by_name.pop(model.name, None)
        await self.artifacts.delete_prefix(f"models/{model.id}")
        shutil.rmtree(self.cache / model.id, ignore_errors=True)
        await self.audit.record(actor, "model.delete", "model", model.id, name=model.name)
        return model

    # ---- versions --------------------------------------------------------------------------

    def staging_file(self) -> Path:
        """A fresh path in the staging area for an incoming artifact."""
        d = self.staging / uuid.uuid4().hex
        d.mkdir(parents=True, exist_ok=False)
        return d / "upload"

    async def check_quota(self, owner_id: str, incoming: int) -> None:
        user = await self.store.get_user(owner_id)
        quota = user.storage_quota_bytes or self.limits.storage_bytes
        used = await self.store.storage_used(owner_id)
        if used + incoming > quota:
            raise RateLimited(
                f"storage quota exceeded: {used} of {quota} bytes used, {incoming} more asked",
                3600,
            )

    async def prepare_upload(self, actor: Actor, name: str, declared: int | None) -> Model:
        """Checks before any byte is accepted: rights, size cap, quota."""
        model = await self.manage(actor, name)
        if declared is not None:
            if declared > self.settings.max_upload_bytes:
                raise PayloadTooLarge(
                    f"file: {declared} bytes is over the {self.settings.max_upload_bytes} "
                    "byte upload limit"
                )
            await self.check_quota(model.owner_id, declared)
        return model

    async def check_meta(self, actor: Actor, model: Model, meta: VersionMeta) -> None:
        """Refuse, before anything is stored or loaded, meta that loosens a load-time safety
        check for a model whose owner is not trusted (see core.trust)."""
        owner = await self.store.get_user(model.owner_id)
        check_loosening(meta.parameters, field="parameters", owner_trusted=owner.trusted,
                        actor_admin=actor.principal.is_admin, runtime=meta.runtime)  # fmt: skip

    async def add_version(
        self, actor: Actor, model: Model, staged: Staged, meta: VersionMeta
    ) -> ModelVersion:
        """Turn a staged file into a version: validated and stored, or failed with a reason."""
        try:
            await self.check_meta(actor, model, meta)
            await self.check_quota(model.owner_id, staged.size)
            mv = await self.store.create_version(model.id, source=staged.source,
                                                 created_by=actor.principal.user_id)  # fmt: skip
        except BaseException:
            shutil.rmtree(staged.path.parent, ignore_errors=True)
            raise
        return await self._import(actor, model, mv, staged, meta)

    async def import_url(
        self, actor: Actor, name: str, url: str, meta: VersionMeta
    ) -> ModelVersion:
        """Start importing from a URL; the version is `importing` until the download and checks
        finish (poll it)."""
        model = await self.prepare_upload(actor, name, None)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidInput("url: only http:// and https:// URLs can be imported")
        await self.check_meta(actor, model, meta)
        await check_url(url, allow_ip=self._allow_ip())
        mv = await self.store.create_version(model.id, source=f"url:{url[:2000]}",
                                             created_by=actor.principal.user_id)  # fmt: skip
        task = asyncio.get_running_loop().create_task(self._fetch(actor, model, mv, url, meta))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await self.audit.record(actor, "version.import", "version", mv.id, url=url[:2000])
        return mv

    def _allow_ip(self) -> Callable[[Any], bool]:
        return (lambda _ip: True) if self.settings.allow_private_urls else is_public_ip

    async def _fetch(
        self, actor: Actor, model: Model, mv: ModelVersion, url: str, meta: VersionMeta
    ) -> None:
        target = self.staging_file()
        try:
            result: FetchResult = await download(
                url, target.parent, max_bytes=self.settings.max_upload_bytes,
                allow_ip=self._allow_ip(),
            )  # fmt: skip
            staged = Staged(result.path, result.filename, result.size, result.sha256,
                            mv.source)  # fmt: skip
            await self.check_quota(model.owner_id, staged.size)
        except InferdError as e:
            shutil.rmtree(target.parent, ignore_errors=True)
            await self.store.update_version(mv.id, status=VersionStatus.FAILED, reason=e.message)
            return
        except Exception as e:  # never leave a version `importing` forever
            log.exception("import of %s failed", url)
            shutil.rmtree(target.parent, ignore_errors=True)
            reason = f"import failed: {type(e).__name__}"
            await self.store.update_version(mv.id, status=VersionStatus.FAILED, reason=reason)
            return
        try:
            await self._import(actor, model, mv, staged, meta)
        except InferdError:
            pass  # recorded on the version

    async def _import(
        self, actor: Actor, model: Model, mv: ModelVersion, staged: Staged, meta: VersionMeta
    ) -> ModelVersion:
        prefix = version_prefix(model.id, mv.version)
        work = staged.path.parent
        try:
            owner = await self.store.get_user(model.owner_id)
            fmt, tree = await asyncio.to_thread(self._unpack, staged, work)
            if fmt.executes_code and not owner.trusted:
                raise UnsafeArtifact(
                    f"file: '{fmt.name}' files can run code when loaded; an admin must mark the "
                    "owner trusted before such a model is accepted"
                )
            runtime = meta.runtime or fmt.runtime
            if runtime is None:
                raise Unprocessable(f"file: no runtime serves '{fmt.name}' artifacts yet")
            await self.artifacts.put_tree(prefix, tree)
            local = await self.materialize(model, mv.version)
            sv_inputs, sv_outputs, sample_out, warning = await self._probe(
                model, owner, mv.version, local.parent, runtime, meta
            )
        except InferdError as e:
            await self.artifacts.delete_prefix(prefix)
            mv = await self.store.update_version(mv.id, status=VersionStatus.FAILED,
                                                 reason=e.message)  # fmt: skip
            await self.audit.record(actor, "version.create", "version", mv.id, outcome="failed",
                                    reason=e.message)  # fmt: skip
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if warning:  # the version is good; its sample is not, so it is not kept
            meta.sample_input = meta.sample_output = None
        mv = await self.store.update_version(
            mv.id,
            status=VersionStatus.READY,
            reason=warning,
            artifact_key=prefix,
            artifact_format=fmt.name,
            runtime=runtime,
            sha256=staged.sha256,
            size_bytes=staged.size,
            inputs=sv_inputs,
            outputs=sv_outputs,
            sample_input=meta.sample_input,
            sample_output=meta.sample_output or sample_out,
        )
        await self.audit.record(actor, "version.create", "version", mv.id, model=model.name,
                                version=mv.version, sha256=staged.sha256)  # fmt: skip
        return mv

    @staticmethod
    def _unpack(staged: Staged, work: Path) -> tuple[Format, Path]:
        """Detect the format; lay the artifact out as a version directory."""
        named = staged.path.with_name(f"_{staged.filename}")  # messages name the user's file
        staged.path.rename(named)
        fmt = detect_format(named)
        staged = Staged(named, staged.filename, staged.size, staged.sha256, staged.source)
        tree = work / "tree"
        tree.mkdir()
        if fmt.archive:
            extract(staged.path, tree)
            fmt = detect_dir_format(tree)
            return fmt, tree
        name = FILENAMES.get(fmt.name)
        if fmt.name == "xgboost":
            with staged.path.open("rb") as f:
                head = f.read(2)
            name = "model.json" if head[1:2] in (b'"', b" ", b"\n", b"\r", b"\t") else "model.ubj"
        if name is None:
            raise Unprocessable(f"file: no runtime serves '{fmt.name}' artifacts yet")
        shutil.move(staged.path, tree / name)
        return fmt, tree

    async def materialize(self, model: Model, version: int) -> Path:
        """The version's files on local disk (from the artifact store), for workers to load."""
        dest = self.cache / model.id / str(version)
        if not dest.is_dir():
            tmp = self.cache / model.id / f".{version}-{uuid.uuid4().hex[:8]}"
            await self.artifacts.fetch_tree(version_prefix(model.id, version), tmp)
            try:
                tmp.rename(dest)
            except OSError:  # another caller won the race: theirs is identical
                shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def spec_config(
        self, runtime: str, meta_inputs: list[dict[str, Any]], meta_outputs: list[dict[str, Any]],
        max_batch_size: int, parameters: dict[str, Any], trusted: bool,
    ) -> dict[str, Any]:  # fmt: skip
        raw: dict[str, Any] = {"runtime": runtime, "max_batch_size": max_batch_size,
                               "parameters": parameters, "trusted": trusted,
                               "required": False}  # fmt: skip
        if meta_inputs:
            raw["inputs"] = meta_inputs
        if meta_outputs:
            raw["outputs"] = meta_outputs
        return raw

    async def _probe(
        self,
        model: Model,
        owner: User,
        version: int,
        root: Path,
        runtime: str,
        meta: VersionMeta,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any] | None, str]:
        # checked at submission; stripped again here so that nothing loosening reaches a load
        # for an owner who is not trusted, whichever way the meta got here
        parameters = with_operator_types(
            strip_loosening(meta.parameters, owner.trusted), self.settings.skops_trusted_types
        )
        raw = self.spec_config(runtime, meta.inputs, meta.outputs, meta.max_batch_size,
                               parameters, owner.trusted)  # fmt: skip
        try:
            spec = parse_model_config(model.name, raw)
        except InvalidInput as e:
            raise InvalidInput(e.message) from None
        sample = None
        warning = ""
        if meta.sample_input:
            try:
                sample = self.codec.decode(meta.sample_input)
            except InvalidInput as e:
                warning = f"sample_input: {e.message}"
        try:
            sv, response = await self.engine.probe(
                ModelSource(spec, root, (str(version),)), str(version), sample
            )
        except InferdError as e:
            raise Unprocessable(f"the model does not load: {e.message}") from None
        inputs = [t.to_dict() for t in sv.inputs]
        outputs = [t.to_dict() for t in sv.outputs]
        out = None
        if isinstance(response, str):
            warning = f"sample_input: {response}"
        elif response is not None and sample is not None:
            response.model_name = model.name
            out = self.codec.encode(response, sample)
        return inputs, outputs, out, warning

    async def list_versions(self, actor: Actor, name: str) -> tuple[Model, list[ModelVersion]]:
        model = await self.find(actor, name)
        if model.system:
            return model, []
        return model, await self.store.list_versions(model.id)

    async def get_version(self, actor: Actor, name: str, version: int) -> ModelVersion:
        model = await self.find(actor, name)
        if model.system:
            raise NotFound("version not found")
        return await self.store.get_version(model.id, version)

    async def update_version(
        self, actor: Actor, name: str, version: int, fields: dict[str, Any]
    ) -> ModelVersion:
        model = await self.manage(actor, name)
        unknown = set(fields) - {"sample_input", "sample_output"}
        if unknown:
            raise InvalidInput(f"{sorted(unknown)[0]}: cannot be changed on a version")
        mv = await self.store.get_version(model.id, version)
        mv = await self.store.update_version(mv.id, **fields)
        await self.audit.record(actor, "version.update", "version", mv.id, fields=sorted(fields))
        return mv

    async def delete_version(self, actor: Actor, name: str, version: int) -> ModelVersion:
        model = await self.manage(actor, name)
        mv = await self.store.get_version(model.id, version)
        dep = await self.store.find_deployment(model.id)
        if dep is not None and version in {r.version for r in dep.revisions()}:
            raise Conflict(f"version {version} is deployed; change or delete the deployment first")
        await self.store.delete_version(mv.id)
        await self.artifacts.delete_prefix(version_prefix(model.id, version))
        shutil.rmtree(self.cache / model.id / str(version), ignore_errors=True)
        await self.audit.record(actor, "version.delete", "version", mv.id)
        return mv

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
