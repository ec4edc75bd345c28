import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createHatchClient } from "../src/vms/hatch-client.ts";
import { PlatformUnavailableError, WakeError, type VmPlatform } from "../src/vms/platform.ts";
import { createSimulator, type Simulator } from "../src/vms/simulator/index.ts";

const SECRET = "sk-very-secret-service-key";

describe("Hatch client against the simulator over real HTTP", () => {
  let sim: Simulator;
  let api: { url: string; close(): Promise<void> };
  let client: VmPlatform;
  beforeAll(async () => {
    sim = await createSimulator({ ipPrefix: "127.0.42", restoreMs: 100 });
    api = await sim.listen({ port: 0 });
    client = createHatchClient({ baseUrl: api.url + "/", timeoutMs: 2000, pollMs: 50 });
  });
  afterAll(() => sim.close());

  it("gets and lists VMs; an unknown VM is undefined", async () => {
    const vm = await sim.createVm();
    expect(client.kind).toBe("hatch");
    expect(api.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(await client.get(vm.id)).toEqual(vm);
    expect(await client.get("vm_doesnotexist")).toBeUndefined();
    expect((await client.list()).map((v) => v.id)).toContain(vm.id);
    await sim.deleteVm(vm.id);
  });

  it("wakes a snapshotted VM with restore and a stopped one with start", async () => {
    const vm = await sim.createVm();
    expect(await client.wake(vm.id)).toMatchObject({ id: vm.id, state: "running", wake_count: 0 });

    await sim.snapshot(vm.id);
    const t0 = performance.now();
    expect(await client.wake(vm.id)).toMatchObject({ state: "running", wake_count: 1, boot_count: 2 });
    expect(performance.now() - t0).toBeGreaterThanOrEqual(100);
    expect((await fetch(`http://${vm.guest_ip}:8080/`)).status).toBe(200);

    await sim.stop(vm.id);
    expect(await client.wake(vm.id)).toMatchObject({ state: "running", wake_count: 2, boot_count: 3 });
    await sim.deleteVm(vm.id);
  });

  it("concurrent wakes end running with a single restore", async () => {
    const vm = await sim.createVm({ restore_ms: 300 });
    await sim.snapshot(vm.id);
    const all = await Promise.all(Array.from({ length: 5 }, () => client.wake(vm.id)));
    expect(all.map((v) => v.state)).toEqual(["running", "running", "running", "running", "running"]);
    expect(sim.getVm(vm.id)?.wake_count).toBe(1);
    await sim.deleteVm(vm.id);
  });

  it("maps wake failures: not_found, failed (with the platform's text), timeout, conflict", async () => {
    await expect(client.wake("vm_doesnotexist")).rejects.toMatchObject({ name: "WakeError", reason: "not_found", message: "vm not found" });

    const vm = await sim.createVm({ restore_ms: 0 });
    await sim.snapshot(vm.id);
    sim.failNextRestores(vm.id, 1);
    const err = await client.wake(vm.id).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WakeError);
    expect(err).toMatchObject({ reason: "failed", message: "failed to wake vm: restore failed: injected failure" });
    expect(sim.getVm(vm.id)?.state).toBe("snapshotted");

    const slow = await sim.createVm({ restore_ms: 3000 });
    await sim.snapshot(slow.id);
    const t0 = performance.now();
    await expect(client.wake(slow.id, { timeoutMs: 250 })).rejects.toMatchObject({ reason: "timeout", message: "vm did not wake within 250 ms" });
    expect(performance.now() - t0).toBeLessThan(1500);
    await sim.deleteVm(vm.id);
    await sim.deleteVm(slow.id);
  });

  it("forwards the user's key so the platform scopes VMs", async () => {
    const mine = await sim.createVm({ ownerKey: "user-a" });
    const theirs = await sim.createVm({ ownerKey: "user-b" });
    const scoped = createHatchClient({ baseUrl: api.url, apiKey: SECRET, timeoutMs: 2000 });
    expect(await scoped.get(mine.id, { userKey: "user-a" })).toMatchObject({ id: mine.id });
    expect(await scoped.get(theirs.id, { userKey: "user-a" })).toBeUndefined();
    expect((await scoped.list({ userKey: "user-a" })).map((v) => v.id)).toContain(mine.id);
    expect((await scoped.list({ userKey: "user-a" })).map((v) => v.id)).not.toContain(theirs.id);
    // The service key is someone else: it does not see user-a's VM.
    expect(await scoped.get(mine.id)).toBeUndefined();
    await sim.snapshot(theirs.id);
    await expect(scoped.wake(theirs.id, { userKey: "user-a" })).rejects.toMatchObject({ reason: "not_found" });
    expect(sim.getVm(theirs.id)?.state).toBe("snapshotted");
    await sim.deleteVm(mine.id);
    await sim.deleteVm(theirs.id);
  });
});

describe("Hatch client against broken platforms (stub servers)", () => {
  let server: Server;
  let url: string;
  let handler: (req: IncomingMessage, res: ServerResponse) => void = () => {};
  const seen: { method: string; url: string; authorization: string | undefined }[] = [];
  beforeAll(async () => {
    server = createServer((req, res) => {
      seen.push({ method: req.method!, url: req.url!, authorization: req.headers.authorization });
      handler(req, res);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });

  const json = (res: ServerResponse, status: number, body: unknown) => {
    res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
  };
  const client = (timeoutMs = 300) => createHatchClient({ baseUrl: url, apiKey: SECRET, timeoutMs, pollMs: 20 });
  const failure = async (p: Promise<unknown>) => {
    const err = await p.then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    if (!err) throw new Error("expected a rejection");
    expect(err.message).not.toContain(SECRET);
    expect(JSON.stringify(err)).not.toContain(SECRET);
    return err;
  };

  it("a platform that hangs → PlatformUnavailableError within the timeout", async () => {
    handler = () => {}; // never answers
    const t0 = performance.now();
    const err = await failure(client(300).get("vm_a"));
    const elapsed = performance.now() - t0;
    expect(err).toBeInstanceOf(PlatformUnavailableError);
    expect(err.message).toBe("VM platform unavailable: GET /vms/vm_a timed out after 300 ms");
    expect(elapsed).toBeGreaterThanOrEqual(290);
    expect(elapsed).toBeLessThan(1500);
    const listErr = await failure(client(200).list());
    expect(listErr.message).toBe("VM platform unavailable: GET /vms timed out after 200 ms");
    const wakeErr = await failure(client(200).wake("vm_a"));
    expect(wakeErr).toMatchObject({ reason: "timeout", message: "vm did not wake within 200 ms" });
  });

  it("sends the key as a Bearer token; 5xx → PlatformUnavailableError without the key", async () => {
    seen.length = 0;
    handler = (req, res) => json(res, 500, { error: `database down (auth was ${req.headers.authorization})` });
    const err = await failure(client().get("vm_a"));
    expect(err).toBeInstanceOf(PlatformUnavailableError);
    expect(err.message).toBe("VM platform unavailable: GET /vms/vm_a answered 500: database down (auth was Bearer [redacted])");
    expect(seen).toEqual([{ method: "GET", url: "/vms/vm_a", authorization: `Bearer ${SECRET}` }]);

    handler = (_req, res) => res.writeHead(502).end("bad gateway");
    expect((await failure(client().list())).message).toBe("VM platform unavailable: GET /vms answered 502");
    const wakeErr = await failure(client().wake("vm_a"));
    expect(wakeErr).toMatchObject({ reason: "failed", message: "failed to wake vm: VM platform unavailable: GET /vms/vm_a answered 502" });

    const userErr = await failure(createHatchClient({ baseUrl: url, timeoutMs: 300 }).get("vm_a", { userKey: "user-key-123" }));
    expect(userErr.message).toBe("VM platform unavailable: GET /vms/vm_a answered 502");
    expect(seen.at(-1)?.authorization).toBe("Bearer user-key-123");
  });

  it("connection refused and malformed answers are PlatformUnavailableError, not crashes", async () => {
    const dead = createServer();
    await new Promise<void>((r) => dead.listen(0, "127.0.0.1", r));
    const deadUrl = `http://127.0.0.1:${(dead.address() as AddressInfo).port}`;
    await new Promise((r) => dead.close(r));
    const refused = await failure(createHatchClient({ baseUrl: deadUrl, apiKey: SECRET, timeoutMs: 500 }).list());
    expect(refused).toBeInstanceOf(PlatformUnavailableError);
    expect(refused.message).toBe("VM platform unavailable: GET /vms failed (ECONNREFUSED)");

    handler = (_req, res) => json(res, 200, { id: "vm_a" });
    expect((await failure(client().get("vm_a"))).message).toBe("VM platform unavailable: invalid VM object from GET /vms/vm_a");
    handler = (_req, res) => json(res, 200, { id: "vm_a", state: "running", guest_ip: 7 });
    expect((await failure(client().get("vm_a"))).message).toBe("VM platform unavailable: invalid VM object from GET /vms/vm_a");
    // A VM made with enable_network false has no guest_ip on Hatch: valid, and followed without an address.
    handler = (_req, res) => json(res, 200, { id: "vm_a", state: "running" });
    expect(await client().get("vm_a")).toEqual({ id: "vm_a", state: "running" });
    handler = (_req, res) => res.writeHead(200).end("<html>");
    expect((await failure(client().list())).message).toBe("VM platform unavailable: invalid VM list from GET /vms");
    handler = (_req, res) => json(res, 200, null); // Go's empty slice
    expect(await client().list()).toEqual([]);
    handler = (_req, res) => json(res, 200, [{ id: "vm_a", state: "hibernating", guest_ip: "10.0.0.2" }]);
    expect(await client().list()).toEqual([{ id: "vm_a", state: "error", platform_state: "hibernating", guest_ip: "10.0.0.2" }]);
  });

  it("a platform without /start → WakeError unsupported; 409 → conflict with the platform's text", async () => {
    const stopped = { id: "vm_s", state: "stopped", guest_ip: "127.0.0.9" };
    for (const missing of [404, 405]) {
      handler = (req, res) => {
        if (req.method === "GET" && req.url === "/vms/vm_s") return json(res, 200, stopped);
        if (missing === 404) return res.writeHead(404, { "content-type": "text/plain" }).end("404 page not found");
        return json(res, 405, { error: "method not allowed" });
      };
      const err = await failure(client().wake("vm_s"));
      expect(err).toBeInstanceOf(WakeError);
      expect(err).toMatchObject({ reason: "unsupported", message: "cannot start a stopped VM on this platform" });
    }
    // A 404 from /start because the VM vanished meanwhile is not_found, not "unsupported".
    let gets = 0;
    handler = (req, res) => {
      if (req.method === "GET") return (gets += 1) === 1 ? json(res, 200, stopped) : json(res, 404, { error: "not found" });
      json(res, 404, { error: "not found" });
    };
    expect(await failure(client().wake("vm_s"))).toMatchObject({ reason: "not_found" });

    seen.length = 0;
    handler = (req, res) => {
      if (req.method === "GET") return json(res, 200, { id: "vm_e", state: "snapshotted", guest_ip: "127.0.0.9" });
      json(res, 409, { error: "vm is locked by another operation" });
    };
    expect(await failure(client().wake("vm_e"))).toMatchObject({ reason: "conflict", message: "vm is locked by another operation" });
    expect(seen.map((s) => `${s.method} ${s.url}`)).toEqual(["GET /vms/vm_e", "POST /vms/vm_e/restore", "GET /vms/vm_e"]);

    handler = (req, res) => json(res, 200, { id: "vm_x", state: "error", guest_ip: "127.0.0.9" });
    expect(await failure(client().wake("vm_x"))).toMatchObject({
      reason: "conflict",
      message: "vm must be snapshotted to restore (current state: error)",
    });

    handler = (req, res) => {
      if (req.method === "GET") return json(res, 200, { id: "vm_f", state: "snapshotted", guest_ip: "127.0.0.9" });
      json(res, 500, { error: `restore failed: firecracker exited (key ${SECRET})` });
    };
    expect(await failure(client().wake("vm_f"))).toMatchObject({
      reason: "failed",
      message: "failed to wake vm: restore failed: firecracker exited (key [redacted])",
    });
  });
});
