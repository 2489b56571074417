import { useState } from "react";
import type { AuditEntry } from "../api/types";
import { useSession } from "../auth/session";
import { ErrorNotice, Loading, StatusBadge } from "../components/Notice";
import { Pager, pageOf } from "../components/Pager";
import { formatTime } from "../lib/format";
import { useLoad } from "../lib/useLoad";

/** How many entries, newest first, the page asks for: the API's own upper bound. */
const LIMITS = [100, 500, 1000];

export function Audit() {
  const { api } = useSession();
  const [action, setAction] = useState("");
  const [limit, setLimit] = useState(100);
  const [page, setPage] = useState(0);
  const [open, setOpen] = useState<string | null>(null);
  const entries = useLoad(
    () =>
      api.call<AuditEntry[]>((c) =>
        c.GET("/api/v1/audit", { params: { query: { limit, action: action.trim() || undefined } } }),
      ),
    [api, action, limit],
  );
  const list = entries.data ?? [];

  return (
    <section aria-labelledby="audit-title">
      <h1 id="audit-title">Audit log</h1>
      <form className="filters" onSubmit={(e) => e.preventDefault()} aria-label="Filter the audit log">
        <label>
          Action
          <input name="action" placeholder="e.g. key.create" value={action}
            onChange={(e) => { setAction(e.target.value); setPage(0); }} />
        </label>
        <label>
          Newest
          <select value={limit} onChange={(e) => { setLimit(Number(e.target.value)); setPage(0); }}>
            {LIMITS.map((n) => <option key={n} value={n}>{n} entries</option>)}
          </select>
        </label>
        <button type="button" onClick={entries.reload}>Refresh</button>
      </form>
      <ErrorNotice error={entries.error} title="The audit log could not be read" />
      {entries.loading && !entries.data ? <Loading what="Loading the audit log" /> : null}
      {entries.data ? (
        <>
          <div className="table-wrap">
            <table className="table" aria-label="Audit log">
              <thead>
                <tr>
                  <th scope="col">When</th>
                  <th scope="col">Who</th>
                  <th scope="col">Action</th>
                  <th scope="col">Object</th>
                  <th scope="col">Outcome</th>
                  <th scope="col">From</th>
                  <th scope="col"><span className="sr-only">Detail</span></th>
                </tr>
              </thead>
              <tbody>
                {pageOf(list, page, 25).flatMap((e) => {
                  const rows = [
                    <tr key={e.id}>
                      <td>{formatTime(e.at)}</td>
                      <td>{e.actor || "—"}</td>
                      <td><code>{e.action}</code></td>
                      <td>{e.target_type ? `${e.target_type} ${e.target_id ?? ""}` : "—"}</td>
                      <td><StatusBadge status={e.outcome} /></td>
                      <td>{e.ip || "—"}</td>
                      <td>
                        {e.detail && Object.keys(e.detail).length ? (
                          <button type="button" className="small" aria-expanded={open === e.id}
                            onClick={() => setOpen(open === e.id ? null : e.id)}>
                            Detail
                          </button>
                        ) : null}
                      </td>
                    </tr>,
                  ];
                  if (open === e.id) {
                    rows.push(
                      <tr key={`${e.id}-detail`} className="details">
                        <td colSpan={7}><pre className="json">{JSON.stringify(e.detail, null, 2)}</pre></td>
                      </tr>,
                    );
                  }
                  return rows;
                })}
                {list.length === 0 ? (
                  <tr><td colSpan={7} className="muted">No entries.</td></tr>
                ) : null}
              </tbody>
            </table>
          </div>
          <Pager label="Audit log" page={page} pageSize={25} total={list.length} onPage={setPage} />
        </>
      ) : null}
    </section>
  );
}
