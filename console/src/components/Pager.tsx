export const PAGE_SIZES = [10, 20, 50, 100];

interface PagerProps {
  /** Zero-based. */
  page: number;
  pageSize: number;
  /** Known for lists the console holds whole; else `hasNext` says whether a next page exists. */
  total?: number;
  hasNext?: boolean;
  onPage: (page: number) => void;
  onPageSize?: (size: number) => void;
  label: string;
}

/** Previous / next page of a list, and its page size. */
export function Pager({ page, pageSize, total, hasNext, onPage, onPageSize, label }: PagerProps) {
  const pages = total === undefined ? undefined : Math.max(1, Math.ceil(total / pageSize));
  const next = pages === undefined ? Boolean(hasNext) : page + 1 < pages;
  const first = total === 0 ? 0 : page * pageSize + 1;
  const last = total === undefined ? undefined : Math.min(total, (page + 1) * pageSize);
  return (
    <nav className="pager" aria-label={`${label} pages`}>
      <button type="button" onClick={() => onPage(page - 1)} disabled={page === 0}>
        ← Previous
      </button>
      <span className="muted" aria-live="polite">
        {total === undefined
          ? `Page ${page + 1}`
          : `${first}–${last} of ${total}`}
      </span>
      <button type="button" onClick={() => onPage(page + 1)} disabled={!next}>
        Next →
      </button>
      {onPageSize ? (
        <label className="inline">
          Per page{" "}
          <select value={pageSize} onChange={(e) => onPageSize(Number(e.target.value))}>
            {PAGE_SIZES.map((n) => (
              <option key={n} value={n}>
                {n}
              </option>
            ))}
          </select>
        </label>
      ) : null}
    </nav>
  );
}

/** One page of a list held whole. */
export function pageOf<T>(items: readonly T[], page: number, pageSize: number): T[] {
  return items.slice(page * pageSize, (page + 1) * pageSize);
}
