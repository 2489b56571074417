// The catalog's search and filters: pure, so they are tested without a browser.
import type { Model, RepositoryEntry } from "../api/types";

export interface CatalogFilter {
  text: string;
  framework: string;
  task: string;
  tag: string;
  /** "" (anyone), "mine", "repository", "others", or an owner's user id. */
  owner: string;
  /** "" (any), "ready", "not ready", "not deployed". */
  status: string;
}

export const NO_FILTER: CatalogFilter = {
  text: "",
  framework: "",
  task: "",
  tag: "",
  owner: "",
  status: "",
};

/** A model's serving status from the repository index: "ready" when a version is served,
 * "not ready" when the server knows it but serves none (loading, failed), else
 * "not deployed". */
export function modelStatus(name: string, index: readonly RepositoryEntry[]): string {
  const entries = index.filter((e) => e.name === name);
  if (entries.length === 0) return "not deployed";
  return entries.some((e) => e.state.toUpperCase() === "READY") ? "ready" : "not ready";
}

export function ownerKind(model: Model, myId: string): "mine" | "repository" | "others" {
  if (model.system) return "repository";
  return model.owner_id === myId ? "mine" : "others";
}

export function matches(
  model: Model,
  filter: CatalogFilter,
  context: { myId: string; status: string },
): boolean {
  const text = filter.text.trim().toLowerCase();
  if (text) {
    const haystack = [model.name, model.description, model.framework, model.task_type,
      model.model_type, ...model.tags].join("\n").toLowerCase();
    if (!haystack.includes(text)) return false;
  }
  if (filter.framework && model.framework !== filter.framework) return false;
  if (filter.task && model.task_type !== filter.task) return false;
  if (filter.tag && !model.tags.includes(filter.tag)) return false;
  if (filter.owner) {
    const kind = ownerKind(model, context.myId);
    if (["mine", "repository", "others"].includes(filter.owner)) {
      if (kind !== filter.owner) return false;
    } else if (model.owner_id !== filter.owner) {
      return false;
    }
  }
  if (filter.status && context.status !== filter.status) return false;
  return true;
}

/** The distinct non-empty values of a field across the models, sorted: a filter's choices. */
export function choices(models: readonly Model[], pick: (m: Model) => string[]): string[] {
  const seen = new Set<string>();
  for (const m of models) for (const v of pick(m)) if (v) seen.add(v);
  return [...seen].sort((a, b) => a.localeCompare(b));
}
