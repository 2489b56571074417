// A fake inferd for component tests: answers the console's calls from a table of routes and
// records every request, so a test says what the server answers and checks what was asked.
import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { MemoryRouter } from "react-router";
import { Api } from "../api/client";
import type { Me } from "../api/types";
import { App } from "../App";
import { SessionProvider } from "../auth/session";

export interface Answer {
  status?: number;
  body?: unknown;
}

export type Handler = (request: Request, url: URL) => Answer | Promise<Answer>;

export interface Sent {
  method: string;
  path: string;
  search: string;
  authorization: string | null;
  body: unknown;
}

export class FakeServer {
  readonly sent: Sent[] = [];
  private readonly routes = new Map<string, Handler>();

  on(route: string, handler: Handler | Answer): this {
    this.routes.set(route, typeof handler === "function" ? handler : () => handler);
    return this;
  }

  fetch = async (request: Request): Promise<Response> => {
    const url = new URL(request.url);
    const text = request.method === "GET" ? "" : await request.clone().text();
    this.sent.push({
      method: request.method,
      path: url.pathname,
      search: url.search,
      authorization: request.headers.get("authorization"),
      body: text ? JSON.parse(text) : undefined,
    });
    const handler = this.routes.get(`${request.method} ${url.pathname}`);
    const answer = handler ? await handler(request, url) : { status: 404, body: { error: "Not Found" } };
    return new Response(JSON.stringify(answer.body ?? null), {
      status: answer.status ?? 200,
      headers: { "content-type": "application/json" },
    });
  };

  /** A route's answer unless the test gave one. */
  fallback(route: string, handler: Handler | Answer): this {
    return this.routes.has(route) ? this : this.on(route, handler);
  }

  calls(method: string, path: string): Sent[] {
    return this.sent.filter((s) => s.method === method && s.path === path);
  }
}

export const ALICE: Me = {
  id: "u-alice",
  username: "alice",
  role: "member",
  trusted: false,
  disabled: false,
  created_at: "2026-01-01T00:00:00+00:00",
  rpm_limit: null,
  concurrency_limit: null,
  storage_quota_bytes: null,
  scopes: ["infer", "manage"],
  via: "token",
};

/** The console at `path` on a fake server that lets `me` sign in with any password. */
export function renderConsole(server: FakeServer, path = "/", me: Me = ALICE) {
  server
    .fallback("POST /api/v1/auth/login", () => ({
      body: { access_token: "eyJ.access.1", refresh_token: "eyJ.refresh.1", token_type: "bearer", expires_in: 900 },
    }))
    .fallback("GET /api/v1/auth/me", (request) =>
      request.headers.get("authorization") ? { body: me } : { status: 401, body: { error: "credentials required" } },
    );
  const api = new Api("http://inferd", server.fetch);
  const user = userEvent.setup();
  render(
    <SessionProvider api={api}>
      <MemoryRouter initialEntries={[path]}>
        <App />
      </MemoryRouter>
    </SessionProvider>,
  );
  return { api, user };
}

/** Render the console and sign in through its form. */
export async function signedIn(server: FakeServer, path = "/", me: Me = ALICE) {
  const rendered = renderConsole(server, path, me);
  await rendered.user.type(screen.getByLabelText("Username"), me.username);
  await rendered.user.type(screen.getByLabelText("Password"), "secret");
  await rendered.user.click(screen.getByRole("button", { name: "Sign in" }));
  await screen.findByTestId("whoami");
  return rendered;
}
