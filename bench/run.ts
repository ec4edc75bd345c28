/**
 * `npm run bench [-- name …]`: runs each benchmark in its own process, one after another (they
 * measure throughput, so they must not share the 2 cores), and stops at the first failure.
 * Each prints its own table with ratios against a baseline measured in the same run.
 */
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const ALL = ["api", "traefik", "wake", "sleep", "footprint"] as const;
const wanted = process.argv.slice(2).filter((a) => !a.startsWith("-"));
const unknown = wanted.filter((w) => !(ALL as readonly string[]).includes(w));
if (unknown.length) {
  console.error(`unknown benchmark ${unknown.join(", ")}; choose from ${ALL.join(", ")}`);
  process.exit(2);
}
for (const name of wanted.length ? wanted : ALL) {
  const file = fileURLToPath(new URL(`./${name}.ts`, import.meta.url));
  console.log(`\n=== bench/${name}.ts (${new Date().toISOString()}) ===`);
  const r = spawnSync(process.execPath, ["--import", "tsx", file], { stdio: "inherit" });
  if (r.status !== 0) {
    console.error(`bench/${name}.ts failed (exit ${r.status ?? r.signal})`);
    process.exit(1);
  }
}
