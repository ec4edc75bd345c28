import { rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { testConfig } from "../src/config.ts";
import { insertRoute } from "../src/db/routes.repo.ts";
import { printTraefikConfig } from "../src/traefik/print-config.ts";
import { freshDb, type TestDb } from "./helpers/db.ts";
import { seededDataDir } from "./helpers/pglite-template.ts";

describe("printTraefikConfig", () => {
  let t: TestDb;
  let server: Server;
  let port: number;
  let answer: { status: number; body: unknown };
  let seenAuth: string | undefined;
  let served: { status: number; body: string } | undefined;
  beforeAll(async () => {
    t = await freshDb("pglite");
    await insertRoute(t.database, { id: "rt_print", vmId: "vm_p", subdomain: "printed", targetPort: 5000 });
    await insertRoute(t.database, { id: "rt_sleep", vmId: "vm_s", subdomain: "asleep", targetPort: 5000 });
    server = createServer((req, res) => {
      // No keep-alive: a pooled connection the server closes while PGlite starts would reset.
      res.setHeader("connection", "close");
      seenAuth = req.headers.authorization;
      if (req.url === "/traefik/config" && served) {
        res.writeHead(served.status, { "content-type": "application/json" });
        return res.end(served.body);
      }
      res.writeHead(req.url === "/vms" ? answer.status : 404, { "content-type": "application/json" });
      res.end(JSON.stringify(answer.body));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    await new Promise((r) => server.close(r));
    await t.drop();
  });

  const vms = [
    { id: "vm_p", state: "running", guest_ip: "127.0.1.44" },
    { id: "vm_s", state: "snapshotted", guest_ip: "127.0.1.45" },
  ];

  it("prints JSON from the database and a Hatch-compatible VM API", async () => {
    answer = { status: 200, body: vms };
    let out = "";
    const config = testConfig({ hatchApiUrl: `http://127.0.0.1:${port}`, hatchApiKey: "k1" });
    await printTraefikConfig(config, "json", { database: t.database, write: (s) => (out += s) });
    expect(out.endsWith("}\n")).toBe(true);
    const doc = JSON.parse(out);
    expect(Object.keys(doc.http.routers).sort()).toEqual(["hatch-api", "hatch-streams", "hatch-vm-api", "hatch-wake", "rt_print", "rt_print-get"]);
    expect(doc.http.services.rt_print.loadBalancer.servers).toEqual([{ url: "http://127.0.1.44:5000" }]);
    expect(seenAuth).toBe("Bearer k1");
  });

  it("prints the same document as YAML with an injected platform", async () => {
    let json = "";
    let yaml = "";
    const platform = { list: async () => vms as any };
    await printTraefikConfig(testConfig(), "json", { database: t.database, platform, write: (s) => (json += s) });
    await printTraefikConfig(testConfig(), "yaml", { database: t.database, platform, write: (s) => (yaml += s) });
    expect(parse(yaml)).toEqual(JSON.parse(json));
  });

  it("prints nothing and rejects when the VM API fails", async () => {
    answer = { status: 500, body: { error: "boom" } };
    let out = "";
    const config = testConfig({ hatchApiUrl: `http://127.0.0.1:${port}` });
    await expect(printTraefikConfig(config, "json", { database: t.database, write: (s) => (out += s) })).rejects.toThrow(
      /^VM platform unavailable: GET \/vms answered 500/,
    );
    expect(out).toBe("");
  });

  describe("with embedded PGlite (no DATABASE_URL)", () => {
    it("prints what a running API serves instead of opening the data directory", async () => {
      served = { status: 200, body: '{"http":{"routers":{"x":{"rule":"Host(`x.hatch.local`)","service":"x"}},"services":{}}}' };
      const dataDir = join(tmpdir(), "hatch-print-never-created");
      let out = "";
      const config = testConfig({ routeApiUrl: `http://127.0.0.1:${port}`, traefikToken: "t0k", dataDir });
      await printTraefikConfig(config, "yaml", { write: (s) => (out += s) });
      expect(parse(out)).toEqual(JSON.parse(served.body));
      expect(seenAuth).toBe("Bearer t0k");
      served = { status: 503, body: '{"error":"traefik config not built yet: starting"}' };
      await expect(printTraefikConfig(config, "json", { write: (s) => (out += s) })).rejects.toThrow(
        `the running API at http://127.0.0.1:${port} answered 503: {"error":"traefik config not built yet: starting"}`,
      );
      served = undefined;
    });

    it("builds from the data directory when no API is running", async () => {
      const dataDir = seededDataDir("hatch-print-");
      try {
        const closed = createServer();
        await new Promise<void>((r) => closed.listen(0, "127.0.0.1", r));
        const deadPort = (closed.address() as AddressInfo).port;
        await new Promise((r) => closed.close(r));
        answer = { status: 200, body: [] };
        let out = "";
        const config = testConfig({ routeApiUrl: `http://127.0.0.1:${deadPort}`, hatchApiUrl: `http://127.0.0.1:${port}`, dataDir });
        await printTraefikConfig(config, "json", { write: (s) => (out += s) });
        expect(Object.keys(JSON.parse(out).http.routers).sort()).toEqual(["hatch-api", "hatch-streams", "hatch-vm-api", "hatch-wake"]);
      } finally {
        rmSync(dataDir, { recursive: true, force: true });
      }
    });
  });
});
