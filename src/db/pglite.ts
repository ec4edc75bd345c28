/**
 * The embedded PostgreSQL (PGlite: Postgres compiled to WebAssembly), sized for what it holds here,
 * a few thousand routes, rather than for PGlite's general-purpose defaults. Measured with
 * `npm run bench -- footprint` (the README's benchmark table has the figures):
 *
 * - shared_buffers 16 MB instead of 128 MB: the buffer pool lives in the WebAssembly heap, and
 *   every page of it Postgres touches stays resident (about 110 MB of RSS);
 * - WebAssembly compiled by V8's baseline compiler only (Liftoff): the optimizing tier recompiles
 *   PGlite's 9 MB module in the background, which costs about 60 MB of RSS and a second of CPU at
 *   each start, and bought no measurable speed for these queries;
 * - a first start copies a database made once by `npm run build` (initdb and the migrations, saved
 *   as a tarball in dist/) instead of running initdb: initdb runs a second and a third WebAssembly
 *   instance beside the first, which took the process to about 850 MB. The copy is streamed
 *   (tar.ts): PGlite's own loadDataDir keeps the whole archive in memory for the database's life.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { setFlagsFromString } from "node:v8";
import type { PGlite } from "@electric-sql/pglite";
import { extractTarGz } from "./tar.ts";

/** The Postgres settings the embedded database starts with, after PGlite's own. */
export const PGLITE_SETTINGS = ["-c", "shared_buffers=16MB"];

/** The installed PGlite's version: a template is only loaded by the PGlite that made it. */
function pgliteVersion(): string {
  const entry = createRequire(import.meta.url).resolve("@electric-sql/pglite");
  return (JSON.parse(readFileSync(join(dirname(entry), "..", "package.json"), "utf8")) as { version: string }).version;
}

/**
 * Where `npm run build` puts the template for the installed PGlite: dist/pglite-template-<version>.tgz
 * (this module is dist/db/pglite.js there). From the sources (tsx) the path is under src/, where no
 * template is ever written: a development start runs initdb.
 */
export function pgliteTemplateFile(): string {
  return fileURLToPath(new URL(`../pglite-template-${pgliteVersion()}.tgz`, import.meta.url));
}

let compilerChosen = false;

/** Liftoff only, for every WebAssembly module compiled after this (the first PGlite's included). */
function baselineWasmCompilerOnly(): void {
  if (compilerChosen) return;
  setFlagsFromString("--liftoff-only");
  compilerChosen = true;
}

/**
 * Opens PGlite on `dataDir` (in memory when undefined). A directory without a database gets a copy
 * of `template` (the build's) when there is one, else PGlite's initdb.
 */
export async function createPglite(dataDir: string | undefined, template = pgliteTemplateFile()): Promise<PGlite> {
  baselineWasmCompilerOnly();
  const { PGlite } = await import("@electric-sql/pglite");
  const startParams = [...PGlite.defaultStartParams, ...PGLITE_SETTINGS];
  if (!dataDir) return PGlite.create({ startParams });
  if (!existsSync(join(dataDir, "PG_VERSION")) && existsSync(template)) await extractTarGz(template, dataDir, ["PG_VERSION"]);
  return PGlite.create(dataDir, { startParams });
}

/**
 * Makes the template (`npm run build`): a database in memory, initdb'd and migrated by `migrate`,
 * saved as PGlite's own data directory tarball. Returns the file written.
 */
export async function writePgliteTemplate(migrate: (pg: PGlite) => Promise<void>, file = pgliteTemplateFile()): Promise<string> {
  const pg = await createPglite(undefined);
  try {
    await migrate(pg);
    const tarball = await pg.dumpDataDir("gzip");
    writeFileSync(file, Buffer.from(await tarball.arrayBuffer()));
    return file;
  } finally {
    await pg.close();
  }
}
