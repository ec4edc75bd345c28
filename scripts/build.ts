/**
 * `npm run build`: compiles src/ to dist/ (ES modules with source maps; tsconfig.build.json takes
 * src/ only, so no test or bench file), from a clean dist/ so no output of a deleted source stays.
 * Then, with the build itself, the embedded database's first-start template
 * (dist/pglite-template-<pglite version>.tgz: initdb and the migrations, see src/db/pglite.ts).
 */
import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");

rmSync(`${root}/dist`, { recursive: true, force: true });
execFileSync(process.execPath, [tsc, "-p", "tsconfig.build.json"], { cwd: root, stdio: "inherit" });

// In a process of its own: initdb takes hundreds of MB, given back when it exits.
const template = `
import { writePgliteTemplate } from "./dist/db/pglite.js";
import { migratePglite } from "./dist/db/client.js";
const file = await writePgliteTemplate(migratePglite);
process.stdout.write("embedded database template: " + file + "\\n");
`;
execFileSync(process.execPath, ["--input-type=module", "-e", template], { cwd: root, stdio: "inherit" });
