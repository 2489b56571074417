import { useCallback, useEffect, useRef, useState } from "react";

export interface Loaded<T> {
  data: T | undefined;
  error: Error | null;
  loading: boolean;
  /** Load again (after a change); keeps showing the old data meanwhile. */
  reload: () => void;
}

/** The result of an async load, redone when `deps` change; answers that arrive after a newer
 * load started are dropped. With `pollMs`, loads again that often while `poll(data)` holds. */
export function useLoad<T>(
  load: () => Promise<T>,
  deps: readonly unknown[],
  options: { pollMs?: number; poll?: (data: T) => boolean } = {},
): Loaded<T> {
  const [data, setData] = useState<T>();
  const [error, setError] = useState<Error | null>(null);
  const [loading, setLoading] = useState(true);
  const [tick, setTick] = useState(0);
  const serial = useRef(0);
  const reload = useCallback(() => setTick((t) => t + 1), []);

  useEffect(() => {
    const mine = ++serial.current;
    setLoading(true);
    load().then(
      (value) => {
        if (mine !== serial.current) return;
        setData(value);
        setError(null);
        setLoading(false);
      },
      (e: unknown) => {
        if (mine !== serial.current) return;
        setError(e instanceof Error ? e : new Error(String(e)));
        setLoading(false);
      },
    );
  }, [...deps, tick]);

  const { pollMs, poll } = options;
  useEffect(() => {
    if (!pollMs || data === undefined || !poll?.(data)) return;
    const timer = setTimeout(reload, pollMs);
    return () => clearTimeout(timer);
  }, [data, pollMs, poll, reload]);

  return { data, error, loading, reload };
}
