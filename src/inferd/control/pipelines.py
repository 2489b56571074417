"""Pipelines as registry objects (`/api/v1/pipelines`): owned, private or public, versioned.

A pipeline is a model of the registry whose `framework` is `pipeline` and whose every version
holds a pipeline document (`core/pipeline.py`) as its one file, `pipeline.json`; so ownership,
visibility, quotas, deployments and the data plane's access checks are the models' own, and a
deployed pipeline is a model name on every protocol.

A document is checked before anything is stored (422, naming the node and field, nothing
saved): its structure and processors; every model a step or fallback names exists and may be
used by the caller (another member's private model is refused like a missing one); and, where
both sides are known from the models' signatures, connected tensors agree in datatype and rank,
and every input of a step's model is provided.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from inferd.auth.policy import require
from inferd.control.audit import Actor
from inferd.control.catalog import Catalog
from inferd.core.errors import (
    Conflict,
    InferdError,
    InvalidField,
    InvalidInput,
    NotFound,
    Unprocessable,
)
from inferd.core.pipeline import Node, Pipeline, Step, parse_pipeline, wire
from inferd.core.processors import build as build_processor
from inferd.core.records import Model, ModelVersion, Scope, VersionStatus
from inferd.core.spec import TensorSpec, tensor_specs
from inferd.registry.artifacts import version_prefix

#: The `framework` of a registry model that is a pipeline.
FRAMEWORK = "pipeline"
FILENAME = "pipeline.json"

#: What is known of a set of tensors: name -> (datatype, rank); None: not known.
Known = dict[str, tuple[str, int]] | None


@dataclass(frozen=True)
class StoredPipeline:
    model: Model
    #: None for a pipeline of the model repository folder (its document is its model.yaml's).
    version: ModelVersion | None
    document: dict[str, Any]


def _sig(specs: Any) -> dict[str, tuple[str, int]]:
    return {t["name"]: (t["datatype"], len(t["shape"])) for t in specs}


class Pipelines:
    """Pipeline use-cases over the catalog (whose ownership checks they reuse)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    # ---- checks ------------------------------------------------------------------------------

    async def check(self, actor: Actor, document: Any) -> Pipeline:
        """The document, parsed and checked against the models the caller may use (422)."""
        try:
            pipeline = parse_pipeline(document)
            for where, step in pipeline.processors():
                build_processor(step.target, step.config, where)
            inputs = tensor_specs(document.get("inputs"), "inputs")
            outputs = tensor_specs(document.get("outputs"), "outputs")
        except InvalidInput as e:
            raise Unprocessable(e.message) from None
        if not inputs or not outputs:
            raise Unprocessable("inputs, outputs: a pipeline declares both")
        signatures: dict[tuple[str, str | None], tuple[dict[str, Any], dict[str, Any]]] = {}
        for node in pipeline.nodes.values():
            for i, step in enumerate(node.steps):
                for s, where in ((step, ""), (step.fallback, ".fallback")):
                    if s is None or s.kind != "model":
                        continue
                    key = (s.target, s.version)
                    if key not in signatures:
                        field = f"nodes.{node.name}.steps[{i}]{where}.model"
                        signatures[key] = await self._signature(actor, s, field)
        known = {t.name: (t.datatype, len(t.shape)) for t in inputs}
        out = _Walk(pipeline, signatures).node(pipeline.nodes[pipeline.root], known, known)
        if out is not None:
            for t in outputs:
                if t.name not in out:
                    raise Unprocessable(f"outputs: '{t.name}' is not among what the root node "
                                        f"answers ({', '.join(sorted(out))})")  # fmt: skip
                _agree(f"outputs.{t.name}", "the pipeline's output", t, out[t.name])
        return pipeline

    async def _signature(self, actor: Actor, step: Step, field: str
                         ) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
        """(inputs, outputs) of the model a step names, as the caller may see it."""
        try:
            model = await self.catalog.find(actor, step.target)
        except NotFound:
            raise Unprocessable(f"{field}: no model '{step.target}' that you may use") from None
        if model.system:
            try:
                sv = self.catalog.engine.version(model.name, step.version)
            except InferdError as e:
                raise Unprocessable(f"{field}: {e.message}") from None
            return ({t.name: (t.datatype, len(t.shape)) for t in sv.inputs},
                    {t.name: (t.datatype, len(t.shape)) for t in sv.outputs})  # fmt: skip
        versions = [v for v in await self.catalog.store.list_versions(model.id)
                    if v.status == VersionStatus.READY]  # fmt: skip
        if step.version is not None:
            versions = [v for v in versions if str(v.version) == step.version]
        if not versions:
            which = f"version {step.version}" if step.version else "a ready version"
            raise Unprocessable(f"{field}: model '{step.target}' has no {which}")
        return _sig(versions[-1].inputs), _sig(versions[-1].outputs)

    # ---- use-cases ---------------------------------------------------------------------------

    async def create(self, actor: Actor, fields: Mapping[str, Any]) -> StoredPipeline:
        require(actor.principal, Scope.MANAGE)
        document = dict((await self.check(actor, fields.get("document"))).document)  # first
        model = await self.catalog.create_model(actor, {
            "name": fields.get("name", ""), "visibility": fields.get("visibility", "private"),
            "description": fields.get("description", ""), "framework": FRAMEWORK,
        })  # fmt: skip
        try:
            version = await self._add(actor, model, document)
        except BaseException:
            await self.catalog.store.delete_model(model.id)
            self.catalog.by_name.pop(model.name, None)
            raise
        return StoredPipeline(model, version, document)

    async def update(self, actor: Actor, name: str, raw: Any) -> StoredPipeline:
        """A new version of the pipeline `name` with the document `raw`."""
        model = await self._pipeline(actor, name, manage=True)
        document = dict((await self.check(actor, raw)).document)
        version = await self._add(actor, model, document)
        return StoredPipeline(model, version, document)

    async def list(self, actor: Actor) -> list[Model]:
        return [m for m in await self.catalog.list_models(actor) if m.framework == FRAMEWORK]

    async def get(self, actor: Actor, name: str, version: int | None = None) -> StoredPipeline:
        model = await self._pipeline(actor, name)
        if model.system:
            spec = self.catalog.engine.model(name).spec
            if spec is None or spec.pipeline is None or version is not None:
                raise NotFound(f"pipeline '{name}' has no version {version}")
            return StoredPipeline(model, None, dict(spec.pipeline.document))
        versions = await self.catalog.store.list_versions(model.id)
        if version is not None:
            versions = [v for v in versions if v.version == version]
        if not versions:
            raise NotFound(f"pipeline '{name}' has no version {version}")
        mv = versions[-1]
        path = await self.catalog.materialize(model, mv.version)
        document = json.loads((path / FILENAME).read_bytes())
        return StoredPipeline(model, mv, document)

    async def delete(self, actor: Actor, name: str) -> Model:
        await self._pipeline(actor, name, manage=True)
        return await self.catalog.delete_model(actor, name)

    async def _pipeline(self, actor: Actor, name: str, manage: bool = False) -> Model:
        model = await (self.catalog.manage(actor, name) if manage
                       else self.catalog.find(actor, name))  # fmt: skip
        if model.framework != FRAMEWORK:  # (a repository pipeline's framework is its runtime)
            if manage:
                raise Conflict(f"'{name}' is a model, not a pipeline")
            raise NotFound(f"pipeline '{str(name)[:128]}' not found")
        return model

    async def _add(self, actor: Actor, model: Model, document: dict[str, Any]) -> ModelVersion:
        """Store `document` (checked) as the model's next version."""
        cat = self.catalog
        body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        await cat.check_quota(model.owner_id, len(body))
        p = actor.principal
        mv = await cat.store.create_version(model.id, source="pipeline", created_by=p.user_id)
        tree = cat.staging_file().parent / "tree"
        tree.mkdir()
        prefix = version_prefix(model.id, mv.version)
        try:
            (tree / FILENAME).write_bytes(body)
            await cat.artifacts.put_tree(prefix, tree)
        except BaseException:
            await cat.artifacts.delete_prefix(prefix)
            await cat.store.update_version(mv.id, status=VersionStatus.FAILED,
                                           reason="the document could not be stored")  # fmt: skip
            raise
        finally:
            shutil.rmtree(tree.parent, ignore_errors=True)
        io = {k: [t.to_dict() for t in tensor_specs(document.get(k), k)]
              for k in ("inputs", "outputs")}  # fmt: skip
        mv = await cat.store.update_version(
            mv.id, status=VersionStatus.READY, artifact_key=prefix, artifact_format=FRAMEWORK,
            runtime=FRAMEWORK, sha256=hashlib.sha256(body).hexdigest(), size_bytes=len(body),
            inputs=io["inputs"], outputs=io["outputs"],
        )  # fmt: skip
        await cat.audit.record(actor, "pipeline.version", "version", mv.id, model=model.name,
                               version=mv.version)  # fmt: skip
        return mv


class _Walk:
    """What each node answers, as far as the models' signatures tell; refuses disagreements."""

    def __init__(self, pipeline: Pipeline,
                 signatures: Mapping[tuple[str, str | None], tuple[dict[str, Any], dict[str, Any]]]
                 ) -> None:  # fmt: skip
        self.pipeline = pipeline
        self.signatures = signatures

    def node(self, node: Node, given: Known, request: Known) -> Known:
        if node.kind == "sequence":
            current = given
            for i, step in enumerate(node.steps):
                current = self.step(node, i, step, request if step.from_request else current,
                                    request)  # fmt: skip
            return current
        answers = [self.step(node, i, s, given, request) for i, s in enumerate(node.steps)]
        if node.kind == "ensemble" and node.aggregate is None:
            if any(a is None for a in answers):
                return None
            return {f"{s.label}.{k}": v for s, a in zip(node.steps, answers, strict=True)
                    for k, v in (a or {}).items()}  # fmt: skip
        first = answers[0]
        return first if all(a == first for a in answers) else None

    def step(self, node: Node, i: int, step: Step, given: Known, request: Known) -> Known:
        where = f"nodes.{node.name}.steps[{i}]"
        if step.kind == "node":
            out = self.node(self.pipeline.nodes[step.target], given, request)
        elif step.kind == "processor":
            out = given if step.target == "validate" else None
        else:
            out = self._model(where, step, given)
            if step.fallback is not None and step.fallback.kind == "model":
                self._model(f"{where}.fallback", step.fallback, given)
        if out is not None and step.outputs:
            renames = dict(step.outputs)
            out = {renames.get(k, k): v for k, v in out.items()}
        return out

    def _model(self, where: str, step: Step, given: Known) -> Known:
        inputs, outputs = self.signatures[(step.target, step.version)]
        if given is None:
            return dict(outputs)
        try:
            wiring = wire(step, given, list(inputs))
        except InvalidField as e:
            raise Unprocessable(f"{where}.{e.message}") from None
        unfed = [name for name in inputs if name not in wiring]
        if unfed:
            raise Unprocessable(f"{where}.inputs: model '{step.target}' needs input "
                                f"'{unfed[0]}', which 'inputs' does not map")  # fmt: skip
        for name, tensor in wiring.items():
            spec, have = inputs.get(name), given[tensor]
            if spec is not None and (have[0] != spec[0] or have[1] != spec[1]):
                raise Unprocessable(
                    f"{where}.inputs.{name}: model '{step.target}' takes {spec[0]} of rank "
                    f"{spec[1]}, and '{tensor}' is {have[0]} of rank {have[1]}"
                )
        return dict(outputs)


def _agree(field: str, what: str, spec: TensorSpec, have: tuple[str, int]) -> None:
    if spec.datatype != have[0] or len(spec.shape) != have[1]:
        raise Unprocessable(f"{field}: {what} is {spec.datatype} of rank {len(spec.shape)}, and "
                            f"the graph gives {have[0]} of rank {have[1]}")  # fmt: skip
