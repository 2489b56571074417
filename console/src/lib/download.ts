// Files the user downloads (a job's result, a batch job's output) are fetched with the
// credential in the Authorization header, then saved from memory: no URL carries a secret.

export function saveBlob(blob: Blob, filename: string): void {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  a.rel = "noopener";
  document.body.appendChild(a);
  a.click();
  a.remove();
  // the click has started the download; free the memory once it had time to
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export function saveJson(value: unknown, filename: string): void {
  saveBlob(new Blob([JSON.stringify(value, null, 2)], { type: "application/json" }), filename);
}
