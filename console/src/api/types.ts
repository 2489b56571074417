// The shapes the management API answers with. Request bodies, parameters and enums come from
// the server's OpenAPI document (schema.d.ts, generated); its answers declare no schema, so
// they are written here after src/inferd/api/admin/views.py, control/jobs.py `job_view` and
// api/admin/batches.py, and the end-to-end tests read them from a real server.
import type { components } from "./schema";

type Schemas = components["schemas"];
export type Role = Schemas["Role"];
export type Scope = Schemas["Scope"];
export type JobStatus = Schemas["JobStatus"];

export interface User {
  id: string;
  username: string;
  role: Role;
  trusted: boolean;
  disabled: boolean;
  created_at: string | null;
  rpm_limit: number | null;
  concurrency_limit: number | null;
  storage_quota_bytes: number | null;
}

/** `GET /api/v1/auth/me`: the user, and what the credential used may do. */
export interface Me extends User {
  scopes: Scope[];
  via: string;
}

export interface TokenPair {
  access_token: string;
  refresh_token: string;
  token_type: string;
  expires_in: number;
}

export interface ApiKey {
  id: string;
  user_id: string;
  name: string;
  prefix: string;
  scopes: Scope[];
  created_at: string | null;
  expires_at: string | null;
  revoked_at: string | null;
  last_used_at: string | null;
}

/** A key as `POST /api/v1/keys` answers: with its secret, shown this once. */
export interface NewApiKey extends ApiKey {
  key: string;
}

export interface Model {
  id: string;
  name: string;
  description: string;
  framework: string;
  model_type: string;
  task_type: string;
  tags: string[];
  visibility: "private" | "public";
  owner_id: string | null;
  system: boolean;
  created_at: string | null;
  updated_at: string | null;
}

export interface TensorSpec {
  name: string;
  datatype: string;
  shape: number[];
  optional?: boolean;
}

export interface ModelVersion {
  id: string;
  model: string;
  version: number;
  status: "importing" | "ready" | "failed";
  reason: string | null;
  format: string | null;
  runtime: string | null;
  sha256: string | null;
  size_bytes: number | null;
  source: string | null;
  inputs: TensorSpec[];
  outputs: TensorSpec[];
  sample_input: Record<string, unknown> | null;
  sample_output: Record<string, unknown> | null;
  created_at: string | null;
  created_by: string | null;
}

/** One row of `GET /v2/repository/index`: a served (or failed) version of a model. */
export interface RepositoryEntry {
  name: string;
  version: string;
  state: string;
  reason: string;
}

export interface Job {
  id: string;
  model: string;
  version: string | number | null;
  api: string;
  status: JobStatus;
  priority: number;
  attempts: number;
  max_attempts: number;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  result: unknown;
  result_stored: boolean;
  error: string | null;
  idempotency_key: string | null;
  cancel_requested: boolean;
  progress: Record<string, unknown> | null;
  webhook: string | null;
  webhook_events: string[] | null;
}

export type BatchStatus = Schemas["BatchStatus"];

export interface BatchProgress {
  total: number;
  done: number;
  succeeded: number;
  failed: number;
  percent: number;
  rows_per_s: number | null;
  eta_s: number | null;
}

export interface BatchJob {
  id: string;
  model: string;
  version: string | number | null;
  status: BatchStatus;
  format: string;
  api: string;
  endpoint: string | null;
  progress: BatchProgress;
  error: string | null;
  metadata: Record<string, unknown> | null;
  created_at: string | null;
  completed_at: string | null;
  failed_at: string | null;
  cancelled_at: string | null;
  output: string | null;
}

export interface AuditEntry {
  id: string;
  at: string;
  actor_id: string | null;
  actor: string | null;
  action: string;
  target_type: string | null;
  target_id: string | null;
  outcome: string;
  ip: string | null;
  detail: Record<string, unknown> | null;
}
