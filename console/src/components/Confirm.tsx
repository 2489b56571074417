import { useEffect, useId, useRef, useState } from "react";
import type { ReactNode } from "react";

interface ConfirmProps {
  title: string;
  children: ReactNode;
  /** The button's words, e.g. "Delete model". */
  action: string;
  /** When set, the user types it to enable the action (for what cannot be undone). */
  typeToConfirm?: string;
  onConfirm: () => Promise<void> | void;
  onCancel: () => void;
}

/** Tab and Shift+Tab cycle within the dialog while it is open. */
function keepFocusInside(e: { shiftKey: boolean; preventDefault: () => void }, box: HTMLElement | null) {
  const focusable = box ? [...box.querySelectorAll<HTMLElement>("input, button:not(:disabled)")] : [];
  const first = focusable[0];
  const last = focusable[focusable.length - 1];
  if (!first || !last) return;
  if (e.shiftKey && document.activeElement === first) {
    e.preventDefault();
    last.focus();
  } else if (!e.shiftKey && document.activeElement === last) {
    e.preventDefault();
    first.focus();
  }
}

/** A modal question before a destructive action. Escape or "Cancel" closes it; focus moves
 * into it, stays there, and goes back to where it was. */
export function Confirm({ title, children, action, typeToConfirm, onConfirm, onCancel }: ConfirmProps) {
  const titleId = useId();
  const [typed, setTyped] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const box = useRef<HTMLDivElement>(null);

  useEffect(() => {
    const before = document.activeElement as HTMLElement | null;
    box.current?.querySelector<HTMLElement>("input, button")?.focus();
    return () => before?.focus?.();
  }, []);

  const ready = !typeToConfirm || typed === typeToConfirm;

  async function confirm() {
    setBusy(true);
    setError(null);
    try {
      await onConfirm();
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
      setBusy(false);
    }
  }

  return (
    <div className="backdrop">
      <div
        ref={box}
        className="dialog"
        role="dialog"
        aria-modal="true"
        aria-labelledby={titleId}
        onKeyDown={(e) => {
          if (e.key === "Escape") onCancel();
          if (e.key === "Tab") keepFocusInside(e, box.current);
        }}
      >
        <h2 id={titleId}>{title}</h2>
        <div>{children}</div>
        {typeToConfirm ? (
          <label>
            Type <code>{typeToConfirm}</code> to confirm
            <input value={typed} onChange={(e) => setTyped(e.target.value)} autoComplete="off" />
          </label>
        ) : null}
        {error ? (
          <div className="notice notice-error" role="alert">
            {error}
          </div>
        ) : null}
        <div className="actions">
          <button type="button" onClick={onCancel}>
            Cancel
          </button>
          <button type="button" className="danger" disabled={!ready || busy} onClick={confirm}>
            {busy ? "Working…" : action}
          </button>
        </div>
      </div>
    </div>
  );
}
