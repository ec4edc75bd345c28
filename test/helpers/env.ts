/**
 * Which external dependencies the tests may use. Without them a suite is skipped (and says so);
 * with REQUIRE_POSTGRES=1 / REQUIRE_TRAEFIK=1 (set by .ci/run) a missing one fails instead.
 */
import postgres from "postgres";
import { execFileSync } from "node:child_process";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";

export const ADMIN_PG_URL = process.env.TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
export const requirePostgres = process.env.REQUIRE_POSTGRES === "1";
export const requireTraefik = process.env.REQUIRE_TRAEFIK === "1";

/** Probes the admin Postgres URL once; true when a query answers. */
export async function probePostgres(): Promise<boolean> {
  const sql = postgres(ADMIN_PG_URL, { max: 1, connect_timeout: 3, onnotice: () => {} });
  try {
    await sql`select 1`;
    return true;
  } catch {
    return false;
  } finally {
    await sql.end({ timeout: 1 }).catch(() => {});
  }
}

/** The Traefik binary from scripts/traefik.sh --find (no build), or undefined. */
export function findTraefik(): string | undefined {
  const script = fileURLToPath(new URL("../../scripts/traefik.sh", import.meta.url));
  try {
    return execFileSync("bash", [script, "--find"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim() || undefined;
  } catch {
    return undefined;
  }
}

let pgProbe: Promise<boolean> | undefined;
/** True when Postgres suites should run; throws when REQUIRE_POSTGRES=1 and Postgres is missing. */
export async function postgresEnabled(): Promise<boolean> {
  pgProbe ??= probePostgres();
  const ok = await pgProbe;
  if (!ok && requirePostgres) throw new Error(`REQUIRE_POSTGRES=1 but Postgres is not reachable at ${ADMIN_PG_URL}`);
  return ok;
}

/** The Traefik binary, or undefined (suite skipped); throws when REQUIRE_TRAEFIK=1 and none is found. */
export function traefikBinary(): string | undefined {
  const bin = findTraefik();
  if (!bin && requireTraefik) throw new Error("REQUIRE_TRAEFIK=1 but no Traefik binary was found (run scripts/traefik.sh)");
  return bin;
}

/** A loopback port that was free a moment ago (for processes that must be told their port). */
export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}
