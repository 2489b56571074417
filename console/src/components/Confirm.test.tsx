import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { expect, it, vi } from "vitest";
import { Confirm } from "./Confirm";

it("takes the focus, keeps it inside, closes with Escape and shows a failure in words", async () => {
  const user = userEvent.setup();
  const cancel = vi.fn();
  const confirm = vi.fn().mockRejectedValue(new Error("model 'x' is deployed"));
  render(
    <Confirm title="Delete x?" action="Delete" onCancel={cancel} onConfirm={confirm}>
      <p>Gone for good.</p>
    </Confirm>,
  );
  const dialog = screen.getByRole("dialog", { name: "Delete x?" });
  expect(document.activeElement).toBe(screen.getByRole("button", { name: "Cancel" }));
  await user.tab();
  expect(document.activeElement).toBe(screen.getByRole("button", { name: "Delete" }));
  await user.tab();
  expect(document.activeElement).toBe(screen.getByRole("button", { name: "Cancel" }));
  await user.click(screen.getByRole("button", { name: "Delete" }));
  expect((await screen.findByRole("alert")).textContent).toBe("model 'x' is deployed");
  expect(dialog.isConnected).toBe(true);
  await user.keyboard("{Escape}");
  expect(cancel).toHaveBeenCalledOnce();
});
