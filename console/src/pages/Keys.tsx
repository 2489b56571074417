import { useState } from "react";
import type { FormEvent } from "react";
import type { ApiKey, NewApiKey, Scope } from "../api/types";
import { isAdmin, useMe, useSession } from "../auth/session";
import { Confirm } from "../components/Confirm";
import { ErrorNotice, Loading, StatusBadge } from "../components/Notice";
import { Pager, pageOf } from "../components/Pager";
import { formatTime } from "../lib/format";
import { useLoad } from "../lib/useLoad";

const SCOPES: { scope: Scope; what: string }[] = [
  { scope: "infer", what: "call models, run and read jobs" },
  { scope: "manage", what: "create and change models, deployments and keys" },
  { scope: "admin", what: "administer the server (admins only)" },
];

function keyState(k: ApiKey, now: number): string {
  if (k.revoked_at) return "revoked";
  if (k.expires_at && new Date(k.expires_at).getTime() <= now) return "expired";
  return "active";
}

export function Keys() {
  const { api } = useSession();
  const me = useMe();
  const [page, setPage] = useState(0);
  const [created, setCreated] = useState<NewApiKey | null>(null);
  const [revoking, setRevoking] = useState<ApiKey | null>(null);
  const keys = useLoad(() => api.call<ApiKey[]>((c) => c.GET("/api/v1/keys")), [api]);
  const list = [...(keys.data ?? [])].sort((a, b) =>
    (b.created_at ?? "").localeCompare(a.created_at ?? ""),
  );
  const now = Date.now();
  const mayManage = me.scopes.includes("manage");

  return (
    <section aria-labelledby="keys-title">
      <h1 id="keys-title">API keys</h1>
      <p className="muted">
        Programs sign in with an API key: <code>Authorization: Bearer &lt;key&gt;</code>. A
        key holds at most the scopes of whoever made it.
      </p>
      {mayManage ? (
        <CreateKey admin={isAdmin(me)} onCreated={(k) => { setCreated(k); keys.reload(); }} />
      ) : (
        <ErrorNotice error="This sign-in lacks the manage scope: it cannot create or revoke keys." />
      )}
      {created ? <ShownOnce created={created} onDone={() => setCreated(null)} /> : null}

      <h2>Your keys</h2>
      <ErrorNotice error={keys.error} title="The keys could not be listed" />
      {keys.loading && !keys.data ? <Loading what="Loading keys" /> : null}
      {keys.data ? (
        <>
          <div className="table-wrap">
            <table className="table" aria-label="API keys">
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Key starts</th>
                  <th scope="col">Scopes</th>
                  <th scope="col">State</th>
                  <th scope="col">Created</th>
                  <th scope="col">Expires</th>
                  <th scope="col">Last used</th>
                  <th scope="col"><span className="sr-only">Actions</span></th>
                </tr>
              </thead>
              <tbody>
                {pageOf(list, page, 20).map((k) => {
                  const state = keyState(k, now);
                  return (
                    <tr key={k.id} data-key={k.name}>
                      <td>{k.name}</td>
                      <td><code>{k.prefix}…</code></td>
                      <td>{k.scopes.join(", ")}</td>
                      <td><StatusBadge status={state} /></td>
                      <td>{formatTime(k.created_at)}</td>
                      <td>{k.expires_at ? formatTime(k.expires_at) : "never"}</td>
                      <td>{formatTime(k.last_used_at)}</td>
                      <td>
                        {state !== "revoked" && mayManage ? (
                          <button type="button" className="danger small"
                            aria-label={`Revoke ${k.name}`} onClick={() => setRevoking(k)}>
                            Revoke
                          </button>
                        ) : null}
                      </td>
                    </tr>
                  );
                })}
                {list.length === 0 ? (
                  <tr><td colSpan={8} className="muted">No keys yet.</td></tr>
                ) : null}
              </tbody>
            </table>
          </div>
          <Pager label="Keys" page={page} pageSize={20} total={list.length} onPage={setPage} />
        </>
      ) : null}
      {revoking ? (
        <Confirm
          title={`Revoke the key “${revoking.name}”?`}
          action="Revoke key"
          onCancel={() => setRevoking(null)}
          onConfirm={async () => {
            await api.call((c) =>
              c.DELETE("/api/v1/keys/{key_id}", { params: { path: { key_id: revoking.id } } }),
            );
            setRevoking(null);
            keys.reload();
          }}
        >
          <p>Programs using it are refused from now on. This cannot be undone.</p>
        </Confirm>
      ) : null}
    </section>
  );
}

function CreateKey({ admin, onCreated }: { admin: boolean; onCreated: (k: NewApiKey) => void }) {
  const { api } = useSession();
  const [name, setName] = useState("");
  const [scopes, setScopes] = useState<Scope[]>(["infer"]);
  const [expires, setExpires] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function create(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const key = await api.call<NewApiKey>((c) =>
        c.POST("/api/v1/keys", {
          body: {
            name,
            scopes,
            // the end of the chosen day, in the user's time zone
            expires_at: expires ? new Date(`${expires}T23:59:59`).toISOString() : null,
          },
        }),
      );
      setName("");
      onCreated(key);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <form className="card form-grid" onSubmit={create} aria-labelledby="create-key-title">
      <h2 id="create-key-title" className="span2">Create a key</h2>
      <label>
        Name
        <input name="key-name" required maxLength={100} value={name}
          onChange={(e) => setName(e.target.value)} placeholder="e.g. nightly batch" />
      </label>
      <label>
        <span>Expires <span className="muted small">(optional)</span></span>
        <input type="date" name="expires" value={expires} onChange={(e) => setExpires(e.target.value)} />
      </label>
      <fieldset className="span2 scopes">
        <legend>Scopes</legend>
        {SCOPES.filter((s) => admin || s.scope !== "admin").map(({ scope, what }) => (
          <label key={scope} className="check">
            <input
              type="checkbox"
              name={`scope-${scope}`}
              checked={scopes.includes(scope)}
              onChange={(e) =>
                setScopes(e.target.checked ? [...scopes, scope] : scopes.filter((s) => s !== scope))
              }
            />
            <strong>{scope}</strong> <span className="muted">— {what}</span>
          </label>
        ))}
      </fieldset>
      <div className="span2">
        <ErrorNotice error={error} />
        <button type="submit" className="primary" disabled={busy || scopes.length === 0}>
          {busy ? "Creating…" : "Create key"}
        </button>
      </div>
    </form>
  );
}

function ShownOnce({ created, onDone }: { created: NewApiKey; onDone: () => void }) {
  const [copied, setCopied] = useState(false);
  return (
    <div className="card shown-once" role="region" aria-label="New API key">
      <h2>Key “{created.name}” created</h2>
      <p>
        <strong>Copy it now: it is shown only this once.</strong> inferd keeps only a hash of
        it and cannot show it again.
      </p>
      <div className="row">
        <code className="secret" data-testid="new-key">{created.key}</code>
        <button
          type="button"
          onClick={() => {
            navigator.clipboard?.writeText(created.key).then(() => setCopied(true), () => {});
          }}
        >
          {copied ? "Copied" : "Copy"}
        </button>
        <button type="button" className="primary" onClick={onDone}>
          I have stored it
        </button>
      </div>
    </div>
  );
}
