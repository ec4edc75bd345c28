/**
 * Issue 10, item 10: request bodies held while VMs wake have one ceiling per process
 * (HATCH_WAKE_MAX_BUFFERED), across VMs, declared or chunked; past it a request gets 503 with
 * Retry-After at once (no wake started for it, its upload discarded), and every byte is given back
 * when its request ends, however it ends.
 */
import { randomBytes } from "node:crypto";
import { request } from "node:http";
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigError, loadConfig, testConfig } from "../src/config.ts";
import { silentLogger } from "../src/log.ts";
import { createSimulator, type Simulator } from "../src/vms/simulator/index.ts";
import { createWakeProxy, startWakeServer, type WakeProxy } from "../src/wake/proxy.ts";
import { freshDb, type TestDb } from "./helpers/db.ts";
import { fakeDirectory } from "./helpers/fakes.ts";
import { addRoute, call, sha256 } from "./helpers/wake-fixture.ts";

const MiB = 1024 * 1024;

describe("HATCH_WAKE_MAX_BUFFERED", () => {
  it("defaults to 64 MiB, reads sizes, and must hold at least one body of HATCH_WAKE_MAX_BODY", () => {
    expect(loadConfig({}).wakeMaxBuffered).toBe(64 * MiB);
    expect(loadConfig({ HATCH_WAKE_MAX_BUFFERED: "256MiB" }).wakeMaxBuffered).toBe(256 * MiB);
    expect(() => loadConfig({ HATCH_WAKE_MAX_BUFFERED: "lots" })).toThrow('HATCH_WAKE_MAX_BUFFERED="lots": expected a size in bytes such as 10485760, 64KiB or 10MiB');
    expect(() => loadConfig({ HATCH_WAKE_MAX_BUFFERED: "5MiB" })).toThrow(ConfigError);
    expect(() => loadConfig({ HATCH_WAKE_MAX_BUFFERED: "5MiB" })).toThrow('HATCH_WAKE_MAX_BUFFERED="5MiB": expected at least HATCH_WAKE_MAX_BODY (10MiB)');
    expect(loadConfig({ HATCH_WAKE_MAX_BUFFERED: "5MiB", HATCH_WAKE_MAX_BODY: "1MiB" }).wakeMaxBuffered).toBe(5 * MiB);
  });
});

describe("the ceiling on held bodies", () => {
  let t: TestDb;
  let sim: Simulator;
  let proxy: WakeProxy;
  let url: string;
  let stop: () => Promise<void>;
  beforeAll(async () => {
    t = await freshDb("pglite");
    sim = await createSimulator({ ipPrefix: "127.78.10", restoreMs: 1200 });
    const config = testConfig({ baseDomain: "hatch.local", wakePageAfterMs: 0, wakeMaxBody: 2 * MiB, wakeMaxBuffered: 3 * MiB });
    proxy = createWakeProxy({ config, database: t.database, platform: sim.platform, directory: fakeDirectory({ platform: sim.platform }), log: silentLogger }, { embedded: true });
    const server = await startWakeServer(proxy, { host: "127.0.0.1", port: 0 });
    url = server.url;
    stop = async () => {
      await proxy.close();
      await server.close();
    };
  });
  afterAll(async () => {
    await stop();
    await sim.close();
    await t.drop();
  });

  const held = async () => Number(/^hatch_wake_held_body_bytes (\d+)/m.exec(await proxy.registry.metrics())?.[1]);
  async function sleepingRoute() {
    const vm = await sim.createVm();
    await sim.snapshot(vm.id);
    return { vm, host: `${(await addRoute(t.database, vm.id)).subdomain}.hatch.local` };
  }

  it("declared bodies across two sleeping VMs: those that fit are held and replayed intact, the next gets 503 at once without a wake", async () => {
    const a = await sleepingRoute();
    const b = await sleepingRoute();
    const bodies = [randomBytes(MiB), randomBytes(MiB), randomBytes(MiB)];
    const first = [call(url, { host: a.host, method: "POST", body: bodies[0] }), call(url, { host: b.host, method: "POST", body: bodies[1] }), call(url, { host: a.host, method: "POST", body: bodies[2] })];
    await expect.poll(held, { timeout: 2000, interval: 20 }).toBe(3 * MiB);
    const c = await sleepingRoute();
    const started = performance.now();
    const refused = await call(url, { host: c.host, method: "POST", body: randomBytes(MiB / 2) });
    expect(performance.now() - started).toBeLessThan(500);
    expect([refused.status, refused.headers["retry-after"], refused.json()]).toEqual([
      503,
      "2",
      { error: "too many request bodies held while VMs wake (HATCH_WAKE_MAX_BUFFERED=3 MiB): try again shortly" },
    ]);
    expect(sim.getVm(c.vm.id)!.state).toBe("snapshotted");
    const answers = await Promise.all(first);
    expect(answers.map((r) => [r.status, r.json().body_sha256])).toEqual(bodies.map((body) => [200, sha256(body)]));
    await expect.poll(held, { timeout: 2000, interval: 20 }).toBe(0);
    // The ceiling is free again: the refused VM's request goes through now.
    const again = await call(url, { host: c.host, method: "POST", body: "retry" });
    expect([again.status, again.json().body_length]).toEqual([200, 5]);
  });

  it("chunked bodies count as they arrive: the one that would pass the ceiling is refused mid-upload", async () => {
    const a = await sleepingRoute();
    const big = randomBytes(2 * MiB);
    const first = call(url, { host: a.host, method: "POST", body: big, chunked: 64 * 1024 });
    await expect.poll(held, { timeout: 2000, interval: 20 }).toBe(2 * MiB);
    const second = await call(url, { host: a.host, method: "POST", body: randomBytes(2 * MiB), chunked: 64 * 1024 });
    expect([second.status, second.headers["retry-after"]]).toEqual([503, "2"]);
    const ok = await first;
    expect([ok.status, ok.json().body_sha256]).toEqual([200, sha256(big)]);
    await expect.poll(held, { timeout: 2000, interval: 20 }).toBe(0);
  });

  it("a refused client that uploads slowly is not cut off: it sends its whole body and reads its answer", async () => {
    const a = await sleepingRoute();
    // Over the per-body limit (2 MiB here): refused at once with 413, then the upload is discarded.
    // 3 MiB in 48 KiB pieces every 50 ms takes about 3 s, longer than any fixed discard window.
    // A raw socket: Node's own client would close its side as soon as the answer is complete.
    const total = 3 * MiB;
    const piece = 48 * 1024;
    const { port } = new URL(url);
    const outcome = await new Promise<{ answer: string; sent: number; error?: string; closedBeforeAllSent: boolean }>((resolve) => {
      let answer = "";
      let sent = 0;
      let done = false;
      const socket = connect(Number(port), "127.0.0.1", () => {
        socket.write(`POST / HTTP/1.1\r\nHost: ${a.host}\r\nContent-Length: ${total}\r\n\r\n`);
        const tick = setInterval(() => {
          if (done) return clearInterval(tick);
          const n = Math.min(piece, total - sent);
          socket.write(Buffer.alloc(n, 1));
          sent += n;
          if (sent >= total) clearInterval(tick);
        }, 50);
      });
      socket.setEncoding("latin1");
      socket.on("data", (c) => (answer += c));
      const finish = (error?: string) => {
        if (done) return;
        done = true;
        resolve({ answer: answer.split("\r\n")[0]!, sent, closedBeforeAllSent: sent < total, ...(error && { error }) });
      };
      socket.on("error", (err) => finish((err as NodeJS.ErrnoException).code ?? err.message));
      socket.on("end", () => finish());
      socket.on("close", () => finish());
    });
    expect(outcome).toEqual({ answer: "HTTP/1.1 413 Payload Too Large", sent: total, closedBeforeAllSent: false });
    expect(sim.getVm(a.vm.id)!.state).toBe("snapshotted");
  }, 20_000);

  it.each([
    ["mid-wake (the whole body sent)", MiB],
    ["mid-upload (half of it sent)", MiB / 2],
  ])("a client that leaves %s gives its bytes back", async (_what, sent) => {
    const a = await sleepingRoute();
    const req = request(`${url}/`, { method: "POST", headers: { host: a.host, "content-length": String(MiB) }, agent: false });
    const closed = new Promise((r) => req.on("close", r));
    req.on("error", () => {});
    req.write(randomBytes(sent));
    // A declared length is taken whole as soon as the request is routed.
    await expect.poll(held, { timeout: 2000, interval: 20 }).toBe(MiB);
    req.destroy();
    await closed;
    await expect.poll(held, { timeout: 2000, interval: 20 }).toBe(0);
  });
});
