/**
 * A VM that cuts connections before answering, as a sleep made on the platform does to a request in
 * flight: a bodyless GET is tried again (three more times at most, after asking what the VM is),
 * a request with a body never is.
 */
import { createServer, type Server } from "node:net";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testConfig } from "../src/config.ts";
import { silentLogger } from "../src/log.ts";
import type { Vm, VmPlatform } from "../src/vms/platform.ts";
import { createWakeProxy, startWakeServer } from "../src/wake/proxy.ts";
import { freshDb, type TestDb } from "./helpers/db.ts";
import { fakeDirectory } from "./helpers/fakes.ts";
import { addRoute, call } from "./helpers/wake-fixture.ts";

const IP = "127.78.31.1";

describe("a VM that resets connections before answering", () => {
  const vm: Vm = { id: "vm_resets", state: "running", guest_ip: IP };
  const platform: VmPlatform = { kind: "hatch", get: async () => vm, list: async () => [vm], wake: async () => vm, sleep: async () => vm };
  let t: TestDb;
  let guest: Server;
  let port: number;
  let proxyUrl: string;
  let host: string;
  /** Connections the guest will reset after reading a request, before it answers the next one. */
  let resetsLeft = 0;
  let connections = 0;
  const stops: (() => Promise<unknown>)[] = [];

  beforeAll(async () => {
    t = await freshDb("pglite");
    guest = createServer((sock) => {
      connections++;
      sock.once("data", () => {
        if (resetsLeft > 0) {
          resetsLeft--;
          sock.resetAndDestroy();
        } else sock.end("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
      });
    });
    await new Promise<void>((r) => guest.listen(0, IP, r));
    port = (guest.address() as AddressInfo).port;
    host = `${(await addRoute(t.database, vm.id, { port })).subdomain}.hatch.local`;
    const proxy = createWakeProxy(
      { config: testConfig({ baseDomain: "hatch.local", wakePageAfterMs: 0 }), database: t.database, platform, directory: fakeDirectory({ platform }), log: silentLogger },
      { embedded: true },
    );
    const server = await startWakeServer(proxy, { host: "127.0.0.1", port: 0 });
    proxyUrl = server.url;
    stops.push(() => server.close(), () => proxy.close(), () => new Promise((r) => guest.close(r)), () => t.drop());
  });
  afterAll(async () => {
    for (const stop of stops) await stop();
  });

  it("a GET cut twice is answered by the third connection", async () => {
    [resetsLeft, connections] = [2, 0];
    const r = await call(proxyUrl, { host, path: "/twice" });
    expect([r.status, r.text, connections]).toEqual([200, "ok", 3]);
  });

  it("a GET cut every time gets its 502 after three more tries, not a loop", async () => {
    [resetsLeft, connections] = [100, 0];
    const r = await call(proxyUrl, { host, path: "/always" });
    expect([r.status, JSON.parse(r.text), connections]).toEqual([502, { error: `vm port ${port} closed the connection before answering` }, 4]);
  });

  it("a POST cut once is not sent again: it may have run", async () => {
    [resetsLeft, connections] = [1, 0];
    const r = await call(proxyUrl, { host, path: "/post", method: "POST", body: "x=1" });
    expect([r.status, connections]).toEqual([502, 1]);
  });
});
