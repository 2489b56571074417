import { describe, expect, it, vi } from "vitest";
import { FakeServer } from "../test/fakeServer";
import { Api, ApiError, apiBase, errorMessage } from "./client";

describe("error messages", () => {
  it("are the server's words in each dialect", () => {
    expect(errorMessage(404, { error: "model 'x' not found" })).toBe("model 'x' not found");
    expect(errorMessage(400, { error: { message: "bad prompt", type: "invalid_request_error" } }))
      .toBe("bad prompt");
    expect(errorMessage(422, { detail: "nope" })).toBe("nope");
  });

  it("fall back to the status when the body says nothing", () => {
    expect(errorMessage(502, "<html>bad gateway</html>", "Bad Gateway"))
      .toBe("The server answered 502 Bad Gateway.");
    expect(errorMessage(500, null)).toBe("The server answered 500.");
  });
});

it("finds the API beside the console's folder, under any prefix", () => {
  expect(apiBase("http://h:8000/console/#/models")).toBe("http://h:8000");
  expect(apiBase("https://h/ml/inferd/console/index.html#/keys")).toBe("https://h/ml/inferd");
});

describe("the client", () => {
  it("sends the credential as a bearer header, never otherwise", async () => {
    const server = new FakeServer().on("GET /api/v1/models", { body: [] });
    const api = new Api("http://inferd", server.fetch);
    await api.call((c) => c.GET("/api/v1/models"));
    api.setCredential({ kind: "key", key: "inferd_abc_def" });
    await api.call((c) => c.GET("/api/v1/models"));
    expect(server.sent.map((s) => s.authorization)).toEqual([null, "Bearer inferd_abc_def"]);
  });

  it("refreshes an expired access token once and retries", async () => {
    const server = new FakeServer()
      .on("GET /api/v1/keys", (r) =>
        r.headers.get("authorization") === "Bearer new-access"
          ? { body: [] }
          : { status: 401, body: { error: "token expired" } })
      .on("POST /api/v1/auth/refresh", {
        body: { access_token: "new-access", refresh_token: "new-refresh", token_type: "bearer", expires_in: 60 },
      });
    const api = new Api("http://inferd", server.fetch);
    api.setCredential({ kind: "token", access: "old-access", refresh: "old-refresh" });
    await expect(api.call((c) => c.GET("/api/v1/keys"))).resolves.toEqual([]);
    expect(server.calls("POST", "/api/v1/auth/refresh")[0]?.body).toEqual({ refresh_token: "old-refresh" });
    expect(server.calls("GET", "/api/v1/keys")).toHaveLength(2);
  });

  it("ends the sign-in when the credential stops working, saying why", async () => {
    const server = new FakeServer().on("GET /api/v1/keys", { status: 401, body: { error: "key revoked" } });
    const api = new Api("http://inferd", server.fetch);
    const expired = vi.fn();
    api.onExpired = expired;
    api.setCredential({ kind: "key", key: "inferd_abc_def" });
    const error = await api.call((c) => c.GET("/api/v1/keys")).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ApiError);
    expect((error as ApiError).status).toBe(401);
    expect(api.signedIn).toBe(false);
    expect(expired.mock.calls[0]?.[0]).toContain("key revoked");
  });

  it("says so when the server cannot be reached", async () => {
    const api = new Api("http://inferd", () => Promise.reject(new TypeError("Failed to fetch")));
    await expect(api.call((c) => c.GET("/api/v1/models"))).rejects.toThrow(
      "The server could not be reached (Failed to fetch).",
    );
  });
});
