/**
 * Issue 10, items 11 and 12: with nothing trusted in front (the embedded proxy), no forwarding
 * header a client made up reaches the VM (each is dropped or overwritten with what this proxy saw);
 * and a request's Host is one, unambiguous and never removable: several Host headers, or an
 * absolute-form target naming another host, are a 400, and `Connection` cannot take away Host or
 * the body's framing.
 */
import { connect } from "node:net";
import type { IncomingMessage } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testConfig } from "../src/config.ts";
import { silentLogger } from "../src/log.ts";
import { createSimulator, type Simulator, type SimVm } from "../src/vms/simulator/index.ts";
import { upstreamRequestHeaders } from "../src/wake/headers.ts";
import { createWakeProxy, startWakeServer } from "../src/wake/proxy.ts";
import { freshDb, type TestDb } from "./helpers/db.ts";
import { fakeDirectory } from "./helpers/fakes.ts";
import { addRoute } from "./helpers/wake-fixture.ts";

// Headers through which a client can claim an address, scheme, host, port or path it does not have.
const FORGED: Record<string, string> = {
  "X-Real-IP": "6.6.6.1",
  Forwarded: "for=6.6.6.2;proto=https;host=evil.example",
  "X-Client-IP": "6.6.6.3",
  "True-Client-IP": "6.6.6.4",
  "X-Forwarded-Port": "6666",
  "X-Forwarded-Prefix": "/evil-prefix",
  "X-Forwarded-Server": "evil-server",
  "X-Forwarded-Ssl": "on-evil",
  "X-Forwarded-Scheme": "evil-scheme",
  "X-Forwarded-Uri": "/evil-uri",
  "X-Forwarded-Client-Ip": "6.6.6.5",
  "X-Forwarded-For": "6.6.6.6",
  "X-Forwarded-Proto": "evil-proto",
  "X-Forwarded-Host": "evil-host.example",
  "CF-Connecting-IP": "6.6.6.7",
  "Fastly-Client-IP": "6.6.6.8",
  "X-Cluster-Client-IP": "6.6.6.9",
  "X-Original-Forwarded-For": "6.6.6.10",
  "X-Originating-IP": "6.6.6.11",
  "X-Remote-IP": "6.6.6.12",
  "X-Remote-Addr": "6.6.6.13",
  "Client-IP": "6.6.6.14",
};
const forgedValues = Object.values(FORGED);

/** A request as node:http parses it, for the header rewriting alone. */
function fakeRequest(raw: string[], opts: { peer?: string; localPort?: number; url?: string } = {}): IncomingMessage {
  const headers: Record<string, string> = {};
  for (let i = 0; i < raw.length; i += 2) headers[raw[i]!.toLowerCase()] ??= raw[i + 1]!;
  return { rawHeaders: raw, headers, url: opts.url ?? "/", socket: { remoteAddress: opts.peer ?? "10.0.0.7", localPort: opts.localPort ?? 9090 } } as unknown as IncomingMessage;
}
const asRecord = (list: string[]) => {
  const out: [string, string][] = [];
  for (let i = 0; i < list.length; i += 2) out.push([list[i]!.toLowerCase(), list[i + 1]!]);
  return out;
};

describe("forwarding headers with nothing trusted in front", () => {
  it.each([false, true])("none a client sent survives, whatever its case (upgrade: %s)", (upgrade) => {
    for (const casing of [(s: string) => s, (s: string) => s.toLowerCase(), (s: string) => s.toUpperCase()]) {
      const raw = ["Host", "app.hatch.local", ...Object.entries(FORGED).flatMap(([k, v]) => [casing(k), v])];
      const out = asRecord(upstreamRequestHeaders(fakeRequest(raw), { trustForwarded: false, upgrade }));
      expect(out.filter(([, v]) => forgedValues.some((f) => v.includes(f)))).toEqual([]);
      const one = (name: string) => out.filter(([k]) => k === name).map(([, v]) => v);
      expect(one("x-forwarded-for")).toEqual(["10.0.0.7"]);
      expect(one("x-real-ip")).toEqual(["10.0.0.7"]);
      expect(one("x-forwarded-proto")).toEqual(["http"]);
      expect(one("x-forwarded-host")).toEqual(["app.hatch.local"]);
      expect(one("x-forwarded-port")).toEqual(["9090"]);
      expect(one("forwarded")).toEqual([]);
    }
  });

  it("behind a trusted proxy the X-Forwarded-* it set are kept (Traefik strips the client's own)", () => {
    const raw = ["Host", "app.hatch.local", "X-Forwarded-For", "1.2.3.4", "X-Forwarded-Proto", "https", "X-Real-Ip", "1.2.3.4", "X-Forwarded-Port", "443"];
    const out = asRecord(upstreamRequestHeaders(fakeRequest(raw), { trustForwarded: true }));
    expect(out).toEqual(expect.arrayContaining([["x-forwarded-for", "1.2.3.4, 10.0.0.7"], ["x-forwarded-proto", "https"], ["x-real-ip", "1.2.3.4"], ["x-forwarded-port", "443"]]));
  });

  it("Connection cannot remove Host or Content-Length (the VM would get no Host, or a body without framing)", () => {
    const raw = ["Host", "app.hatch.local", "Content-Length", "5", "Connection", "Host, Content-Length, X-Drop-Me", "X-Drop-Me", "1"];
    const out = asRecord(upstreamRequestHeaders(fakeRequest(raw), { trustForwarded: false }));
    expect(out).toEqual(expect.arrayContaining([["host", "app.hatch.local"], ["content-length", "5"]]));
    expect(out.find(([k]) => k === "x-drop-me")).toBeUndefined();
  });
});

/** Sends raw bytes on a fresh connection and returns what came back until the server closed or `ms` passed. */
function rawExchange(port: number, text: string, ms = 1500): Promise<string> {
  return new Promise((resolve) => {
    const sock = connect(port, "127.0.0.1");
    const chunks: Buffer[] = [];
    const done = () => {
      clearTimeout(timer);
      sock.destroy();
      resolve(Buffer.concat(chunks).toString("utf8"));
    };
    const timer = setTimeout(done, ms);
    sock.on("data", (c) => chunks.push(c));
    sock.on("close", done);
    sock.on("error", done);
    sock.write(text);
  });
}
const statusOf = (reply: string) => Number(/^HTTP\/1\.1 (\d{3})/.exec(reply)?.[1]);
const bodyOf = (reply: string) => JSON.parse(reply.slice(reply.indexOf("\r\n\r\n") + 4));

describe.each([true, false])("requests through the proxy (embedded: %s)", (embedded) => {
  let t: TestDb;
  let sim: Simulator;
  let vm: SimVm;
  let sub: string;
  let port: number;
  const stops: (() => Promise<void>)[] = [];
  beforeAll(async () => {
    t = await freshDb("pglite");
    sim = await createSimulator({ ipPrefix: embedded ? "127.78.11" : "127.78.12" });
    vm = await sim.createVm();
    sub = (await addRoute(t.database, vm.id)).subdomain;
    const proxy = createWakeProxy(
      { config: testConfig({ baseDomain: "hatch.local", wakePageAfterMs: 0 }), database: t.database, platform: sim.platform, directory: fakeDirectory({ platform: sim.platform }), log: silentLogger },
      { embedded },
    );
    const server = await startWakeServer(proxy, { host: "127.0.0.1", port: 0 });
    port = Number(new URL(server.url).port);
    stops.push(() => proxy.close(), () => server.close());
  });
  afterAll(async () => {
    for (const s of stops) await s();
    await sim.close();
    await t.drop();
  });

  it(embedded ? "the VM sees no forged forwarding header, and the peer as the client" : "behind Traefik the forwarding headers its front set are kept (a trusted hop)", async () => {
    if (!embedded) {
      const reply = await rawExchange(port, `GET /?rid=trusted HTTP/1.1\r\nHost: ${sub}.hatch.local\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n`);
      expect(statusOf(reply)).toBe(200);
      const seen: Record<string, string> = bodyOf(reply).headers;
      expect([seen["x-forwarded-for"], seen["x-forwarded-proto"]]).toEqual(["203.0.113.9, 127.0.0.1", "https"]);
      return;
    }
    const head = Object.entries(FORGED).map(([k, v]) => `${k}: ${v}\r\n`).join("");
    const reply = await rawExchange(port, `GET /?rid=fwd HTTP/1.1\r\nHost: ${sub}.hatch.local\r\n${head}Connection: close\r\n\r\n`);
    expect(statusOf(reply)).toBe(200);
    const seen: Record<string, string> = bodyOf(reply).headers;
    expect(Object.entries(seen).filter(([, v]) => forgedValues.some((f) => String(v).includes(f)))).toEqual([]);
    expect([seen["x-forwarded-for"], seen["x-real-ip"], seen["x-forwarded-port"]]).toEqual(["127.0.0.1", "127.0.0.1", String(port)]);
  });

  it("several Host headers are a 400, on plain requests and upgrades; one is routed", async () => {
    for (const extra of [`Host: ${sub}.hatch.local`, "Host: other.hatch.local", "host: OTHER.hatch.local"]) {
      const reply = await rawExchange(port, `GET / HTTP/1.1\r\nHost: ${sub}.hatch.local\r\n${extra}\r\nConnection: close\r\n\r\n`);
      expect([statusOf(reply), bodyOf(reply)]).toEqual([400, { error: "more than one Host header" }]);
      const upgrade = await rawExchange(port, `GET /ws HTTP/1.1\r\nHost: ${sub}.hatch.local\r\n${extra}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`);
      expect(statusOf(upgrade)).toBe(400);
    }
    const one = await rawExchange(port, `GET / HTTP/1.1\r\nHost: ${sub}.hatch.local\r\nConnection: close\r\n\r\n`);
    expect(statusOf(one)).toBe(200);
  });

  it("an absolute-form target must name the Host's host", async () => {
    const other = await rawExchange(port, `GET http://other.hatch.local/ HTTP/1.1\r\nHost: ${sub}.hatch.local\r\nConnection: close\r\n\r\n`);
    expect([statusOf(other), bodyOf(other)]).toEqual([400, { error: "the request target names another host than the Host header" }]);
    const same = await rawExchange(port, `GET http://${sub}.hatch.local/x HTTP/1.1\r\nHost: ${sub}.hatch.local\r\nConnection: close\r\n\r\n`);
    expect([statusOf(same), bodyOf(same).path]).toEqual([200, "/x"]);
  });

  it("Connection: Host leaves the VM its Host; Connection: Content-Length cannot smuggle a second request", async () => {
    const host = await rawExchange(port, `GET / HTTP/1.1\r\nHost: ${sub}.hatch.local\r\nConnection: close, Host\r\n\r\n`);
    expect([statusOf(host), bodyOf(host).headers.host]).toEqual([200, `${sub}.hatch.local`]);

    sim.resetRequestCounts(vm.id);
    const hidden = `GET /?rid=smuggled HTTP/1.1\r\nHost: ${sub}.hatch.local\r\n\r\n`;
    const reply = await rawExchange(port, `POST /?rid=outer HTTP/1.1\r\nHost: ${sub}.hatch.local\r\nConnection: Content-Length\r\nContent-Length: ${hidden.length}\r\n\r\n${hidden}`);
    expect(statusOf(reply)).toBe(200);
    expect(bodyOf(reply).body_length).toBe(hidden.length);
    await new Promise((r) => setTimeout(r, 100));
    expect(sim.requestCounts(vm.id)).toEqual({ outer: 1 });
  });
});
