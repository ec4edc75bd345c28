/**
 * One migrated PGlite data directory per test run, copied wherever a test needs a new embedded
 * database: creating one (initdb, then the migrations) takes about 4 s on 2 cores, opening a copy
 * under 1 s. The template is made by the product's own openDatabase in the global setup, so a copy
 * is exactly what a first start would have made. Tests of the first start itself (the README's
 * walkthrough, npm start on a fresh clone) and of opening databases do not use it.
 */
import { cpSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { openDatabase } from "../../src/db/client.ts";
import { LOCK_FILE } from "../../src/db/data-dir-lock.ts";

const TEMPLATE_ENV = "HATCH_TEST_PGLITE_TEMPLATE";

/** Makes the template (global setup); the workers find it through the environment. Returns its removal. */
export async function makePgliteTemplate(): Promise<() => void> {
  const root = mkdtempSync(join(tmpdir(), "hatch-pglite-template-"));
  const dir = join(root, "pglite");
  const database = await openDatabase({ dataDir: dir });
  await database.close();
  process.env[TEMPLATE_ENV] = dir;
  return () => rmSync(root, { recursive: true, force: true });
}

/**
 * Puts a migrated copy of the template at `pgliteDir` (a data directory's `pglite`). Without a
 * template (a test file run outside the global setup) nothing is copied and the database is
 * created on open, as in production.
 */
export function seedPglite(pgliteDir: string): void {
  const template = process.env[TEMPLATE_ENV];
  if (!template) return;
  cpSync(template, pgliteDir, { recursive: true, filter: (src) => basename(src) !== LOCK_FILE });
}

/** A new data directory (for HATCH_DATA_DIR / dataDir) whose embedded database is already migrated. */
export function seededDataDir(prefix = "hatch-data-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  seedPglite(join(dir, "pglite"));
  return dir;
}
