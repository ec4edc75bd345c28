/**
 * Routine traffic of the Traefik config endpoint stays out of the info log: a poll a second is a
 * debug line, and a flood of refused requests is one warning plus one count per window.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { testConfig } from "../src/config.ts";
import { createLogger } from "../src/log.ts";
import { startStack, type Stack } from "../src/stack.ts";
import type { ConfigService } from "../src/traefik/config-service.ts";
import { quietTraefikPolls, traefikEndpoint } from "../src/traefik/endpoint.ts";

type Line = { level: string; msg: string; [k: string]: unknown };

function capture() {
  const lines: Line[] = [];
  return { lines, log: createLogger("debug", {}, (l) => lines.push(JSON.parse(l))) };
}

describe("the traefik config endpoint's log", () => {
  it("summarizes 6,000 refused requests in two warnings: the first at once, then one count for the window", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    try {
      const { lines, log } = capture();
      const notUsed = {} as ConfigService;
      const app = traefikEndpoint(notUsed, { config: testConfig({ traefikToken: "right" }), log, clientAddress: () => "10.1.2.3" });
      for (let i = 0; i < 6000; i++) {
        const res = await app.request("/config", { headers: { authorization: "Bearer wrong" } });
        expect(res.status).toBe(401);
      }
      const refused = () => lines.filter((l) => l.level === "warn");
      expect(refused()).toEqual([expect.objectContaining({ msg: "traefik config request refused", reason: "invalid token", address: "10.1.2.3" })]);
      vi.advanceTimersByTime(60_000);
      expect(refused().slice(1)).toEqual([expect.objectContaining({ msg: "traefik config requests refused again", reason: "invalid token", count: 5999, window_s: 60 })]);
      // A quiet window forgets the kind: the next refusal is news again.
      vi.advanceTimersByTime(60_000);
      await app.request("/config");
      expect(refused().slice(2)).toEqual([expect.objectContaining({ msg: "traefik config request refused", reason: "missing token" })]);
      expect(refused()).toHaveLength(3);
    } finally {
      vi.useRealTimers();
    }
  });

  it("keeps other kinds apart and bounds how many it tracks", async () => {
    const { lines, log } = capture();
    let address = "";
    const app = traefikEndpoint({} as ConfigService, { config: testConfig(), log, clientAddress: () => address });
    for (let i = 0; i < 300; i++) {
      address = `10.0.${i >> 8}.${i & 255}`;
      expect((await app.request("/config")).status).toBe(403);
    }
    const warnings = lines.filter((l) => l.level === "warn");
    expect(warnings).toHaveLength(101);
    expect(warnings.at(-1)).toMatchObject({ reason: "various", address: "various" });
  });

  it("quietTraefikPolls demotes the API's request lines for the endpoint, and only those", () => {
    const { lines, log } = capture();
    const quiet = quietTraefikPolls(log).child({ request_id: "r1" });
    quiet.info("request", { method: "GET", path: "/traefik/config", status: 200 });
    quiet.info("request", { method: "GET", path: "/traefik/config.yaml", status: 304 });
    quiet.info("request", { method: "GET", path: "/traefik/config", status: 403 });
    quiet.info("request", { method: "GET", path: "/traefik/config", status: 503 });
    quiet.info("request", { method: "GET", path: "/vms/x/routes", status: 200 });
    quiet.info("something else", { path: "/traefik/config", status: 200 });
    expect(lines.map((l) => `${l.level} ${l.msg} ${l.status}`)).toEqual([
      "debug request 200",
      "debug request 304",
      "debug request 403",
      "info request 503",
      "info request 200",
      "info something else 200",
    ]);
    expect(lines.every((l) => l.request_id === "r1")).toBe(true);
  });
});

describe("npm start's API", () => {
  const { lines, log } = capture();
  let stack: Stack;
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "hatch-lognoise-"));
    const config = testConfig({
      dataDir: dir,
      databaseUrl: undefined,
      httpAddr: { host: "127.0.0.1", port: 0 },
      simAddr: { host: "127.0.0.1", port: 0 },
      simIpPrefix: "127.0.133",
      logLevel: "debug",
    });
    stack = await startStack(config, log, { api: true, simulator: true });
  });
  afterAll(async () => {
    await stack?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("logs Traefik's polls at debug and other requests at info", async () => {
    for (let i = 0; i < 5; i++) expect((await fetch(`${stack.api!.url}/traefik/config`)).status).toBe(200);
    expect((await fetch(`${stack.api!.url}/healthz`)).status).toBe(200);
    const requests = lines.filter((l) => l.msg === "request").map((l) => `${l.level} ${l.path}`);
    expect(requests).toEqual([...Array(5).fill("debug /traefik/config"), "info /healthz"]);
  });
});
