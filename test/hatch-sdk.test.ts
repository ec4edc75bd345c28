/**
 * Drop-in for Hatch: a client that behaves as Hatch's TypeScript SDK does (one apiUrl, a Bearer key
 * on every call, JSON bodies, `error` read from a failure's body, an empty 2xx body accepted) runs
 * a VM's whole life against `api.<base>` through a real Traefik, through the embedded front, and
 * against the route API's own URL (the one `npm start`'s banner prints).
 */
import { request } from "node:http";
import type { LookupFunction } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Config } from "../src/config.ts";
import type { Stack } from "../src/stack.ts";
import { traefikBinary } from "./helpers/env.ts";
import { API_KEY, stackConfig, stackDatabase, stackPorts, standaloneSimulator, startSleepStack } from "./helpers/stack.ts";
import { startTestTraefik, traefikPorts, type TestTraefik } from "./helpers/traefik.ts";

/** Names under .hatch.local resolve to loopback, as a wildcard DNS record would. */
const lookup: LookupFunction = (host, opts, cb) => {
  if (host.endsWith(".hatch.local") || host === "localhost") {
    if ((opts as { all?: boolean }).all) (cb as any)(null, [{ address: "127.0.0.1", family: 4 }]);
    else cb(null, "127.0.0.1", 4);
    return;
  }
  cb(new Error(`test lookup refuses ${host}`) as NodeJS.ErrnoException, "", 4);
};

class HatchError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

/** Hatch's SDK's behaviour, call for call (its transport is fetch; this one can resolve *.hatch.local). */
class SdkLikeClient {
  constructor(private readonly opts: { apiUrl: string; apiKey: string }) {}
  createVM = (o: Record<string, unknown> = {}) => this.request<any>("POST", "/vms", o);
  listVMs = () => this.request<any[]>("GET", "/vms");
  getVM = (id: string) => this.request<any>("GET", `/vms/${id}`);
  deleteVM = (id: string) => this.request<void>("DELETE", `/vms/${id}`);
  snapshotVM = (id: string) => this.request<any>("POST", `/vms/${id}/snapshot`);
  listSnapshots = (id: string) => this.request<any[]>("GET", `/vms/${id}/snapshots`);
  createRoute = (vmId: string, o: Record<string, unknown>) => this.request<any>("POST", `/vms/${vmId}/routes`, o);
  listRoutes = (vmId: string) => this.request<any[]>("GET", `/vms/${vmId}/routes`);
  deleteRoute = (id: string) => this.request<void>("DELETE", `/routes/${id}`);
  getMetrics = (vmId: string) => this.request<any>("GET", `/vms/${vmId}/metrics`);

  private request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { Authorization: `Bearer ${this.opts.apiKey}` };
    let payload: string | undefined;
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    return new Promise((resolve, reject) => {
      const req = request(new URL(this.opts.apiUrl.replace(/\/+$/, "") + path), { method, headers, lookup, agent: false }, (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c) => (text += c));
        res.on("end", () => {
          const status = res.statusCode ?? 0;
          if (status < 200 || status >= 300) {
            let message = text;
            try {
              message = JSON.parse(text).error ?? text;
            } catch {
              // Not JSON: the raw text, as the SDK does.
            }
            return reject(new HatchError(message, status));
          }
          resolve((text.trim() ? JSON.parse(text) : undefined) as T);
        });
      });
      req.on("error", reject);
      req.end(payload);
    });
  }
}

/** One request with an optional Authorization header, its status and body. */
function rawRequest(url: string, method: string, authorization?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(new URL(url), { method, lookup, agent: false, headers: authorization ? { authorization } : {} }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

/** A GET of the app through the public front, following a 307 as fetch does. */
function visit(url: string, hops = 0): Promise<{ status: number; json: any; cold: string | undefined }> {
  return new Promise((resolve, reject) => {
    request(new URL(url), { lookup, agent: false }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c) => (text += c));
      res.on("end", () => {
        if (res.statusCode === 307 && res.headers.location && hops < 3) return resolve(visit(new URL(res.headers.location, url).toString(), hops + 1));
        let json: any;
        try {
          json = JSON.parse(text);
        } catch {
          json = text;
        }
        resolve({ status: res.statusCode ?? 0, json, cold: res.headers["x-hatch-cold-start"] as string | undefined });
      });
    })
      .on("error", reject)
      .end();
  });
}

/** One VM's whole life through `sdk`, with the app reached on `front` (a base URL with the port). */
async function life(sdk: SdkLikeClient, frontPort: number, tag: string) {
  const vm = await sdk.createVM({});
  expect(vm).toMatchObject({ state: "running" });
  expect((await sdk.getVM(vm.id)).id).toBe(vm.id);
  expect((await sdk.listVMs()).map((v) => v.id)).toContain(vm.id);

  const named = await sdk.createRoute(vm.id, { subdomain: `life-${tag}`, target_port: 8080 });
  const random = await sdk.createRoute(vm.id, { target_port: 8080, auto_wake: true });
  expect(named).toMatchObject({ vm_id: vm.id, subdomain: `life-${tag}`, target_port: 8080, auto_wake: true });
  expect(random.subdomain).toMatch(/^[a-z0-9]{12}$/);
  expect((await sdk.listRoutes(vm.id)).map((r) => r.id)).toEqual([random.id, named.id]);
  const reserved = await sdk.createRoute(vm.id, { subdomain: "api", target_port: 8080 }).catch((e) => e);
  expect([reserved instanceof HatchError, reserved.status, reserved.message]).toEqual([true, 400, 'subdomain "api" is reserved']);

  const app = `http://life-${tag}.hatch.local:${frontPort}`;
  const first = await visit(`${app}/hello`);
  expect([first.status, first.json.vm_id, first.json.path]).toEqual([200, vm.id, "/hello"]);

  const snap = await sdk.snapshotVM(vm.id);
  expect(snap).toMatchObject({ vm_id: vm.id });
  expect(typeof snap.id).toBe("string");
  const woken = await visit(`${app}/again`);
  expect([woken.status, woken.json.vm_id, woken.json.path]).toEqual([200, vm.id, "/again"]);
  expect((await sdk.getVM(vm.id)).state).toBe("running");

  expect((await sdk.listSnapshots(vm.id)).map((s) => s.id)).toContain(snap.id);
  const metrics = await sdk.getMetrics(vm.id);
  expect(metrics).toMatchObject({ vm_id: vm.id, state: "running", net: expect.any(Object), block: expect.any(Object), vcpu: expect.any(Object) });

  expect(await sdk.deleteRoute(random.id)).toEqual({ status: "deleted" });
  expect((await sdk.listRoutes(vm.id)).map((r) => r.id)).toEqual([named.id]);
  expect(await sdk.deleteVM(vm.id)).toEqual({ status: "deleted" });
  const gone = await sdk.getVM(vm.id).catch((e) => e);
  expect([gone.status, gone.message]).toEqual([404, "not found"]);
  return { vm, named };
}

describe("a client that behaves as Hatch's SDK, on one base URL", () => {
  let simulator: Awaited<ReturnType<typeof standaloneSimulator>>;
  const dbs: Awaited<ReturnType<typeof stackDatabase>>[] = [];
  let embedded: Stack;

  beforeAll(async () => {
    simulator = await standaloneSimulator("127.0.76", 150);
    dbs.push(await stackDatabase("pglite"));
    embedded = await startSleepStack(stackConfig(await stackPorts(), { ...dbs[0]!.overrides, hatchApiUrl: simulator.url, idleTimeoutMs: 0 }), "embedded");
  });
  afterAll(async () => {
    await embedded?.close();
    await simulator?.close();
    for (const d of dbs) await d.drop();
  });

  it("runs a whole life against api.<base> on the embedded front", async () => {
    const front = Number(new URL(embedded.proxy!.url).port);
    const sdk = new SdkLikeClient({ apiUrl: `http://api.hatch.local:${front}`, apiKey: API_KEY });
    await life(sdk, front, "embedded");
  });

  it("runs a whole life against the route API's own URL (the banner's)", async () => {
    const sdk = new SdkLikeClient({ apiUrl: embedded.api!.url, apiKey: API_KEY });
    await life(sdk, Number(new URL(embedded.proxy!.url).port), "banner");
    // Hatch's health shape for a caller with a key; the open probe stays open.
    const health = await fetch(`${embedded.api!.url}/healthz`, { headers: { authorization: `Bearer ${API_KEY}` } });
    expect(await health.json()).toMatchObject({ status: "ok", vm_count: expect.any(Number), route_count: expect.any(Number) });
    expect(await (await fetch(`${embedded.api!.url}/healthz`)).json()).toEqual({ status: "ok" });
    expect((await fetch(`${embedded.api!.url}/healthz`, { headers: { authorization: "Bearer wrong" } })).status).toBe(401);
  });

  it("answers Hatch-shaped errors for VM calls: the platform's own, and a clear 503 when it is down", async () => {
    const sdk = new SdkLikeClient({ apiUrl: embedded.api!.url, apiKey: API_KEY });
    const missing = await sdk.getVM("vm_nope").catch((e) => e);
    expect([missing.status, missing.message]).toEqual([404, "not found"]);
    const anon = new SdkLikeClient({ apiUrl: embedded.api!.url, apiKey: "not-a-key" });
    const refused = await anon.listVMs().catch((e) => e);
    expect([refused.status, refused.message]).toEqual([401, "invalid api key"]);
    const down = await startSleepStack(stackConfig(await stackPorts(), { ...(await freshPglite()).overrides, hatchApiUrl: "http://127.0.0.1:1", idleTimeoutMs: 0 }), "embedded");
    try {
      const started = Date.now();
      const err = await new SdkLikeClient({ apiUrl: down.api!.url, apiKey: API_KEY }).listVMs().catch((e) => e);
      expect([err.status, err.message]).toEqual([503, "VM platform unavailable: try again shortly"]);
      expect(Date.now() - started).toBeLessThan(5000);
    } finally {
      await down.close();
    }
  });

  async function freshPglite() {
    const d = await stackDatabase("pglite");
    dbs.push(d);
    return d;
  }

  const bin = traefikBinary();
  /** A stack on the simulator with a real Traefik polling it, once `router` is live there. */
  async function behindTraefik(overrides: Partial<Config>, router: string): Promise<{ stack: Stack; traefik: TestTraefik }> {
    const tports = await traefikPorts();
    const config = stackConfig(await stackPorts(), { ...(await freshPglite()).overrides, hatchApiUrl: simulator.url, wakeSecret: "sdk-secret", traefikApiUrls: [tports.apiUrl], idleTimeoutMs: 0 });
    const stack = await startSleepStack({ ...config, ...overrides }, "traefik");
    const traefik = await startTestTraefik(bin!, { providerUrl: `${stack.api!.url}/traefik/config`, ...tports });
    await traefik.waitForRouter(router);
    return { stack, traefik };
  }

  describe.skipIf(!bin)("through a real Traefik", () => {
    let stack: Stack;
    let traefik: TestTraefik;
    beforeAll(async () => void ({ stack, traefik } = await behindTraefik({}, "hatch-vm-api")));
    afterAll(async () => {
      await traefik?.stop();
      await stack?.close();
    });

    it("runs a whole life against api.<base>: route calls reach the route API, VM calls the platform directly", async () => {
      const sdk = new SdkLikeClient({ apiUrl: `http://api.hatch.local:${traefik.entryPort}`, apiKey: API_KEY });
      const before = await relayed(stack);
      const routeCalls = await apiRequests(stack, ["/vms/:vm_id/routes", "/routes/:route_id"]);
      await life(sdk, traefik.entryPort, "traefik");
      // No hop of ours for VM calls: the route API relayed none of them, and answered the route calls.
      expect(await relayed(stack)).toBe(before);
      expect(await apiRequests(stack, ["/vms/:vm_id/routes", "/routes/:route_id"])).toBe(routeCalls + 6);
    });
  });

  // The built-in simulator checks no key. npm start's default config never lets Traefik send it
  // api.<base>'s VM calls: they go to the route API, which checks the key first and relays them.
  describe.skipIf(!bin)("through a real Traefik, with a platform that checks no key (the simulator's default)", () => {
    let stack: Stack;
    let traefik: TestTraefik;
    beforeAll(async () => void ({ stack, traefik } = await behindTraefik({ traefikPlatformUrl: undefined }, "hatch-api")));
    afterAll(async () => {
      await traefik?.stop();
      await stack?.close();
    });

    it("refuses VM calls without the key, and relays them with it", async () => {
      const url = `http://api.hatch.local:${traefik.entryPort}`;
      for (const [method, path] of [["GET", "/vms"], ["POST", "/vms"], ["GET", "/vms/vm_x"], ["DELETE", "/vms/vm_x"]] as const) {
        const anon = await rawRequest(`${url}${path}`, method);
        expect([anon.status, JSON.parse(anon.body).error], `${method} ${path} without a key`).toEqual([401, "missing api key"]);
        const wrong = await rawRequest(`${url}${path}`, method, "Bearer not-the-key");
        expect([wrong.status, JSON.parse(wrong.body).error], `${method} ${path} with a wrong key`).toEqual([401, "invalid api key"]);
      }
      const before = await relayed(stack);
      await life(new SdkLikeClient({ apiUrl: url, apiKey: API_KEY }), traefik.entryPort, "relayed");
      expect(await relayed(stack)).toBeGreaterThan(before);
    });
  });
});

/** Requests the route API answered on these route patterns (hatch_api_requests_total). */
async function apiRequests(stack: Stack, routes: string[]): Promise<number> {
  const text = await (await fetch(`${stack.api!.url}/metrics`)).text();
  let n = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith("hatch_api_requests_total{") && routes.some((r) => line.includes(`route="${r}"`))) n += Number(line.split(" ").pop());
  }
  return n;
}

/** Calls the route API relayed to the VM platform. */
const relayed = (stack: Stack) => apiRequests(stack, ["/vms", "/vms/*", "/images", "/images/*", "/templates", "/templates/*"]);
