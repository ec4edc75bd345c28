/**
 * Two `npm start`s on one machine, each with its own Traefik: neither may take the other's Traefik
 * for its own (a fixed loopback port made the second one's start-up check pass against the first's
 * Traefik while its own had exited). And what each Traefik shows on its loopback entry point.
 */
import { readFileSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { traefikBinary } from "./helpers/env.ts";
import { killTraefiks, startProduct, stopProcess, viaProxy, waitFor, type Product } from "./helpers/front.ts";

const bin = traefikBinary();
if (!bin) console.warn("[front-instances] no Traefik binary: the two-instances test is SKIPPED");

/** A VM on the product's own simulator and a route to it; the VM id. */
async function vmRoutedBy(p: Product, subdomain: string): Promise<string> {
  const vm = (await (await fetch(`http://127.0.0.1:${p.ports.sim}/vms`, { method: "POST" })).json()) as { id: string };
  const res = await fetch(`${p.apiUrl}/vms/${vm.id}/routes`, {
    method: "POST",
    headers: { authorization: `Bearer ${p.key()}`, "content-type": "application/json" },
    body: JSON.stringify({ subdomain, target_port: 8080 }),
  });
  expect(res.status).toBe(201);
  return vm.id;
}

describe.skipIf(!bin)("two npm starts on one machine", () => {
  const products: Product[] = [];

  beforeAll(async () => {
    // Started together: both look for a free loopback port for their Traefik at the same moment.
    const env = { HATCH_PROXY_FRONT: "traefik", TRAEFIK_BIN: bin! };
    products.push(...(await Promise.all([startProduct({ ipPrefix: "127.0.143", env }), startProduct({ ipPrefix: "127.0.144", env })])));
  }, 90_000);

  afterAll(async () => {
    for (const p of products) {
      await stopProcess(p.child);
      killTraefiks(p.dir);
      rmSync(p.dir, { recursive: true, force: true });
    }
  });

  it("each routes through a Traefik of its own, and each is ready", async () => {
    const [a, b] = products as [Product, Product];
    for (const p of products) expect(p.output()).toContain("via Traefik");
    const apis = products.map((p) => p.traefikApi());
    expect(new Set(apis).size).toBe(2);
    const vmA = await vmRoutedBy(a, "first");
    const vmB = await vmRoutedBy(b, "second");
    for (const [p, sub, vm] of [[a, "first", vmA], [b, "second", vmB]] as const) {
      await waitFor(async () => (await viaProxy(p, sub, "/who")).status === 200, `${sub} through its own Traefik`);
      expect(JSON.parse((await viaProxy(p, sub, "/who")).body)).toMatchObject({ vm_id: vm });
      const ready = await fetch(`${p.apiUrl}/readyz`);
      expect(ready.status, JSON.stringify(await ready.clone().json())).toBe(200);
    }
    // Neither answers for the other's routes.
    expect((await viaProxy(a, "second", "/who")).status).toBe(404);
  }, 30_000);

  it("shows the wake secret to no other local user: Traefik's API serves only router and service pages, the config needs a token", async () => {
    for (const p of products) {
      const api = p.traefikApi()!;
      const staticConfig = parse(readFileSync(join(p.dir, "data/traefik.yml"), "utf8"));
      expect(staticConfig.api).toEqual({ dashboard: false });
      for (const path of ["/api/rawdata", "/api/http/middlewares", "/api/http/middlewares/hatch-wake-auth@http", "/api/http/middlewares/hatch-sleep-fallback@http"]) {
        expect((await fetch(api + path)).status, path).toBe(404);
      }
      expect((await fetch(`${api}/api/http/routers/hatch-wake@http`)).status).toBe(200);
      expect((await fetch(`${api}/metrics`)).status).toBe(200);
      // Nor from the config Traefik polls: npm start gives its Traefik a token, in a file only its user reads.
      expect((await fetch(`${p.apiUrl}/traefik/config`)).status).toBe(401);
      expect(statSync(join(p.dir, "data/traefik.yml")).mode & 0o077).toBe(0);
      expect(staticConfig.providers.http.headers.Authorization).toMatch(/^Bearer \S{20,}$/);
    }
  });
});
