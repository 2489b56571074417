import { screen, within } from "@testing-library/react";
import { expect, it } from "vitest";
import type { ApiKey } from "../api/types";
import { FakeServer, signedIn } from "../test/fakeServer";

const KEY: ApiKey = {
  id: "k1", user_id: "u-alice", name: "ci", prefix: "inferd_abcd1234", scopes: ["infer"],
  created_at: "2026-01-02T00:00:00+00:00", expires_at: null, revoked_at: null, last_used_at: null,
};

it("creates a key, shows its secret once, and revokes a key after asking", async () => {
  let keys: ApiKey[] = [];
  const server = new FakeServer()
    .on("GET /api/v1/keys", () => ({ body: keys }))
    .on("POST /api/v1/keys", () => {
      keys = [KEY];
      return { status: 201, body: { ...KEY, key: "inferd_abcd1234_TheSecretPart" } };
    })
    .on("DELETE /api/v1/keys/k1", () => {
      keys = [{ ...KEY, revoked_at: "2026-01-03T00:00:00+00:00" }];
      return { body: keys[0] };
    });
  const { user } = await signedIn(server, "/keys");
  await user.type(screen.getByLabelText("Name"), "ci");
  await user.click(screen.getByRole("button", { name: "Create key" }));
  expect((await screen.findByTestId("new-key")).textContent).toBe("inferd_abcd1234_TheSecretPart");
  expect(server.calls("POST", "/api/v1/keys")[0]?.body).toEqual({ name: "ci", scopes: ["infer"], expires_at: null });
  await user.click(screen.getByRole("button", { name: "I have stored it" }));
  expect(screen.queryByTestId("new-key")).toBeNull();
  expect(document.body.textContent).not.toContain("TheSecretPart");

  const row = (await screen.findByRole("button", { name: "Revoke ci" })).closest("tr") as HTMLElement;
  expect(within(row).getByText("active")).toBeTruthy();
  await user.click(screen.getByRole("button", { name: "Revoke ci" }));
  const dialog = screen.getByRole("dialog");
  await user.click(within(dialog).getByRole("button", { name: "Cancel" }));
  expect(server.calls("DELETE", "/api/v1/keys/k1")).toHaveLength(0);
  await user.click(screen.getByRole("button", { name: "Revoke ci" }));
  await user.click(within(screen.getByRole("dialog")).getByRole("button", { name: "Revoke key" }));
  expect(await screen.findByText("revoked")).toBeTruthy();
  expect(server.calls("DELETE", "/api/v1/keys/k1")).toHaveLength(1);
});

it("shows why a key was refused", async () => {
  const server = new FakeServer()
    .on("GET /api/v1/keys", { body: [] })
    .on("POST /api/v1/keys", { status: 403, body: { error: "scopes: a key cannot hold admin, which you lack" } });
  const { user } = await signedIn(server, "/keys");
  await user.type(screen.getByLabelText("Name"), "too much");
  await user.click(screen.getByRole("button", { name: "Create key" }));
  expect((await screen.findByRole("alert")).textContent).toContain("a key cannot hold admin");
});
