// The one way the console talks to inferd: its public HTTP API, typed by the server's OpenAPI
// document (schema.d.ts). Credentials live in this object's memory only — never in
// localStorage, sessionStorage or a cookie — and go out as `Authorization: Bearer`, so no
// request is authenticated by a cookie and cross-site requests cannot act for the user.
import createClient, { type Client } from "openapi-fetch";
import type { paths } from "./schema";
import type { TokenPair } from "./types";

/** What the user signed in with: a token pair from the password login, or an API key. */
export type Credential =
  | { kind: "token"; access: string; refresh: string }
  | { kind: "key"; key: string };

/** A refusal or failure, with the server's own message when it sent one. */
export class ApiError extends Error {
  readonly status: number;

  constructor(status: number, message: string) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

/** The message of an error body: inferd's `{"error": msg}`, the OpenAI dialect's
 * `{"error": {"message"}}`, or FastAPI's `{"detail"}`; else the status line. */
export function errorMessage(status: number, body: unknown, statusText = ""): string {
  if (body && typeof body === "object") {
    const doc = body as { error?: unknown; detail?: unknown };
    if (typeof doc.error === "string" && doc.error) return doc.error;
    if (doc.error && typeof doc.error === "object") {
      const message = (doc.error as { message?: unknown }).message;
      if (typeof message === "string" && message) return message;
    }
    if (typeof doc.detail === "string" && doc.detail) return doc.detail;
  }
  if (typeof body === "string" && body.trim() && body.length < 300 && !body.includes("<")) {
    return body.trim();
  }
  return `The server answered ${status}${statusText ? ` ${statusText}` : ""}.`;
}

/** The server's root, from where the console is served (`<root>/console/`): API paths are
 * relative to it, so a reverse proxy may serve inferd under a prefix. */
export function apiBase(href: string = window.location.href): string {
  return new URL("../", href).href.replace(/\/$/, "");
}

interface Outcome {
  data?: unknown;
  error?: unknown;
  response: Response;
}

export type Paths = Client<paths>;

export class Api {
  readonly client: Paths;
  private credential: Credential | null = null;
  private refreshing: Promise<boolean> | null = null;
  /** Called when the credential stopped working (expired session, revoked key). */
  onExpired: (message: string) => void = () => {};

  constructor(baseUrl: string = apiBase(), fetchImpl?: (request: Request) => Promise<Response>) {
    this.client = createClient<paths>({
      baseUrl,
      // the browser's fetch, looked up per call (tests replace it)
      fetch: fetchImpl ?? ((request: Request) => globalThis.fetch(request)),
    });
    this.client.use({
      onRequest: ({ request }) => {
        const bearer = this.bearer();
        if (bearer) request.headers.set("Authorization", `Bearer ${bearer}`);
        return request;
      },
    });
  }

  get signedIn(): boolean {
    return this.credential !== null;
  }

  get credentialKind(): Credential["kind"] | null {
    return this.credential?.kind ?? null;
  }

  setCredential(credential: Credential | null): void {
    this.credential = credential;
  }

  private bearer(): string | null {
    const c = this.credential;
    if (c === null) return null;
    return c.kind === "token" ? c.access : c.key;
  }

  /** Run one call; a 401 on a password session refreshes the tokens once and retries.
   * Resolves to the answer's body, rejects with an `ApiError` naming what went wrong. */
  async call<T>(request: (client: Paths) => Promise<Outcome>): Promise<T> {
    let outcome = await this.send(request);
    if (outcome.response.status === 401 && this.credential?.kind === "token") {
      if (await this.refresh()) outcome = await this.send(request);
    }
    const { response } = outcome;
    if (!response.ok) {
      const error = new ApiError(
        response.status,
        errorMessage(response.status, outcome.error, response.statusText),
      );
      if (response.status === 401 && this.credential !== null) {
        this.credential = null;
        this.onExpired(
          `${error.message} — your sign-in is no longer valid; sign in again.`,
        );
      }
      throw error;
    }
    return outcome.data as T;
  }

  private async send(request: (client: Paths) => Promise<Outcome>): Promise<Outcome> {
    try {
      return await request(this.client);
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      throw new ApiError(0, `The server could not be reached (${why}).`);
    }
  }

  private refresh(): Promise<boolean> {
    const c = this.credential;
    if (c?.kind !== "token") return Promise.resolve(false);
    this.refreshing ??= (async () => {
      try {
        const r = await this.client.POST("/api/v1/auth/refresh", {
          body: { refresh_token: c.refresh },
        });
        if (!r.response.ok) return false;
        const pair = r.data as TokenPair;
        if (this.credential === c) {
          this.credential = { kind: "token", access: pair.access_token, refresh: pair.refresh_token };
        }
        return true;
      } catch {
        return false;
      } finally {
        this.refreshing = null;
      }
    })();
    return this.refreshing;
  }
}
