import type { ReactNode } from "react";

/** An error in words: the server's message, never a blank page. */
export function ErrorNotice({ error, title }: { error: Error | string | null; title?: string }) {
  if (!error) return null;
  const message = typeof error === "string" ? error : error.message;
  return (
    <div className="notice notice-error" role="alert">
      {title ? <strong>{title}: </strong> : null}
      {message}
    </div>
  );
}

export function InfoNotice({ children }: { children: ReactNode }) {
  return (
    <div className="notice notice-info" role="status">
      {children}
    </div>
  );
}

export function Loading({ what = "Loading" }: { what?: string }) {
  return (
    <p className="muted" role="status" aria-live="polite">
      {what}…
    </p>
  );
}

const TONES: Record<string, string> = {
  ready: "ok", succeeded: "ok", completed: "ok", active: "ok", ok: "ok",
  queued: "wait", running: "wait", importing: "wait", deploying: "wait", validating: "wait",
  in_progress: "wait", finalizing: "wait", cancelling: "wait", "not ready": "wait",
  failed: "bad", revoked: "bad", error: "bad", denied: "bad", expired: "bad",
  cancelled: "off", "not deployed": "off", disabled: "off",
};

export function StatusBadge({ status }: { status: string }) {
  const tone = TONES[status.toLowerCase()] ?? "off";
  return <span className={`badge badge-${tone}`}>{status.replace(/_/g, " ")}</span>;
}
