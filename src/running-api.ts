/**
 * The route API's URL, recorded in the data directory by a process that serves the embedded
 * database. PGlite opens in one process only, so `hatch-proxy import-hatch` beside it cannot write
 * to that database itself: it finds the running API here and sends the rows there.
 */
import { readFileSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export const API_URL_FILE = "api-url";

/** Writes `<dataDir>/api-url`; returns its removal (which leaves a file another process rewrote). */
export function recordApiUrl(dataDir: string, url: string): () => void {
  const file = join(dataDir, API_URL_FILE);
  writeFileSync(file, `${url}\n`);
  return () => {
    try {
      if (readFileSync(file, "utf8").trim() === url) unlinkSync(file);
    } catch {
      // Already gone.
    }
  };
}

/** The URL recorded in `dataDir`, or undefined. */
export function recordedApiUrl(dataDir: string): string | undefined {
  try {
    return readFileSync(join(dataDir, API_URL_FILE), "utf8").trim() || undefined;
  } catch {
    return undefined;
  }
}
