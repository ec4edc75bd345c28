/**
 * Every process's /metrics: the route API's (merged with its sidecar's and sleeper's registries)
 * and the standalone sidecar's own, each with prom-client's process and Node.js metrics and
 * hatch_build_info, every family exactly once. Also the proxy's JSON answers to requests Node's
 * parser would otherwise answer with an empty body.
 */
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { silentLogger } from "../src/log.ts";
import { startStack, type Stack } from "../src/stack.ts";
import { call } from "./helpers/wake-fixture.ts";
import { standaloneSimulator, stackConfig, stackDatabase, stackPorts, startSleepStack } from "./helpers/stack.ts";

const VERSION = (JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }).version;
const SECRET = "metrics-test-wake-secret";
const RUNTIME_FAMILIES = ["process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "nodejs_eventloop_lag_seconds", "nodejs_heap_size_used_bytes", "nodejs_gc_duration_seconds", "hatch_build_info"];

/** The families a text exposition declares, in order (one `# TYPE` line each). */
const families = (text: string) => [...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!);

/** A raw HTTP/1.1 request: what a client without a Host header sends. */
function raw(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1", () => socket.write(text));
    let out = "";
    socket.setEncoding("utf8");
    socket.on("data", (c) => (out += c));
    socket.on("end", () => resolve(out));
    socket.on("error", reject);
  });
}

describe("runtime metrics on every process", { timeout: 60_000 }, () => {
  let sim: Awaited<ReturnType<typeof standaloneSimulator>>;
  let db: Awaited<ReturnType<typeof stackDatabase>>;
  let api: Stack;
  let sidecar: Stack;

  beforeAll(async () => {
    sim = await standaloneSimulator("127.88.4");
    db = await stackDatabase("pglite");
    // The route API with its sidecar in one process (npm start with Traefik in front), and a
    // standalone sidecar (`hatch-proxy wake`) on a database of its own.
    const config = stackConfig(await stackPorts(), { ...db.overrides, hatchApiUrl: sim.url, wakeSecret: SECRET });
    api = await startSleepStack(config, "traefik");
    const other = await stackDatabase("pglite");
    const sidecarConfig = stackConfig(await stackPorts(), { ...other.overrides, hatchApiUrl: sim.url, wakeSecret: SECRET });
    sidecar = await startStack(sidecarConfig, silentLogger, { wake: true });
    sidecar.defer(() => other.drop());
  });
  afterAll(async () => {
    await sidecar?.close();
    await api?.close();
    await db?.drop();
    await sim?.close();
  });

  it("the route API's /metrics has the process's metrics and build info once, beside the sidecar's and sleeper's", async () => {
    const res = await fetch(`${api.api!.url}/metrics`);
    expect(res.status).toBe(200);
    const text = await res.text();
    const names = families(text);
    expect(names).toEqual(expect.arrayContaining([...RUNTIME_FAMILIES, "hatch_api_requests_total", "hatch_wakes_total", "hatch_sleeps_total"]));
    expect(names.filter((n, i) => names.indexOf(n) !== i)).toEqual([]);
    expect(text).toContain(`hatch_build_info{version="${VERSION}",node="${process.version}"} 1\n`);
    expect(Number(/^process_resident_memory_bytes (\d+)/m.exec(text)?.[1])).toBeGreaterThan(10 * 1024 * 1024);
  });

  it("the standalone sidecar serves its own /metrics to a scrape addressed to it, without the wake secret", async () => {
    const res = await fetch(`${sidecar.wake!.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/plain/);
    const text = await res.text();
    const names = families(text);
    expect(names).toEqual(expect.arrayContaining([...RUNTIME_FAMILIES, "hatch_wakes_total", "hatch_wake_waiters", "hatch_proxy_requests_total"]));
    expect(names.filter((n, i) => names.indexOf(n) !== i)).toEqual([]);
    expect(names).not.toContain("hatch_api_requests_total");
    expect(text).toContain(`hatch_build_info{version="${VERSION}",node="${process.version}"} 1\n`);
  });

  it("a request for a route's /metrics is a request for the route: proxied (here refused without the secret), never the sidecar's", async () => {
    const res = await call(sidecar.wake!.url, { host: "myapp.hatch.local", path: "/metrics" });
    expect([res.status, res.json()]).toEqual([403, { error: "missing or invalid X-Hatch-Wake-Secret header" }]);
    const other = await call(sidecar.wake!.url, { host: "myapp.hatch.local", path: "/metrics", headers: { "x-hatch-wake-secret": SECRET } });
    expect([other.status, other.json()]).toEqual([404, { error: 'no route for subdomain "myapp"' }]);
  });

  it("the proxy answers a request without a Host header, and a malformed one, with its JSON error", async () => {
    const port = sidecar.wake!.port;
    const noHost = await raw(port, `GET / HTTP/1.1\r\nX-Hatch-Wake-Secret: ${SECRET}\r\nConnection: close\r\n\r\n`);
    expect(noHost).toMatch(/^HTTP\/1\.1 400 /);
    expect(noHost).toMatch(/content-type: application\/json/i);
    expect(noHost.split("\r\n\r\n")[1]).toBe('{"error":"missing Host header"}');
    const malformed = await raw(port, "GET / HTTP/1.1\r\nHost hatch\r\n\r\n");
    expect(malformed).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(malformed.split("\r\n\r\n")[1]).toBe('{"error":"malformed request"}');
  });
});
