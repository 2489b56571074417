import { Navigate, Route, Routes, useLocation } from "react-router";
import { isAdmin, useSession } from "./auth/session";
import { ErrorBoundary } from "./components/ErrorBoundary";
import { Layout } from "./components/Layout";
import { Audit } from "./pages/Audit";
import { Catalog } from "./pages/Catalog";
import { Jobs } from "./pages/Jobs";
import { Keys } from "./pages/Keys";
import { ModelPage } from "./pages/ModelPage";
import { SignIn } from "./pages/SignIn";
import { Users } from "./pages/Users";

/** The console: the sign-in page until someone signs in, then the page the address names
 * (hash routing: `#/models`, `#/models/<name>`, `#/keys`, `#/jobs/...`, `#/users`, `#/audit`). */
export function App() {
  const { me } = useSession();
  const location = useLocation();
  if (me === null) return <SignIn />;
  const admin = isAdmin(me);
  return (
    <Layout>
      <ErrorBoundary resetKey={location.pathname}>
        <Routes>
          <Route path="/" element={<Navigate to="/models" replace />} />
          <Route path="/models" element={<Catalog />} />
          <Route path="/models/:name" element={<ModelPage />} />
          <Route path="/keys" element={<Keys />} />
          <Route path="/jobs/*" element={<Jobs />} />
          <Route path="/users" element={admin ? <Users /> : <AdminsOnly />} />
          <Route path="/audit" element={admin ? <Audit /> : <AdminsOnly />} />
          <Route path="*" element={<NotFound />} />
        </Routes>
      </ErrorBoundary>
    </Layout>
  );
}

function AdminsOnly() {
  return (
    <div className="notice notice-error" role="alert">
      Only administrators see this page.
    </div>
  );
}

function NotFound() {
  return (
    <div className="notice notice-error" role="alert">
      There is no such page in the console. <a href="#/models">Go to the models</a>
    </div>
  );
}
