import { screen, within } from "@testing-library/react";
import { expect, it } from "vitest";
import type { User } from "../api/types";
import { ALICE, FakeServer, signedIn } from "../test/fakeServer";

const ADMIN = { ...ALICE, id: "u-admin", username: "root", role: "admin" as const,
  scopes: ["infer" as const, "manage" as const, "admin" as const] };
const BOB: User = {
  id: "u-bob", username: "bob", role: "member", trusted: false, disabled: false,
  created_at: null, rpm_limit: null, concurrency_limit: null, storage_quota_bytes: null,
};

it("lets an admin change a user's role, trust and limits", async () => {
  const server = new FakeServer()
    .on("GET /api/v1/users", { body: [BOB] })
    .on("PATCH /api/v1/users/u-bob", { body: { ...BOB, trusted: true } });
  const { user } = await signedIn(server, "/users", ADMIN);
  await user.click(await screen.findByRole("button", { name: "Edit bob" }));
  const form = screen.getByRole("form", { name: "Edit bob" });
  await user.click(within(form).getByLabelText(/Trusted/));
  await user.type(within(form).getByLabelText(/Requests per minute/), "600");
  await user.type(within(form).getByLabelText(/Storage quota/), "512");
  await user.click(within(form).getByRole("button", { name: "Save" }));
  expect(server.calls("PATCH", "/api/v1/users/u-bob")[0]?.body).toEqual({
    role: "member", trusted: true, disabled: false, rpm_limit: 600, concurrency_limit: null,
    storage_quota_bytes: 512 * 2 ** 20,
  });
  expect(await screen.findByText("User bob changed.")).toBeTruthy();
});

it("keeps the admin pages from members", async () => {
  const server = new FakeServer();
  await signedIn(server, "/audit");
  expect((await screen.findByRole("alert")).textContent).toContain("Only administrators");
  expect(server.calls("GET", "/api/v1/audit")).toHaveLength(0);
});
