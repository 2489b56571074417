import { screen, within } from "@testing-library/react";
import { expect, it } from "vitest";
import type { Job } from "../api/types";
import { FakeServer, signedIn } from "../test/fakeServer";

function job(id: string, status: Job["status"], fields: Partial<Job> = {}): Job {
  return {
    id, model: "iris", version: null, api: "v2", status, priority: 0, attempts: 0,
    max_attempts: 3, created_at: "2026-01-02T00:00:00+00:00", started_at: null,
    finished_at: null, result: null, result_stored: false, error: null, idempotency_key: null,
    cancel_requested: false, progress: null, webhook: null, webhook_events: null, ...fields,
  };
}

it("shows a result, cancels a queued job, and pages with limit and offset", async () => {
  const done = job("j-done", "succeeded", { result: { outputs: [{ name: "y", data: [42] }] } });
  let queued = job("j-queued", "queued");
  const server = new FakeServer()
    .on("GET /api/v1/predictions", (_r, url) =>
      ({ body: url.searchParams.get("offset") === "0" ? [queued, done] : [] }))
    .on("POST /api/v1/predictions/j-queued/cancel", () => {
      queued = { ...queued, status: "cancelled" };
      return { body: queued };
    });
  const { user } = await signedIn(server, "/jobs");
  const table = await screen.findByRole("table", { name: "Async predictions" });
  expect(server.calls("GET", "/api/v1/predictions")[0]?.search).toBe("?limit=21&offset=0");
  const doneRow = table.querySelector('tr[data-job="j-done"]') as HTMLElement;
  await user.click(within(doneRow).getByRole("button", { name: "Result" }));
  expect(screen.getByTestId("job-result").textContent).toContain("42");

  const queuedRow = table.querySelector('tr[data-job="j-queued"]') as HTMLElement;
  await user.click(within(queuedRow).getByRole("button", { name: "Cancel" }));
  expect(screen.getByRole("dialog").textContent).toContain("it will never run");
  await user.click(within(screen.getByRole("dialog")).getByRole("button", { name: "Cancel prediction" }));
  expect(await within(queuedRow).findByText("cancelled")).toBeTruthy();
  expect(server.calls("POST", "/api/v1/predictions/j-queued/cancel")).toHaveLength(1);

  await user.selectOptions(screen.getByLabelText("Status"), "failed");
  const last = server.calls("GET", "/api/v1/predictions").at(-1);
  expect(last?.search).toBe("?status=failed&limit=21&offset=0");
});

it("shows batch jobs with their progress", async () => {
  const server = new FakeServer().on("GET /api/v1/batch-jobs", {
    body: [{
      id: "b1", model: "iris", version: null, status: "in_progress", format: "jsonl", api: "v2",
      endpoint: null, error: null, metadata: null, created_at: null, completed_at: null,
      failed_at: null, cancelled_at: null, output: null,
      progress: { total: 200, done: 50, succeeded: 49, failed: 1, percent: 25, rows_per_s: 10, eta_s: 15 },
    }],
  });
  await signedIn(server, "/jobs/batch");
  const table = await screen.findByRole("table", { name: "Batch jobs" });
  expect(table.textContent).toContain("50/200 rows, 1 failed");
  expect(within(table).getByRole("progressbar").getAttribute("value")).toBe("25");
  expect(within(table).getByRole("button", { name: "Cancel" })).toBeTruthy();
});
