import { useState } from "react";
import type { FormEvent } from "react";
import { Link, useNavigate, useParams } from "react-router";
import type { Model, ModelVersion, RepositoryEntry, TensorSpec, User } from "../api/types";
import { isAdmin, useMe, useSession } from "../auth/session";
import { Confirm } from "../components/Confirm";
import { ErrorNotice, InfoNotice, Loading, StatusBadge } from "../components/Notice";
import { modelStatus } from "../lib/catalog";
import { formatBytes, formatJson, formatTime, shortHash } from "../lib/format";
import { ownerName } from "../lib/owners";
import { useLoad } from "../lib/useLoad";

export function ModelPage() {
  const name = useParams().name ?? "";
  const { api } = useSession();
  const me = useMe();
  const admin = isAdmin(me);
  const navigate = useNavigate();
  const [editing, setEditing] = useState(false);
  const [deleting, setDeleting] = useState(false);
  const [selected, setSelected] = useState<number | null>(null);
  const path = { params: { path: { name } } };

  const model = useLoad(() => api.call<Model>((c) => c.GET("/api/v1/models/{name}", path)), [api, name]);
  const versions = useLoad(
    () => api.call<ModelVersion[]>((c) => c.GET("/api/v1/models/{name}/versions", path)),
    [api, name],
    { pollMs: 2000, poll: (vs) => vs.some((v) => v.status === "importing") },
  );
  const index = useLoad(
    () => api.call<RepositoryEntry[]>((c) => c.GET("/v2/repository/index")).catch(() => []),
    [api],
  );
  const users = useLoad(
    () => (admin ? api.call<User[]>((c) => c.GET("/api/v1/users")) : Promise.resolve([])),
    [api, admin],
  );

  if (model.error) {
    return (
      <section>
        <p><Link to="/models">← Models</Link></p>
        <h1>{name}</h1>
        <ErrorNotice error={model.error} title="This model could not be shown" />
      </section>
    );
  }
  if (!model.data) return <Loading what="Loading the model" />;

  const m = model.data;
  const mayChange = !m.system && (m.owner_id === me.id || admin) && me.scopes.includes("manage");
  const list = [...(versions.data ?? [])].sort((a, b) => b.version - a.version);
  const shown = list.find((v) => v.version === selected) ?? list[0];

  return (
    <section aria-labelledby="model-title">
      <p><Link to="/models">← Models</Link></p>
      <div className="row spread">
        <h1 id="model-title">{m.name}</h1>
        <div className="row">
          <StatusBadge status={modelStatus(m.name, index.data ?? [])} />
          {mayChange && !editing ? (
            <button type="button" onClick={() => setEditing(true)}>Edit details</button>
          ) : null}
          {mayChange ? (
            <button type="button" className="danger" onClick={() => setDeleting(true)}>
              Delete model
            </button>
          ) : null}
        </div>
      </div>
      {m.system ? (
        <InfoNotice>
          A repository model: it is defined by the server's model repository folder and
          changed there, not here.
        </InfoNotice>
      ) : null}
      {editing ? (
        <EditModel model={m} onDone={(changed) => { setEditing(false); if (changed) model.reload(); }} />
      ) : (
        <dl className="facts card" data-testid="model-facts">
          <dt>Description</dt>
          <dd>{m.description || <span className="muted">none</span>}</dd>
          <dt>Framework</dt>
          <dd>{m.framework || "—"}</dd>
          <dt>Model type</dt>
          <dd>{m.model_type || "—"}</dd>
          <dt>Task</dt>
          <dd>{m.task_type || "—"}</dd>
          <dt>Tags</dt>
          <dd>{m.tags.length ? m.tags.map((t) => <span className="tag" key={t}>{t}</span>) : "—"}</dd>
          <dt>Visibility</dt>
          <dd>{m.visibility}</dd>
          <dt>Owner</dt>
          <dd>{ownerName(m, me, users.data)}</dd>
          <dt>Updated</dt>
          <dd>{formatTime(m.updated_at)}</dd>
        </dl>
      )}

      <h2>Versions</h2>
      <ErrorNotice error={versions.error} title="The versions could not be listed" />
      {versions.loading && !versions.data ? <Loading what="Loading versions" /> : null}
      {versions.data ? (
        <div className="table-wrap">
          <table className="table" aria-label="Versions">
            <thead>
              <tr>
                <th scope="col">Version</th>
                <th scope="col">Status</th>
                <th scope="col">Format</th>
                <th scope="col">Runtime</th>
                <th scope="col">Size</th>
                <th scope="col">sha256</th>
                <th scope="col">Created</th>
              </tr>
            </thead>
            <tbody>
              {list.map((v) => (
                <tr key={v.id} className={v === shown ? "selected" : undefined}>
                  <td>
                    <button type="button" className="link" aria-pressed={v === shown}
                      onClick={() => setSelected(v.version)}>
                      v{v.version}
                    </button>
                  </td>
                  <td><StatusBadge status={v.status} /></td>
                  <td>{v.format ?? "—"}</td>
                  <td>{v.runtime ?? "—"}</td>
                  <td>{formatBytes(v.size_bytes)}</td>
                  <td><code title={v.sha256 ?? undefined}>{shortHash(v.sha256)}</code></td>
                  <td>{formatTime(v.created_at)}</td>
                </tr>
              ))}
              {list.length === 0 ? (
                <tr><td colSpan={7} className="muted">No versions yet.</td></tr>
              ) : null}
            </tbody>
          </table>
        </div>
      ) : null}
      {shown ? <VersionDetails version={shown} /> : null}

      {deleting ? (
        <Confirm
          title={`Delete ${m.name}?`}
          action="Delete model"
          typeToConfirm={m.name}
          onCancel={() => setDeleting(false)}
          onConfirm={async () => {
            await api.call((c) => c.DELETE("/api/v1/models/{name}", path));
            navigate("/models", { replace: true });
          }}
        >
          <p>
            Its {list.length} version{list.length === 1 ? "" : "s"}, their stored files and
            its deployment are deleted too. This cannot be undone.
          </p>
        </Confirm>
      ) : null}
    </section>
  );
}

function VersionDetails({ version: v }: { version: ModelVersion }) {
  return (
    <article className="card" aria-label={`Version ${v.version}`}>
      <h3>Version {v.version}</h3>
      {v.reason ? <ErrorNotice error={v.reason} title="Why it failed" /> : null}
      <dl className="facts">
        <dt>sha256</dt>
        <dd><code className="wrap">{v.sha256 ?? "—"}</code></dd>
        <dt>Size</dt>
        <dd>{formatBytes(v.size_bytes)}</dd>
        <dt>Format</dt>
        <dd>{v.format ?? "—"}</dd>
        <dt>Source</dt>
        <dd className="wrap">{v.source ?? "—"}</dd>
      </dl>
      <div className="two">
        <Signature title="Inputs" tensors={v.inputs} />
        <Signature title="Outputs" tensors={v.outputs} />
      </div>
      <div className="two">
        <div>
          <h4>Sample input</h4>
          {v.sample_input ? <pre className="json">{formatJson(v.sample_input)}</pre> : <p className="muted">None.</p>}
        </div>
        <div>
          <h4>Sample output</h4>
          {v.sample_output ? <pre className="json">{formatJson(v.sample_output)}</pre> : <p className="muted">None.</p>}
        </div>
      </div>
    </article>
  );
}

function Signature({ title, tensors }: { title: string; tensors: TensorSpec[] }) {
  return (
    <div>
      <h4>{title}</h4>
      {tensors.length === 0 ? (
        <p className="muted">Not known.</p>
      ) : (
        <table className="table compact" aria-label={title}>
          <thead>
            <tr><th scope="col">Name</th><th scope="col">Datatype</th><th scope="col">Shape</th></tr>
          </thead>
          <tbody>
            {tensors.map((t) => (
              <tr key={t.name}>
                <td><code>{t.name}</code></td>
                <td>{t.datatype}</td>
                <td><code>[{t.shape.join(", ")}]</code></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

function EditModel({ model, onDone }: { model: Model; onDone: (changed: boolean) => void }) {
  const { api } = useSession();
  const [form, setForm] = useState({
    description: model.description,
    framework: model.framework,
    model_type: model.model_type,
    task_type: model.task_type,
    tags: model.tags.join(", "),
    visibility: model.visibility,
  });
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const set = (field: keyof typeof form) => (e: { target: { value: string } }) =>
    setForm({ ...form, [field]: e.target.value });

  async function save(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    const tags = form.tags.split(",").map((t) => t.trim()).filter(Boolean);
    try {
      await api.call((c) =>
        c.PATCH("/api/v1/models/{name}", {
          params: { path: { name: model.name } },
          body: { ...form, tags, visibility: form.visibility },
        }),
      );
      onDone(true);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
      setBusy(false);
    }
  }

  return (
    <form className="card form-grid" onSubmit={save} aria-label="Edit model details">
      <label className="span2">
        Description
        <textarea rows={3} value={form.description} onChange={set("description")} />
      </label>
      <label>
        Framework
        <input value={form.framework} onChange={set("framework")} />
      </label>
      <label>
        Model type
        <input value={form.model_type} onChange={set("model_type")} />
      </label>
      <label>
        Task
        <input value={form.task_type} onChange={set("task_type")} />
      </label>
      <label>
        <span>Tags <span className="muted small">(comma-separated)</span></span>
        <input value={form.tags} onChange={set("tags")} />
      </label>
      <label>
        Visibility
        <select value={form.visibility} onChange={set("visibility")}>
          <option value="private">private: you and admins</option>
          <option value="public">public: every user</option>
        </select>
      </label>
      <div className="span2">
        <ErrorNotice error={error} />
        <div className="actions">
          <button type="button" onClick={() => onDone(false)}>Cancel</button>
          <button type="submit" className="primary" disabled={busy}>
            {busy ? "Saving…" : "Save"}
          </button>
        </div>
      </div>
    </form>
  );
}
