import { findTraefik, probePostgres, requirePostgres, requireTraefik, ADMIN_PG_URL } from "./env.ts";
import { makePgliteTemplate } from "./pglite-template.ts";

/**
 * Says once, before any suite, which dependency-backed suites will run or be skipped; makes the
 * migrated PGlite template that tests copy (removed at the end).
 */
export default async function setup() {
  const pg = await probePostgres();
  const traefik = findTraefik();
  if (!pg) {
    if (requirePostgres) throw new Error(`REQUIRE_POSTGRES=1 but Postgres is not reachable at ${ADMIN_PG_URL}`);
    console.warn(`[hatch-proxy tests] Postgres not reachable at ${ADMIN_PG_URL}: Postgres suites are SKIPPED (PGlite suites run). Set TEST_POSTGRES_URL, or REQUIRE_POSTGRES=1 to fail instead.`);
  }
  if (!traefik) {
    if (requireTraefik) throw new Error("REQUIRE_TRAEFIK=1 but no Traefik binary was found (run scripts/traefik.sh)");
    console.warn("[hatch-proxy tests] no Traefik binary (TRAEFIK_BIN, PATH, or scripts/traefik.sh cache): real-Traefik suites are SKIPPED. Run `bash scripts/traefik.sh` to build one.");
  }
  return await makePgliteTemplate();
}
