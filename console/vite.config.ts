/// <reference types="vitest/config" />
import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// The build goes into the Python package, which serves it at /console/ (docs/console.md).
// `base: "./"`: every asset URL is relative to index.html, so the console also works when a
// reverse proxy serves inferd under a path prefix.
export default defineConfig({
  plugins: [react()],
  base: "./",
  build: {
    outDir: "../src/inferd/api/admin/console_dist",
    emptyOutDir: true,
    // no inline scripts or styles: the server's Content-Security-Policy allows neither
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
    chunkSizeWarningLimit: 600,
  },
  server: {
    // `npm run dev`: the console on Vite's server, the API of an `inferd serve` on :8000
    proxy: {
      "/api": "http://127.0.0.1:8000",
      "/v2": "http://127.0.0.1:8000",
    },
  },
  test: {
    environment: "jsdom",
    include: ["src/**/*.test.{ts,tsx}"],
    setupFiles: ["src/test/setup.ts"],
    restoreMocks: true,
  },
});
