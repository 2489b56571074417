import { screen, within } from "@testing-library/react";
import { expect, it } from "vitest";
import type { Model, ModelVersion } from "../api/types";
import { FakeServer, signedIn } from "../test/fakeServer";

const MODEL: Model = {
  id: "m1", name: "iris", description: "Flowers", framework: "sklearn", model_type: "",
  task_type: "classification", tags: ["demo"], visibility: "private", owner_id: "u-alice",
  system: false, created_at: null, updated_at: null,
};
const VERSION: ModelVersion = {
  id: "v1", model: "iris", version: 1, status: "ready", reason: null, format: "skops",
  runtime: "sklearn", sha256: "ab".repeat(32), size_bytes: 9216, source: "upload:model.skops",
  inputs: [{ name: "input", datatype: "FP32", shape: [-1, 4] }],
  outputs: [{ name: "label", datatype: "INT64", shape: [-1] }],
  sample_input: { inputs: [] }, sample_output: null, created_at: null, created_by: "u-alice",
};

it("shows the versions, edits the details and deletes only once the name is typed", async () => {
  const server = new FakeServer()
    .on("GET /api/v1/models/iris", { body: MODEL })
    .on("GET /api/v1/models/iris/versions", { body: [VERSION] })
    .on("GET /v2/repository/index", { body: [] })
    .on("PATCH /api/v1/models/iris", { body: { ...MODEL, tags: ["demo", "flowers"] } })
    .on("DELETE /api/v1/models/iris", { body: MODEL })
    .on("GET /api/v1/models", { body: [] });
  const { user } = await signedIn(server, "/models/iris");
  const version = await screen.findByRole("article", { name: "Version 1" });
  expect(version.textContent).toContain("ab".repeat(32));
  expect(within(version).getByRole("table", { name: "Inputs" }).textContent).toContain("FP32");
  expect(screen.getByRole("table", { name: "Versions" }).textContent).toContain("9.0 KiB");

  await user.click(screen.getByRole("button", { name: "Edit details" }));
  const tags = screen.getByLabelText(/Tags/);
  await user.clear(tags);
  await user.type(tags, "demo, flowers");
  await user.click(screen.getByRole("button", { name: "Save" }));
  expect(server.calls("PATCH", "/api/v1/models/iris")[0]?.body).toMatchObject({ tags: ["demo", "flowers"] });

  await user.click(await screen.findByRole("button", { name: "Delete model" }));
  const dialog = screen.getByRole("dialog");
  const confirm = within(dialog).getByRole("button", { name: "Delete model" }) as HTMLButtonElement;
  expect(confirm.disabled).toBe(true);
  await user.type(within(dialog).getByLabelText(/to confirm/), "iris");
  expect(confirm.disabled).toBe(false);
  await user.click(confirm);
  expect(await screen.findByRole("heading", { name: "Models" })).toBeTruthy();
  expect(server.calls("DELETE", "/api/v1/models/iris")).toHaveLength(1);
});

it("says a model is not found in the server's words", async () => {
  const server = new FakeServer()
    .on("GET /api/v1/models/secret", { status: 404, body: { error: "model 'secret' not found" } })
    .on("GET /api/v1/models/secret/versions", { status: 404, body: { error: "model 'secret' not found" } })
    .on("GET /v2/repository/index", { body: [] });
  await signedIn(server, "/models/secret");
  expect((await screen.findByRole("alert")).textContent).toContain("model 'secret' not found");
});
