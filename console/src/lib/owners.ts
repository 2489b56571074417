import type { Me, Model, User } from "../api/types";

/** Who owns a model, in words: "you", "repository", a username (admins see every user's),
 * or "another user". */
export function ownerName(model: Model, me: Me, users: readonly User[] | undefined): string {
  if (model.system) return "repository";
  if (model.owner_id === me.id) return "you";
  const user = users?.find((u) => u.id === model.owner_id);
  return user ? user.username : "another user";
}
