import { useState } from "react";
import type { FormEvent } from "react";
import type { Role, User } from "../api/types";
import { useMe, useSession } from "../auth/session";
import { ErrorNotice, InfoNotice, Loading, StatusBadge } from "../components/Notice";
import { Pager, pageOf } from "../components/Pager";
import { formatBytes, formatTime } from "../lib/format";
import { useLoad } from "../lib/useLoad";

const MIB = 2 ** 20;

export function Users() {
  const { api } = useSession();
  const [page, setPage] = useState(0);
  const [editing, setEditing] = useState<string | null>(null);
  const [done, setDone] = useState<string | null>(null);
  const users = useLoad(() => api.call<User[]>((c) => c.GET("/api/v1/users")), [api]);
  const list = [...(users.data ?? [])].sort((a, b) => a.username.localeCompare(b.username));

  return (
    <section aria-labelledby="users-title">
      <h1 id="users-title">Users</h1>
      <CreateUser onCreated={(u) => { setDone(`User ${u.username} created.`); users.reload(); }} />
      {done ? <InfoNotice>{done}</InfoNotice> : null}
      <ErrorNotice error={users.error} title="The users could not be listed" />
      {users.loading && !users.data ? <Loading what="Loading users" /> : null}
      {users.data ? (
        <>
          <div className="table-wrap">
            <table className="table" aria-label="Users">
              <thead>
                <tr>
                  <th scope="col">User</th>
                  <th scope="col">Role</th>
                  <th scope="col">Trusted</th>
                  <th scope="col">State</th>
                  <th scope="col">Requests / min</th>
                  <th scope="col">Concurrent</th>
                  <th scope="col">Storage quota</th>
                  <th scope="col">Created</th>
                  <th scope="col"><span className="sr-only">Actions</span></th>
                </tr>
              </thead>
              <tbody>
                {pageOf(list, page, 20).flatMap((u) => {
                  const rows = [
                    <tr key={u.id} data-user={u.username}>
                      <td>{u.username}</td>
                      <td>{u.role}</td>
                      <td>{u.trusted ? "yes" : "no"}</td>
                      <td><StatusBadge status={u.disabled ? "disabled" : "active"} /></td>
                      <td>{u.rpm_limit ?? "default"}</td>
                      <td>{u.concurrency_limit ?? "default"}</td>
                      <td>{u.storage_quota_bytes === null ? "default" : formatBytes(u.storage_quota_bytes)}</td>
                      <td>{formatTime(u.created_at)}</td>
                      <td>
                        <button type="button" className="small" aria-expanded={editing === u.id}
                          aria-label={`Edit ${u.username}`}
                          onClick={() => setEditing(editing === u.id ? null : u.id)}>
                          Edit
                        </button>
                      </td>
                    </tr>,
                  ];
                  if (editing === u.id) {
                    rows.push(
                      <tr key={`${u.id}-edit`} className="details">
                        <td colSpan={9}>
                          <EditUser user={u} onDone={(changed) => {
                            setEditing(null);
                            if (changed) { setDone(`User ${u.username} changed.`); users.reload(); }
                          }} />
                        </td>
                      </tr>,
                    );
                  }
                  return rows;
                })}
              </tbody>
            </table>
          </div>
          <Pager label="Users" page={page} pageSize={20} total={list.length} onPage={setPage} />
        </>
      ) : null}
    </section>
  );
}

function CreateUser({ onCreated }: { onCreated: (u: User) => void }) {
  const { api } = useSession();
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [role, setRole] = useState<Role>("member");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function create(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const u = await api.call<User>((c) =>
        c.POST("/api/v1/auth/register", { body: { username, password, role } }),
      );
      setUsername("");
      setPassword("");
      onCreated(u);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <form className="card form-grid three" onSubmit={create} aria-labelledby="create-user-title">
      <h2 id="create-user-title" className="span-all">Create a user</h2>
      <label>
        Username
        <input name="new-username" required autoComplete="off" value={username}
          onChange={(e) => setUsername(e.target.value)} />
      </label>
      <label>
        Password
        <input name="new-password" type="password" required autoComplete="new-password"
          value={password} onChange={(e) => setPassword(e.target.value)} />
      </label>
      <label>
        Role
        <select value={role} onChange={(e) => setRole(e.target.value as Role)}>
          <option value="member">member</option>
          <option value="admin">admin</option>
        </select>
      </label>
      <div className="span-all">
        <ErrorNotice error={error} />
        <button type="submit" className="primary" disabled={busy}>
          {busy ? "Creating…" : "Create user"}
        </button>
      </div>
    </form>
  );
}

/** A number field's value: empty means "the server's default" (null). */
function limit(text: string, scale = 1): number | null {
  const t = text.trim();
  return t === "" ? null : Math.round(Number(t) * scale);
}

function EditUser({ user, onDone }: { user: User; onDone: (changed: boolean) => void }) {
  const { api } = useSession();
  const me = useMe();
  const [role, setRole] = useState<Role>(user.role);
  const [trusted, setTrusted] = useState(user.trusted);
  const [disabled, setDisabled] = useState(user.disabled);
  const [rpm, setRpm] = useState(user.rpm_limit?.toString() ?? "");
  const [concurrency, setConcurrency] = useState(user.concurrency_limit?.toString() ?? "");
  const [quota, setQuota] = useState(
    user.storage_quota_bytes === null ? "" : String(user.storage_quota_bytes / MIB),
  );
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function save(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api.call((c) =>
        c.PATCH("/api/v1/users/{user_id}", {
          params: { path: { user_id: user.id } },
          body: {
            role,
            trusted,
            disabled,
            rpm_limit: limit(rpm),
            concurrency_limit: limit(concurrency),
            storage_quota_bytes: limit(quota, MIB),
          },
        }),
      );
      onDone(true);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
      setBusy(false);
    }
  }

  return (
    <form className="form-grid three" onSubmit={save} aria-label={`Edit ${user.username}`}>
      <label>
        Role
        <select value={role} onChange={(e) => setRole(e.target.value as Role)}>
          <option value="member">member</option>
          <option value="admin">admin</option>
        </select>
      </label>
      <label className="check">
        <input type="checkbox" checked={trusted} onChange={(e) => setTrusted(e.target.checked)} />
        Trusted: may upload formats that run code (pickle, Python)
      </label>
      <label className="check">
        <input type="checkbox" checked={disabled} disabled={user.id === me.id}
          onChange={(e) => setDisabled(e.target.checked)} />
        Disabled: cannot sign in or use keys
      </label>
      <label>
        <span>Requests per minute <span className="muted small">(empty: default)</span></span>
        <input inputMode="numeric" pattern="[0-9]*" value={rpm} onChange={(e) => setRpm(e.target.value)} />
      </label>
      <label>
        <span>Concurrent requests <span className="muted small">(empty: default)</span></span>
        <input inputMode="numeric" pattern="[0-9]*" value={concurrency}
          onChange={(e) => setConcurrency(e.target.value)} />
      </label>
      <label>
        <span>Storage quota, MiB <span className="muted small">(empty: default)</span></span>
        <input inputMode="decimal" value={quota} onChange={(e) => setQuota(e.target.value)} />
      </label>
      <div className="span-all">
        <ErrorNotice error={error} />
        <div className="actions">
          <button type="button" onClick={() => onDone(false)}>Cancel</button>
          <button type="submit" className="primary" disabled={busy}>{busy ? "Saving…" : "Save"}</button>
        </div>
      </div>
    </form>
  );
}
