import { useEffect, useState } from "react";
import type { ReactNode } from "react";
import { NavLink } from "react-router";
import { isAdmin, useSession } from "../auth/session";

type Theme = "light" | "dark";
const THEME_KEY = "inferd-console-theme"; // a display preference, never a credential

function initialTheme(): Theme {
  const saved = window.localStorage?.getItem(THEME_KEY);
  if (saved === "light" || saved === "dark") return saved;
  return window.matchMedia?.("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

export function useTheme(): [Theme, () => void] {
  const [theme, setTheme] = useState<Theme>(initialTheme);
  useEffect(() => {
    document.documentElement.dataset.theme = theme;
  }, [theme]);
  const toggle = () =>
    setTheme((t) => {
      const next = t === "dark" ? "light" : "dark";
      window.localStorage?.setItem(THEME_KEY, next);
      return next;
    });
  return [theme, toggle];
}

export function ThemeButton() {
  const [theme, toggle] = useTheme();
  return (
    <button type="button" className="ghost" onClick={toggle} aria-label="Switch colour theme">
      {theme === "dark" ? "☀ Light" : "☾ Dark"}
    </button>
  );
}

export function Layout({ children }: { children: ReactNode }) {
  const { me, signOut } = useSession();
  const admin = isAdmin(me);
  return (
    <div className="shell">
      <a className="skip" href="#main" onClick={(e) => {
        e.preventDefault();
        document.getElementById("main")?.focus();
      }}>
        Skip to content
      </a>
      <header className="topbar">
        <span className="brand">inferd</span>
        <nav className="nav" aria-label="Console">
          <NavLink to="/models">Models</NavLink>
          <NavLink to="/jobs">Jobs</NavLink>
          <NavLink to="/keys">API keys</NavLink>
          {admin ? <NavLink to="/users">Users</NavLink> : null}
          {admin ? <NavLink to="/audit">Audit log</NavLink> : null}
        </nav>
        <div className="who">
          {me ? (
            <span className="whoami" data-testid="whoami">
              <strong>{me.username}</strong> <span className="badge badge-off">{me.role}</span>
              {me.via === "key" ? <span className="muted"> · API key</span> : null}
            </span>
          ) : null}
          <ThemeButton />
          <button type="button" onClick={signOut}>
            Sign out
          </button>
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        {children}
      </main>
    </div>
  );
}
