// Who is signed in. The credential stays in the `Api` object's memory: a reload of the page
// forgets it and the user signs in again (docs/console.md, "Security").
import { createContext, useCallback, useContext, useEffect, useMemo, useRef, useState } from "react";
import type { ReactNode } from "react";
import { Api } from "../api/client";
import type { Me, TokenPair } from "../api/types";

export interface Session {
  api: Api;
  /** The signed-in user; null before sign-in. */
  me: Me | null;
  /** Why the user was signed out, when it was not their own doing. */
  notice: string | null;
  signInWithPassword(username: string, password: string): Promise<void>;
  signInWithKey(key: string): Promise<void>;
  signOut(): void;
}

const SessionContext = createContext<Session | null>(null);

export function useSession(): Session {
  const session = useContext(SessionContext);
  if (session === null) throw new Error("useSession outside <SessionProvider>");
  return session;
}

/** The signed-in user; for pages that only render once someone is. */
export function useMe(): Me {
  const { me } = useSession();
  if (me === null) throw new Error("no user is signed in");
  return me;
}

export function isAdmin(me: Me | null): boolean {
  return me?.role === "admin" && me.scopes.includes("admin");
}

export function SessionProvider({ api, children }: { api: Api; children: ReactNode }) {
  const [me, setMe] = useState<Me | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const signedIn = useRef(false);
  signedIn.current = me !== null;

  useEffect(() => {
    // a credential that stops working signs the user out, saying why (not during sign-in,
    // whose own error is shown)
    api.onExpired = (message) => {
      if (!signedIn.current) return;
      setNotice(message);
      setMe(null);
    };
    return () => {
      api.onExpired = () => {};
    };
  }, [api]);

  const whoAmI = useCallback(async () => {
    try {
      const who = await api.call<Me>((c) => c.GET("/api/v1/auth/me"));
      setNotice(null);
      setMe(who);
    } catch (e) {
      api.setCredential(null);
      throw e;
    }
  }, [api]);

  const signInWithPassword = useCallback(
    async (username: string, password: string) => {
      api.setCredential(null);
      const pair = await api.call<TokenPair>((c) =>
        c.POST("/api/v1/auth/login", { body: { username, password } }),
      );
      api.setCredential({ kind: "token", access: pair.access_token, refresh: pair.refresh_token });
      await whoAmI();
    },
    [api, whoAmI],
  );

  const signInWithKey = useCallback(
    async (key: string) => {
      api.setCredential({ kind: "key", key: key.trim() });
      await whoAmI();
    },
    [api, whoAmI],
  );

  const signOut = useCallback(() => {
    api.setCredential(null);
    setNotice(null);
    setMe(null);
  }, [api]);

  const value = useMemo(
    () => ({ api, me, notice, signInWithPassword, signInWithKey, signOut }),
    [api, me, notice, signInWithPassword, signInWithKey, signOut],
  );
  return <SessionContext.Provider value={value}>{children}</SessionContext.Provider>;
}
