import { screen, waitFor, within } from "@testing-library/react";
import { expect, it } from "vitest";
import type { Model } from "../api/types";
import { FakeServer, signedIn } from "../test/fakeServer";

function model(name: string, fields: Partial<Model> = {}): Model {
  return {
    id: `id-${name}`, name, description: "", framework: "onnx", model_type: "", task_type: "",
    tags: [], visibility: "private", owner_id: "u-alice", system: false, created_at: null,
    updated_at: null, ...fields,
  };
}

function rows(): string[] {
  const table = screen.getByRole("table", { name: "Models" });
  return [...table.querySelectorAll("tbody tr[data-model]")].map((r) => (r as HTMLElement).dataset.model ?? "");
}

it("lists the models with their status and filters them", async () => {
  const models = [
    model("fraud", { framework: "sklearn", tags: ["finance"] }),
    model("sentiment", { owner_id: "u-bob", visibility: "public", tags: ["nlp"] }),
    model("simple", { system: true, owner_id: null }),
  ];
  const server = new FakeServer()
    .on("GET /api/v1/models", { body: models })
    .on("GET /v2/repository/index", { body: [{ name: "simple", version: "1", state: "READY", reason: "" }] });
  const { user } = await signedIn(server, "/models");
  await screen.findByRole("table", { name: "Models" });
  expect(rows()).toEqual(["fraud", "sentiment", "simple"]);
  const simple = screen.getByRole("link", { name: "simple" }).closest("tr") as HTMLElement;
  expect(within(simple).getByText("ready")).toBeTruthy();
  expect(within(simple).getByText("repository")).toBeTruthy();

  await user.selectOptions(screen.getByLabelText("Framework"), "onnx");
  expect(rows()).toEqual(["sentiment", "simple"]);
  await user.selectOptions(screen.getByLabelText("Owner"), "others");
  expect(rows()).toEqual(["sentiment"]);
  await user.click(screen.getByRole("button", { name: "Clear filters" }));
  await user.type(screen.getByLabelText("Search"), "fin");
  expect(rows()).toEqual(["fraud"]);
  expect(screen.getByText("1 of 3 models match")).toBeTruthy();
});

it("pages a long catalog", async () => {
  const models = Array.from({ length: 45 }, (_, i) => model(`m${String(i).padStart(2, "0")}`));
  const server = new FakeServer().on("GET /api/v1/models", { body: models }).on("GET /v2/repository/index", { body: [] });
  const { user } = await signedIn(server, "/models");
  await screen.findByRole("table", { name: "Models" });
  expect(rows()).toHaveLength(20);
  expect(screen.getByText("1–20 of 45")).toBeTruthy();
  await user.click(screen.getByRole("button", { name: "Next →" }));
  await user.click(screen.getByRole("button", { name: "Next →" }));
  expect(rows()).toEqual(["m40", "m41", "m42", "m43", "m44"]);
  expect((screen.getByRole("button", { name: "Next →" }) as HTMLButtonElement).disabled).toBe(true);
});

it("shows a failed listing in words", async () => {
  const server = new FakeServer()
    .on("GET /api/v1/models", { status: 503, body: { error: "the registry database is unavailable" } })
    .on("GET /v2/repository/index", { body: [] });
  await signedIn(server, "/models");
  await waitFor(() => expect(screen.getByRole("alert").textContent).toContain("the registry database is unavailable"));
});
