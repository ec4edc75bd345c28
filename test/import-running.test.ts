/**
 * `hatch-proxy import-hatch` while `hatch-proxy start` runs on the embedded database of the same
 * directory (which only that process can open): the rows go through its route API, with the same
 * report and exit codes, and the imported route answers at once. With nothing running, the same
 * command opens the database itself, as before.
 */
import { rmSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { postgresEnabled } from "./helpers/env.ts";
import { runCli } from "./helpers/cli.ts";
import { killTraefiks, startProduct, stopProcess, viaProxy, type Product } from "./helpers/front.ts";
import { hatchDatabase } from "./helpers/hatch-db.ts";

const ROUTE = "rt-00000000000000aa";

/** The CLI as a user runs it in the product's directory (its ./data, its generated key). */
const cli = (dir: string, args: string[]) => runCli(args, { cwd: dir, env: { HATCH_LOG_LEVEL: "warn" } });

describe.runIf(await postgresEnabled())("import-hatch beside a running embedded instance", { timeout: 120_000 }, () => {
  let hatch: Awaited<ReturnType<typeof hatchDatabase>>;
  let product: Product;
  let vmId: string;

  beforeAll(async () => {
    hatch = await hatchDatabase();
    product = await startProduct({ ipPrefix: "127.0.149", env: { HATCH_PROXY_FRONT: "embedded" } });
    vmId = ((await (await fetch(`http://127.0.0.1:${product.ports.sim}/vms`, { method: "POST" })).json()) as { id: string }).id;
    await hatch.sql.unsafe(`insert into vms (id, image_id, vcpu_count, mem_mib) values ('${vmId}', 'img_default', 1, 256)`);
    await hatch.sql.unsafe(`insert into proxy_routes (id, vm_id, subdomain, target_port, auto_wake) values ('${ROUTE}', '${vmId}', 'imported', 8080, true)`);
  });
  afterAll(async () => {
    if (product) {
      await stopProcess(product.child);
      killTraefiks(product.dir);
      rmSync(product.dir, { recursive: true, force: true });
    }
    await hatch?.close();
  });

  const routeHere = async () => (await fetch(`${product.apiUrl}/routes/${ROUTE}`, { headers: { authorization: `Bearer ${product.key()}` } })).status;

  it("--dry-run goes through the running API and writes nothing", async () => {
    const r = await cli(product.dir, ["import-hatch", "--from", hatch.db.url!, "--dry-run"]);
    expect(r.err).toMatch(/serves the embedded database: sending the rows to its route API at http:\/\/127\.0\.0\.1:\d+/);
    expect([r.code, r.out]).toEqual([0, `would import  ${ROUTE}  imported → ${vmId}:8080\n1 route in Hatch: 1 would import, 0 already here, 0 not imported (dry run: nothing written)\n`]);
    expect(await routeHere()).toBe(404);
  });

  it("imports through the running API: exit 0, and the route answers through the proxy at once", async () => {
    const r = await cli(product.dir, ["import-hatch", "--from", hatch.db.url!, "--json"]);
    expect([r.code, r.err]).toEqual([0, ""]);
    expect(JSON.parse(r.out)).toEqual({
      dry_run: false,
      imported: 1,
      already_here: 0,
      not_imported: 0,
      routes: [{ id: ROUTE, vm_id: vmId, subdomain: "imported", target_port: 8080, outcome: "imported" }],
    });
    expect(await routeHere()).toBe(200);
    const res = await viaProxy(product, "imported", "/hello");
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toMatchObject({ path: "/hello" });
  });

  it("with nothing running, opens the embedded database itself: the same report", async () => {
    await stopProcess(product.child);
    const r = await cli(product.dir, ["import-hatch", "--from", hatch.db.url!]);
    expect([r.code, r.err]).toEqual([0, ""]);
    expect(r.out).toBe(`already here  ${ROUTE}  imported → ${vmId}:8080\n1 route in Hatch: 0 imported, 1 already here, 0 not imported\n`);
  });
});
