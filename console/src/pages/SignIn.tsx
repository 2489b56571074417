import { useState } from "react";
import type { FormEvent } from "react";
import { useSession } from "../auth/session";
import { ErrorNotice, InfoNotice } from "../components/Notice";
import { ThemeButton } from "../components/Layout";

type Method = "password" | "key";

export function SignIn() {
  const { signInWithPassword, signInWithKey, notice } = useSession();
  const [method, setMethod] = useState<Method>("password");
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [key, setKey] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      if (method === "password") await signInWithPassword(username, password);
      else await signInWithKey(key);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
      setBusy(false);
    }
  }

  return (
    <div className="signin">
      <form className="card signin-card" onSubmit={submit} aria-labelledby="signin-title">
        <div className="row spread">
          <h1 id="signin-title">Sign in to inferd</h1>
          <ThemeButton />
        </div>
        {notice ? <InfoNotice>{notice}</InfoNotice> : null}
        <fieldset className="segmented">
          <legend className="sr-only">Sign in with</legend>
          <label>
            <input
              type="radio"
              name="method"
              value="password"
              checked={method === "password"}
              onChange={() => setMethod("password")}
            />
            Username and password
          </label>
          <label>
            <input
              type="radio"
              name="method"
              value="key"
              checked={method === "key"}
              onChange={() => setMethod("key")}
            />
            API key
          </label>
        </fieldset>
        {method === "password" ? (
          <>
            <label>
              Username
              <input
                name="username"
                autoComplete="username"
                required
                value={username}
                onChange={(e) => setUsername(e.target.value)}
              />
            </label>
            <label>
              Password
              <input
                name="password"
                type="password"
                autoComplete="current-password"
                required
                value={password}
                onChange={(e) => setPassword(e.target.value)}
              />
            </label>
          </>
        ) : (
          <label>
            Key
            <input
              name="key"
              type="password"
              autoComplete="off"
              placeholder="inferd_…"
              required
              value={key}
              onChange={(e) => setKey(e.target.value)}
            />
          </label>
        )}
        <ErrorNotice error={error} />
        <button type="submit" className="primary" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
        <p className="muted small">
          The console keeps your sign-in in this tab's memory only: reloading the page signs
          you out.
        </p>
      </form>
    </div>
  );
}
