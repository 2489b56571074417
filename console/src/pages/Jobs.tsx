import { Fragment, useState } from "react";
import { NavLink, Navigate, Route, Routes } from "react-router";
import type { BatchJob, BatchStatus, Job, JobStatus } from "../api/types";
import { useSession } from "../auth/session";
import { Confirm } from "../components/Confirm";
import { ErrorNotice, Loading, StatusBadge } from "../components/Notice";
import { Pager } from "../components/Pager";
import { saveBlob, saveJson } from "../lib/download";
import { formatJson, formatProgress, formatTime, shortId } from "../lib/format";
import { useLoad } from "../lib/useLoad";

const JOB_STATUSES: JobStatus[] = ["queued", "running", "succeeded", "failed", "cancelled"];
const JOB_LIVE = new Set<string>(["queued", "running"]);
const BATCH_STATUSES: BatchStatus[] = ["validating", "in_progress", "finalizing", "completed",
  "failed", "cancelling", "cancelled", "expired"];
const BATCH_ENDED = new Set<string>(["completed", "failed", "cancelled", "expired"]);
/** How often a page showing unfinished jobs reloads. */
const POLL_MS = 1500;

export function Jobs() {
  return (
    <section aria-labelledby="jobs-title">
      <h1 id="jobs-title">Jobs</h1>
      <nav className="tabs" aria-label="Kinds of job">
        <NavLink to="/jobs/predictions">Async predictions</NavLink>
        <NavLink to="/jobs/batch">Batch jobs</NavLink>
      </nav>
      <Routes>
        <Route path="predictions" element={<Predictions />} />
        <Route path="batch" element={<BatchJobs />} />
        <Route path="*" element={<Navigate to="/jobs/predictions" replace />} />
      </Routes>
    </section>
  );
}

/** One page of a server-side list: asks for one more than it shows, to know if a next
 * page exists. */
function paged<T>(rows: T[] | undefined, pageSize: number): { rows: T[]; hasNext: boolean } {
  const all = rows ?? [];
  return { rows: all.slice(0, pageSize), hasNext: all.length > pageSize };
}

function Predictions() {
  const { api } = useSession();
  const [status, setStatus] = useState<JobStatus | "">("");
  const [model, setModel] = useState("");
  const [page, setPage] = useState(0);
  const [pageSize, setPageSize] = useState(20);
  const [open, setOpen] = useState<string | null>(null);
  const [cancelling, setCancelling] = useState<Job | null>(null);
  const [error, setError] = useState<string | null>(null);

  const jobs = useLoad(
    () =>
      api.call<Job[]>((c) =>
        c.GET("/api/v1/predictions", {
          params: {
            query: {
              status: status || undefined,
              model: model.trim() || undefined,
              limit: pageSize + 1,
              offset: page * pageSize,
            },
          },
        }),
      ),
    [api, status, model, page, pageSize],
    { pollMs: POLL_MS, poll: (js) => js.some((j) => JOB_LIVE.has(j.status)) },
  );
  const { rows, hasNext } = paged(jobs.data, pageSize);

  async function download(job: Job) {
    setError(null);
    try {
      const full = await api.call<Job>((c) =>
        c.GET("/api/v1/predictions/{job_id}", { params: { path: { job_id: job.id } } }),
      );
      saveJson(full.result, `prediction-${job.id}.json`);
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    }
  }

  return (
    <div>
      <form className="filters" onSubmit={(e) => e.preventDefault()} aria-label="Filter predictions">
        <label>
          Status
          <select name="status" value={status}
            onChange={(e) => { setStatus(e.target.value as JobStatus | ""); setPage(0); }}>
            <option value="">Any</option>
            {JOB_STATUSES.map((s) => <option key={s} value={s}>{s}</option>)}
          </select>
        </label>
        <label>
          Model
          <input name="model" value={model} placeholder="Any model"
            onChange={(e) => { setModel(e.target.value); setPage(0); }} />
        </label>
        <button type="button" onClick={jobs.reload}>Refresh</button>
      </form>
      <p className="muted small">
        Queue one with <code>POST /api/v1/predictions</code>, or <code>Prefer: respond-async</code>{" "}
        on a V2 inference request; the list shows yours, newest first.
      </p>
      <ErrorNotice error={jobs.error} title="The predictions could not be listed" />
      <ErrorNotice error={error} />
      {jobs.loading && !jobs.data ? <Loading what="Loading predictions" /> : null}
      {jobs.data ? (
        <div className="table-wrap">
          <table className="table" aria-label="Async predictions">
            <thead>
              <tr>
                <th scope="col">Job</th>
                <th scope="col">Model</th>
                <th scope="col">Status</th>
                <th scope="col">Progress</th>
                <th scope="col">Attempts</th>
                <th scope="col">Created</th>
                <th scope="col">Finished</th>
                <th scope="col"><span className="sr-only">Actions</span></th>
              </tr>
            </thead>
            <tbody>
              {rows.map((j) => (
                <Fragment key={j.id}>
                  <tr data-job={j.id}>
                    <td><code title={j.id}>{shortId(j.id)}</code></td>
                    <td>{j.model}{j.version ? <span className="muted"> v{j.version}</span> : null}</td>
                    <td>
                      <StatusBadge status={j.status} />
                      {j.cancel_requested && JOB_LIVE.has(j.status) ? (
                        <span className="muted small"> cancelling</span>
                      ) : null}
                    </td>
                    <td>{formatProgress(j.progress)}</td>
                    <td>{j.attempts}/{j.max_attempts}</td>
                    <td>{formatTime(j.created_at)}</td>
                    <td>{formatTime(j.finished_at)}</td>
                    <td className="actions-cell">
                      {j.status === "succeeded" || j.status === "failed" ? (
                        <button type="button" className="small" aria-expanded={open === j.id}
                          onClick={() => setOpen(open === j.id ? null : j.id)}>
                          {j.status === "succeeded" ? "Result" : "Error"}
                        </button>
                      ) : null}
                      {j.status === "succeeded" ? (
                        <button type="button" className="small" onClick={() => download(j)}>
                          Download
                        </button>
                      ) : null}
                      {JOB_LIVE.has(j.status) && !j.cancel_requested ? (
                        <button type="button" className="small danger" onClick={() => setCancelling(j)}>
                          Cancel
                        </button>
                      ) : null}
                    </td>
                  </tr>
                  {open === j.id ? (
                    <tr className="details">
                      <td colSpan={8}>
                        <JobOutcome job={j} />
                      </td>
                    </tr>
                  ) : null}
                </Fragment>
              ))}
              {rows.length === 0 ? (
                <tr><td colSpan={8} className="muted">No predictions{status ? ` ${status}` : ""}.</td></tr>
              ) : null}
            </tbody>
          </table>
        </div>
      ) : null}
      <Pager label="Predictions" page={page} pageSize={pageSize} hasNext={hasNext}
        onPage={setPage} onPageSize={(n) => { setPageSize(n); setPage(0); }} />
      {cancelling ? (
        <Confirm
          title="Cancel this prediction?"
          action="Cancel prediction"
          onCancel={() => setCancelling(null)}
          onConfirm={async () => {
            await api.call((c) =>
              c.POST("/api/v1/predictions/{job_id}/cancel", {
                params: { path: { job_id: cancelling.id } },
              }),
            );
            setCancelling(null);
            jobs.reload();
          }}
        >
          <p>
            {cancelling.status === "queued"
              ? "It has not started: it will never run."
              : "It is running: it is aborted."}{" "}
            Job <code>{cancelling.id}</code> on {cancelling.model}.
          </p>
        </Confirm>
      ) : null}
    </div>
  );
}

/** A finished job's result (read whole: a large one is kept in the artifact store and only
 * the job's own page carries it) or its error. */
function JobOutcome({ job }: { job: Job }) {
  const { api } = useSession();
  const full = useLoad(
    () =>
      job.status === "succeeded" && (job.result === null || job.result_stored)
        ? api.call<Job>((c) =>
            c.GET("/api/v1/predictions/{job_id}", { params: { path: { job_id: job.id } } }),
          )
        : Promise.resolve(job),
    [api, job.id, job.status],
  );
  if (job.status === "failed") return <ErrorNotice error={job.error ?? "failed"} title="The job failed" />;
  if (full.error) return <ErrorNotice error={full.error} title="The result could not be read" />;
  if (!full.data) return <Loading what="Loading the result" />;
  return (
    <pre className="json" aria-label={`Result of ${job.id}`} data-testid="job-result">
      {formatJson(full.data.result)}
    </pre>
  );
}

function BatchJobs() {
  const { api } = useSession();
  const [status, setStatus] = useState<BatchStatus | "">("");
  const [page, setPage] = useState(0);
  const [pageSize, setPageSize] = useState(20);
  const [cancelling, setCancelling] = useState<BatchJob | null>(null);
  const [error, setError] = useState<string | null>(null);

  const batches = useLoad(
    () =>
      api.call<BatchJob[]>((c) =>
        c.GET("/api/v1/batch-jobs", {
          params: { query: { status: status || undefined, limit: pageSize + 1, offset: page * pageSize } },
        }),
      ),
    [api, status, page, pageSize],
    { pollMs: POLL_MS, poll: (bs) => bs.some((b) => !BATCH_ENDED.has(b.status)) },
  );
  const { rows, hasNext } = paged(batches.data, pageSize);

  async function download(b: BatchJob) {
    setError(null);
    try {
      const blob = await api.call<Blob>((c) =>
        c.GET("/api/v1/batch-jobs/{batch_id}/output", {
          params: { path: { batch_id: b.id } },
          parseAs: "blob",
        }),
      );
      saveBlob(blob, `batch-${b.id}-output.jsonl`);
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    }
  }

  return (
    <div>
      <form className="filters" onSubmit={(e) => e.preventDefault()} aria-label="Filter batch jobs">
        <label>
          Status
          <select name="batch-status" value={status}
            onChange={(e) => { setStatus(e.target.value as BatchStatus | ""); setPage(0); }}>
            <option value="">Any</option>
            {BATCH_STATUSES.map((s) => <option key={s} value={s}>{s.replace(/_/g, " ")}</option>)}
          </select>
        </label>
        <button type="button" onClick={batches.reload}>Refresh</button>
      </form>
      <p className="muted small">
        Start one with <code>POST /api/v1/batch-jobs</code> (a JSONL, CSV or Parquet file) or
        OpenAI's <code>/v1/batches</code>.
      </p>
      <ErrorNotice error={batches.error} title="The batch jobs could not be listed" />
      <ErrorNotice error={error} />
      {batches.loading && !batches.data ? <Loading what="Loading batch jobs" /> : null}
      {batches.data ? (
        <div className="table-wrap">
          <table className="table" aria-label="Batch jobs">
            <thead>
              <tr>
                <th scope="col">Job</th>
                <th scope="col">Model</th>
                <th scope="col">Status</th>
                <th scope="col">Progress</th>
                <th scope="col">Created</th>
                <th scope="col"><span className="sr-only">Actions</span></th>
              </tr>
            </thead>
            <tbody>
              {rows.map((b) => (
                <tr key={b.id} data-batch={b.id}>
                  <td><code title={b.id}>{shortId(b.id)}</code></td>
                  <td>{b.model}</td>
                  <td>
                    <StatusBadge status={b.status} />
                    {b.error ? <div className="small error-text">{b.error}</div> : null}
                  </td>
                  <td className="progress-cell">
                    <progress max={100} value={b.progress.percent}
                      aria-label={`${b.progress.percent}% done`} />
                    <div className="small muted">
                      {b.progress.done}/{b.progress.total} rows
                      {b.progress.failed ? `, ${b.progress.failed} failed` : ""}
                      {b.progress.eta_s !== null ? ` · about ${Math.ceil(b.progress.eta_s)} s left` : ""}
                    </div>
                  </td>
                  <td>{formatTime(b.created_at)}</td>
                  <td className="actions-cell">
                    {b.output ? (
                      <button type="button" className="small" onClick={() => download(b)}>
                        Download output
                      </button>
                    ) : null}
                    {!BATCH_ENDED.has(b.status) && b.status !== "cancelling" ? (
                      <button type="button" className="small danger" onClick={() => setCancelling(b)}>
                        Cancel
                      </button>
                    ) : null}
                  </td>
                </tr>
              ))}
              {rows.length === 0 ? (
                <tr><td colSpan={6} className="muted">No batch jobs{status ? ` ${status.replace(/_/g, " ")}` : ""}.</td></tr>
              ) : null}
            </tbody>
          </table>
        </div>
      ) : null}
      <Pager label="Batch jobs" page={page} pageSize={pageSize} hasNext={hasNext}
        onPage={setPage} onPageSize={(n) => { setPageSize(n); setPage(0); }} />
      {cancelling ? (
        <Confirm
          title="Cancel this batch job?"
          action="Cancel batch job"
          onCancel={() => setCancelling(null)}
          onConfirm={async () => {
            await api.call((c) =>
              c.POST("/api/v1/batch-jobs/{batch_id}/cancel", {
                params: { path: { batch_id: cancelling.id } },
              }),
            );
            setCancelling(null);
            batches.reload();
          }}
        >
          <p>The rows done so far are kept as its output; the rest do not run.</p>
        </Confirm>
      ) : null}
    </div>
  );
}
