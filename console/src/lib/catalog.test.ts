import { describe, expect, it } from "vitest";
import type { Model } from "../api/types";
import { NO_FILTER, choices, matches, modelStatus } from "./catalog";

function model(name: string, fields: Partial<Model> = {}): Model {
  return {
    id: `id-${name}`, name, description: "", framework: "", model_type: "", task_type: "",
    tags: [], visibility: "private", owner_id: "u-alice", system: false, created_at: null,
    updated_at: null, ...fields,
  };
}

const fraud = model("fraud", { framework: "sklearn", task_type: "classification", tags: ["finance"],
  description: "Card payments" });
const sentiment = model("sentiment", { framework: "onnx", tags: ["nlp"], owner_id: "u-bob",
  visibility: "public" });
const simple = model("simple", { framework: "onnx", system: true, owner_id: null });
const me = { myId: "u-alice", status: "" };

describe("the catalog's filters", () => {
  it("searches name, description and tags, ignoring case", () => {
    const f = { ...NO_FILTER, text: "PAYMENTS" };
    expect([fraud, sentiment, simple].filter((m) => matches(m, f, me))).toEqual([fraud]);
    expect(matches(sentiment, { ...NO_FILTER, text: "nlp" }, me)).toBe(true);
  });

  it("filters by framework, task and tag exactly", () => {
    const onnx = [fraud, sentiment, simple].filter((m) =>
      matches(m, { ...NO_FILTER, framework: "onnx" }, me));
    expect(onnx.map((m) => m.name)).toEqual(["sentiment", "simple"]);
    expect(matches(fraud, { ...NO_FILTER, task: "classification" }, me)).toBe(true);
    expect(matches(fraud, { ...NO_FILTER, tag: "fin" }, me)).toBe(false);
  });

  it("filters by owner: mine, the repository's, others', or one user", () => {
    const owner = (o: string) =>
      [fraud, sentiment, simple].filter((m) => matches(m, { ...NO_FILTER, owner: o }, me)).map((m) => m.name);
    expect(owner("mine")).toEqual(["fraud"]);
    expect(owner("repository")).toEqual(["simple"]);
    expect(owner("others")).toEqual(["sentiment"]);
    expect(owner("u-bob")).toEqual(["sentiment"]);
  });

  it("filters by serving status", () => {
    expect(matches(fraud, { ...NO_FILTER, status: "ready" }, { myId: "u-alice", status: "ready" })).toBe(true);
    expect(matches(fraud, { ...NO_FILTER, status: "ready" }, { myId: "u-alice", status: "not deployed" })).toBe(false);
  });
});

describe("a model's status", () => {
  it("is ready when any version is served", () => {
    const index = [
      { name: "a", version: "1", state: "UNAVAILABLE", reason: "failed" },
      { name: "a", version: "2", state: "READY", reason: "" },
      { name: "b", version: "1", state: "LOADING", reason: "" },
    ];
    expect(modelStatus("a", index)).toBe("ready");
    expect(modelStatus("b", index)).toBe("not ready");
    expect(modelStatus("c", index)).toBe("not deployed");
  });
});

it("offers each distinct value once, sorted", () => {
  expect(choices([fraud, sentiment, simple], (m) => [m.framework])).toEqual(["onnx", "sklearn"]);
  expect(choices([fraud, sentiment], (m) => m.tags)).toEqual(["finance", "nlp"]);
});
