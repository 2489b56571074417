import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { HashRouter } from "react-router";
import { Api } from "./api/client";
import { App } from "./App";
import { SessionProvider } from "./auth/session";
import { ErrorBoundary } from "./components/ErrorBoundary";
import "./styles.css";

const root = document.getElementById("root");
if (root) {
  createRoot(root).render(
    <StrictMode>
      <ErrorBoundary>
        <SessionProvider api={new Api()}>
          <HashRouter>
            <App />
          </HashRouter>
        </SessionProvider>
      </ErrorBoundary>
    </StrictMode>,
  );
}
