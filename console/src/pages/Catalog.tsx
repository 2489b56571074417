import { useMemo, useState } from "react";
import { Link, useSearchParams } from "react-router";
import type { Model, RepositoryEntry, User } from "../api/types";
import { isAdmin, useMe, useSession } from "../auth/session";
import { ErrorNotice, Loading, StatusBadge } from "../components/Notice";
import { Pager, pageOf } from "../components/Pager";
import { type CatalogFilter, NO_FILTER, choices, matches, modelStatus } from "../lib/catalog";
import { ownerName } from "../lib/owners";
import { useLoad } from "../lib/useLoad";

const FIELDS = Object.keys(NO_FILTER) as (keyof CatalogFilter)[];

export function Catalog() {
  const { api } = useSession();
  const me = useMe();
  const admin = isAdmin(me);
  const [params, setParams] = useSearchParams();
  const [page, setPage] = useState(0);
  const [pageSize, setPageSize] = useState(20);

  const models = useLoad(() => api.call<Model[]>((c) => c.GET("/api/v1/models")), [api]);
  // served versions, for each model's status (a caller sees the models it may see)
  const index = useLoad(
    () => api.call<RepositoryEntry[]>((c) => c.GET("/v2/repository/index")),
    [api],
  );
  const users = useLoad(
    () => (admin ? api.call<User[]>((c) => c.GET("/api/v1/users")) : Promise.resolve([])),
    [api, admin],
  );

  const filter: CatalogFilter = useMemo(() => {
    const f = { ...NO_FILTER };
    for (const k of FIELDS) f[k] = params.get(k) ?? "";
    return f;
  }, [params]);

  function setFilter(field: keyof CatalogFilter, value: string) {
    const next = new URLSearchParams(params);
    if (value) next.set(field, value);
    else next.delete(field);
    setParams(next, { replace: true });
    setPage(0);
  }

  const all = models.data ?? [];
  const entries = index.data ?? [];
  const shown = all
    .map((m) => ({ model: m, status: modelStatus(m.name, entries) }))
    .filter(({ model, status }) => matches(model, filter, { myId: me.id, status }))
    .sort((a, b) => a.model.name.localeCompare(b.model.name));
  const frameworks = choices(all, (m) => [m.framework]);
  const tasks = choices(all, (m) => [m.task_type]);
  const tags = choices(all, (m) => m.tags);
  const owners = (users.data ?? []).filter((u) => all.some((m) => m.owner_id === u.id));
  const filtered = FIELDS.some((k) => filter[k]);

  return (
    <section aria-labelledby="catalog-title">
      <div className="row spread">
        <h1 id="catalog-title">Models</h1>
        <button type="button" onClick={() => { models.reload(); index.reload(); }}>
          Refresh
        </button>
      </div>
      <form className="filters" role="search" onSubmit={(e) => e.preventDefault()}>
        <label className="grow">
          Search
          <input
            type="search"
            name="text"
            placeholder="Name, description, tag…"
            value={filter.text}
            onChange={(e) => setFilter("text", e.target.value)}
          />
        </label>
        <Choice label="Framework" value={filter.framework} options={frameworks}
          onChange={(v) => setFilter("framework", v)} />
        <Choice label="Task" value={filter.task} options={tasks}
          onChange={(v) => setFilter("task", v)} />
        <Choice label="Tag" value={filter.tag} options={tags}
          onChange={(v) => setFilter("tag", v)} />
        <label>
          Owner
          <select name="owner" value={filter.owner} onChange={(e) => setFilter("owner", e.target.value)}>
            <option value="">Anyone</option>
            <option value="mine">You</option>
            <option value="repository">Repository</option>
            <option value="others">Other users</option>
            {owners.filter((u) => u.id !== me.id).map((u) => (
              <option key={u.id} value={u.id}>
                {u.username}
              </option>
            ))}
          </select>
        </label>
        <Choice label="Status" value={filter.status}
          options={["ready", "not ready", "not deployed"]}
          onChange={(v) => setFilter("status", v)} />
        {filtered ? (
          <button type="button" className="ghost" onClick={() => { setParams({}, { replace: true }); setPage(0); }}>
            Clear filters
          </button>
        ) : null}
      </form>
      <ErrorNotice error={models.error} title="The models could not be listed" />
      <ErrorNotice error={index.error} title="The serving status could not be read" />
      {models.loading && !models.data ? <Loading what="Loading models" /> : null}
      {models.data ? (
        <>
          <p className="muted" aria-live="polite">
            {filtered ? `${shown.length} of ${all.length} models match` : `${all.length} models`}
          </p>
          <div className="table-wrap">
            <table className="table" aria-label="Models">
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Framework</th>
                  <th scope="col">Task</th>
                  <th scope="col">Tags</th>
                  <th scope="col">Owner</th>
                  <th scope="col">Visibility</th>
                  <th scope="col">Status</th>
                </tr>
              </thead>
              <tbody>
                {pageOf(shown, page, pageSize).map(({ model, status }) => (
                  <tr key={model.id} data-model={model.name}>
                    <td>
                      <Link to={`/models/${encodeURIComponent(model.name)}`}>{model.name}</Link>
                      {model.description ? (
                        <div className="muted small clamp">{model.description}</div>
                      ) : null}
                    </td>
                    <td>{model.framework || "—"}</td>
                    <td>{model.task_type || "—"}</td>
                    <td>
                      {model.tags.map((t) => (
                        <span className="tag" key={t}>{t}</span>
                      ))}
                    </td>
                    <td>{ownerName(model, me, users.data)}</td>
                    <td>{model.visibility}</td>
                    <td><StatusBadge status={status} /></td>
                  </tr>
                ))}
                {shown.length === 0 ? (
                  <tr>
                    <td colSpan={7} className="muted">
                      {filtered ? "No model matches these filters." : "No models yet."}
                    </td>
                  </tr>
                ) : null}
              </tbody>
            </table>
          </div>
          <Pager label="Models" page={page} pageSize={pageSize} total={shown.length}
            onPage={setPage} onPageSize={(n) => { setPageSize(n); setPage(0); }} />
        </>
      ) : null}
    </section>
  );
}

function Choice(props: {
  label: string;
  value: string;
  options: string[];
  onChange: (value: string) => void;
}) {
  const { label, value, options, onChange } = props;
  // a value in the address that no model has still shows, so it can be cleared
  const all = value && !options.includes(value) ? [value, ...options] : options;
  return (
    <label>
      {label}
      <select name={label.toLowerCase()} value={value} onChange={(e) => onChange(e.target.value)}>
        <option value="">Any</option>
        {all.map((o) => (
          <option key={o} value={o}>
            {o}
          </option>
        ))}
      </select>
    </label>
  );
}
