import { screen } from "@testing-library/react";
import { describe, expect, it } from "vitest";
import { ALICE, FakeServer, renderConsole, signedIn } from "../test/fakeServer";

describe("signing in", () => {
  it("with a password shows who I am and my role, then signs out", async () => {
    const server = new FakeServer().on("GET /api/v1/models", { body: [] }).on("GET /v2/repository/index", { body: [] });
    const { user } = await signedIn(server);
    expect(screen.getByTestId("whoami").textContent).toContain("alice");
    expect(screen.getByTestId("whoami").textContent).toContain("member");
    expect(server.calls("POST", "/api/v1/auth/login")[0]?.body).toEqual({ username: "alice", password: "secret" });
    expect(server.calls("GET", "/api/v1/auth/me")[0]?.authorization).toBe("Bearer eyJ.access.1");
    // members see no admin pages
    expect(screen.queryByRole("link", { name: "Users" })).toBeNull();
    // nothing is kept in storage
    expect(window.localStorage.length + window.sessionStorage.length).toBe(0);
    await user.click(screen.getByRole("button", { name: "Sign out" }));
    expect(await screen.findByRole("heading", { name: "Sign in to inferd" })).toBeTruthy();
  });

  it("shows the server's refusal in words", async () => {
    const server = new FakeServer().on("POST /api/v1/auth/login", {
      status: 401,
      body: { error: "invalid username or password" },
    });
    const { user } = renderConsole(server);
    await user.type(screen.getByLabelText("Username"), "alice");
    await user.type(screen.getByLabelText("Password"), "wrong");
    await user.click(screen.getByRole("button", { name: "Sign in" }));
    expect((await screen.findByRole("alert")).textContent).toBe("invalid username or password");
  });

  it("with an API key, which goes out as a bearer credential", async () => {
    const server = new FakeServer()
      .on("GET /api/v1/auth/me", { body: { ...ALICE, via: "key" } })
      .on("GET /api/v1/models", { body: [] })
      .on("GET /v2/repository/index", { body: [] });
    const { user } = renderConsole(server);
    await user.click(screen.getByLabelText("API key"));
    await user.type(screen.getByLabelText("Key"), "inferd_abcd1234_secret");
    await user.click(screen.getByRole("button", { name: "Sign in" }));
    expect((await screen.findByTestId("whoami")).textContent).toContain("API key");
    expect(server.calls("GET", "/api/v1/auth/me")[0]?.authorization).toBe("Bearer inferd_abcd1234_secret");
  });

  it("a key that is refused leaves the user signed out, told why", async () => {
    const server = new FakeServer().on("GET /api/v1/auth/me", { status: 401, body: { error: "unknown API key" } });
    const { user } = renderConsole(server);
    await user.click(screen.getByLabelText("API key"));
    await user.type(screen.getByLabelText("Key"), "inferd_nope_nope");
    await user.click(screen.getByRole("button", { name: "Sign in" }));
    expect((await screen.findByRole("alert")).textContent).toBe("unknown API key");
  });
});
