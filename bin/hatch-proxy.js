#!/usr/bin/env node
// The `hatch-proxy` command. Runs the build (dist/, from `npm run build`) when there is one that is
// not older than the sources; otherwise the TypeScript sources through tsx, a development
// dependency, so `npx hatch-proxy …` works in a fresh clone before any build. A build older than
// an edited source is never run: it would silently be the old code.
import { existsSync, readdirSync, statSync } from "node:fs";

const root = new URL("..", import.meta.url);
const built = new URL("dist/main.js", root);
const sources = new URL("src/", root);

function buildIsCurrent() {
  if (!existsSync(built)) return false;
  if (!existsSync(sources)) return true;
  const builtAt = statSync(built).mtimeMs;
  for (const entry of readdirSync(sources, { recursive: true, withFileTypes: true })) {
    if (entry.isFile() && statSync(`${entry.parentPath ?? entry.path}/${entry.name}`).mtimeMs > builtAt) return false;
  }
  return true;
}

if (buildIsCurrent()) {
  await import(built.href);
} else {
  let register;
  try {
    ({ register } = await import("tsx/esm/api"));
  } catch {
    process.stderr.write("hatch-proxy: no build in dist/ and no tsx to run the sources: run `npm run build` (or `npm ci` for the development dependencies)\n");
    process.exit(1);
  }
  register();
  await import(new URL("src/main.ts", root).href);
}
