/** The wake sidecar's socket-free core: single flight, waiter cap, Host parsing, page, sizes; plus the port probe. */
import type { IncomingMessage } from "node:http";
import { createServer, type Server } from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import { formatBytes, bodyTooLargeMessage } from "../src/lifecycle/held-bytes.ts";
import { downstreamResponseHeaders, upstreamRequestHeaders } from "../src/wake/headers.ts";
import { escapeHtml, wakingPage } from "../src/wake/page.ts";
import { ReadyTimeoutError, waitForPort } from "../src/lifecycle/ready.ts";
import { isValidLabel, subdomainOf } from "../src/wake/resolve.ts";
import { HoldCounter, SingleFlight } from "../src/lifecycle/single-flight.ts";
import { freePort } from "./helpers/env.ts";

function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)));
  return { promise, resolve, reject };
}

describe("SingleFlight", () => {
  it("runs the function once for concurrent callers of one key and shares its result", async () => {
    const sf = new SingleFlight<string>();
    const gate = deferred<string>();
    let calls = 0;
    let joinedAtEnd = 0;
    const fn = async (f: { joined: number }) => {
      calls += 1;
      const v = await gate.promise;
      joinedAtEnd = f.joined;
      return v;
    };
    const all = Array.from({ length: 50 }, () => sf.run("vm_1", fn));
    expect(sf.has("vm_1")).toBe(true);
    gate.resolve("up");
    expect(await Promise.all(all)).toEqual(Array(50).fill("up"));
    expect(calls).toBe(1);
    expect(joinedAtEnd).toBe(50);
    expect(sf.has("vm_1")).toBe(false);
  });

  it("keeps keys apart", async () => {
    const sf = new SingleFlight<string>();
    const seen: string[] = [];
    const r = await Promise.all(["a", "b", "a"].map((k) => sf.run(k, async () => (seen.push(k), k.toUpperCase()))));
    expect(r).toEqual(["A", "B", "A"]);
    expect(seen.sort()).toEqual(["a", "b"]);
  });

  it("does not cache a failure: the next call after a rejection runs again", async () => {
    const sf = new SingleFlight<number>();
    let calls = 0;
    const failing = () => {
      calls += 1;
      return Promise.reject(new Error("restore failed"));
    };
    const both = await Promise.allSettled([sf.run("k", failing), sf.run("k", failing)]);
    expect(both.map((b) => b.status)).toEqual(["rejected", "rejected"]);
    expect(calls).toBe(1);
    expect(await sf.run("k", async () => (calls += 1))).toBe(2);
    expect(sf.size).toBe(0);
  });

  it("turns a synchronous throw into a rejection and still forgets the key", async () => {
    const sf = new SingleFlight<number>();
    await expect(
      sf.run("k", () => {
        throw new Error("boom");
      }),
    ).rejects.toThrow("boom");
    expect(sf.has("k")).toBe(false);
  });
});

describe("HoldCounter", () => {
  it("refuses past the cap per key, reports the total, and frees slots exactly once", () => {
    const totals: number[] = [];
    const hc = new HoldCounter(2, (n) => totals.push(n));
    const a1 = hc.acquire("a")!;
    const a2 = hc.acquire("a")!;
    expect(hc.acquire("a")).toBeUndefined();
    const b1 = hc.acquire("b");
    expect(b1).toBeTypeOf("function");
    expect(hc.count("a")).toBe(2);
    expect(hc.total).toBe(3);
    a1();
    a1();
    expect(hc.count("a")).toBe(1);
    expect(hc.acquire("a")).toBeTypeOf("function");
    a2();
    expect(totals).toEqual([1, 2, 3, 2, 3, 2]);
  });
});

describe("subdomainOf", () => {
  const base = "hatch.local";
  it.each([
    ["myapp.hatch.local", "myapp"],
    ["MyApp.Hatch.Local:9090", "myapp"],
    ["my-agent.hatch.local.", "my-agent"],
    ["a1.hatch.local:80", "a1"],
  ])("%s → %s", (host, sub) => {
    expect(subdomainOf(host, base)).toEqual({ ok: true, subdomain: sub });
  });

  it.each([
    [undefined, "missing Host header"],
    ["", "missing Host header"],
    ["hatch.local", "no subdomain in host header"],
    ["hatch.local:9090", "no subdomain in host header"],
    ["example.com", 'host "example.com" is not under the base domain "hatch.local"'],
    ["evilhatch.local", 'host "evilhatch.local" is not under the base domain "hatch.local"'],
    ["[::1]:9090", 'host "[::1]:9090" is not under the base domain "hatch.local"'],
    ["a.b.hatch.local", 'host "a.b.hatch.local" has more than one label before "hatch.local"'],
  ])("%s → %s", (host, message) => {
    expect(subdomainOf(host, base)).toEqual({ ok: false, message });
  });

  it("accepts only labels a route can have", () => {
    expect(isValidLabel("my-app1")).toBe(true);
    expect(isValidLabel("-bad")).toBe(false);
    expect(isValidLabel("a_b")).toBe(false);
    expect(isValidLabel("x".repeat(64))).toBe(false);
  });
});

describe("waking page and body limit text", () => {
  it("escapes the subdomain and reloads itself (a meta refresh only without JavaScript)", () => {
    expect(escapeHtml(`<a href="x">'&'</a>`)).toBe("&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    const html = wakingPage("my<app>", { elapsedMs: 0 });
    expect(html).toContain("<title>waking my&lt;app&gt;…</title>");
    expect(html).toContain('<noscript><meta http-equiv="refresh" content="1"></noscript>');
    expect(html).toContain("location.reload()");
    expect(html).not.toContain("<app>");
  });

  it("names the limit in binary units", () => {
    expect(formatBytes(10 * 1024 * 1024)).toBe("10 MiB");
    expect(formatBytes(64 * 1024)).toBe("64 KiB");
    expect(formatBytes(1000)).toBe("1000 bytes");
    expect(bodyTooLargeMessage(10 * 1024 * 1024)).toBe("request body exceeds 10 MiB, the most held while a VM wakes (HATCH_WAKE_MAX_BODY)");
  });
});

describe("waitForPort", () => {
  const servers: Server[] = [];
  afterAll(async () => {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  });

  it("resolves soon after the port opens (probing every ~25 ms, not a fixed sleep)", async () => {
    const port = await freePort();
    const opened = deferred<number>();
    setTimeout(() => {
      const s = createServer((c) => c.destroy());
      servers.push(s);
      s.listen(port, "127.0.0.1", () => opened.resolve(Date.now()));
    }, 200);
    const attempts = await waitForPort("127.0.0.1", port, { deadline: Date.now() + 5000 });
    const lag = Date.now() - (await opened.promise);
    expect(attempts).toBeGreaterThan(3);
    expect(lag).toBeLessThan(150);
  });

  it("rejects at the deadline, not later", async () => {
    const port = await freePort();
    const t0 = Date.now();
    await expect(waitForPort("127.0.0.1", port, { deadline: t0 + 300 })).rejects.toBeInstanceOf(ReadyTimeoutError);
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(290);
    expect(took).toBeLessThan(700);
  });

  it("stops when aborted", async () => {
    const port = await freePort();
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error("closing")), 50);
    await expect(waitForPort("127.0.0.1", port, { deadline: Date.now() + 5000, signal: ac.signal })).rejects.toThrow("closing");
  });
});

describe("header rules", () => {
  const fakeReq = (raw: string[], remote = "::ffff:10.0.0.7") => {
    const headers: Record<string, string> = {};
    for (let i = 0; i < raw.length; i += 2) headers[raw[i]!.toLowerCase()] = raw[i + 1]!;
    return { rawHeaders: raw, headers, socket: { remoteAddress: remote } } as unknown as IncomingMessage;
  };
  const asObject = (list: string[]) => {
    const o: Record<string, string[]> = {};
    for (let i = 0; i < list.length; i += 2) (o[list[i]!] ??= []).push(list[i + 1]!);
    return o;
  };

  it("drops hop-by-hop, Connection-named, secret and Expect headers; keeps Host and repeats; appends X-Forwarded-For", () => {
    const req = fakeReq([
      "Host", "App.hatch.local", "Connection", "keep-alive, X-Trace", "X-Trace", "1", "TE", "trailers",
      "Transfer-Encoding", "chunked", "X-Hatch-Wake-Secret", "s", "Expect", "100-continue", "Cookie", "a=1",
      "Cookie", "b=2", "X-Forwarded-For", "203.0.113.9", "X-Forwarded-Proto", "https", "X-Forwarded-Host", "front.example",
    ]);
    expect(asObject(upstreamRequestHeaders(req, { trustForwarded: true }))).toEqual({
      Host: ["App.hatch.local"],
      Cookie: ["a=1", "b=2"],
      "X-Forwarded-For": ["203.0.113.9, 10.0.0.7"],
      "X-Forwarded-Proto": ["https"],
      "X-Forwarded-Host": ["front.example"],
    });
    // Untrusted (embedded): the client's own X-Forwarded-* are replaced, not extended.
    expect(asObject(upstreamRequestHeaders(req, { trustForwarded: false }))).toMatchObject({
      "X-Forwarded-For": ["10.0.0.7"],
      "X-Forwarded-Proto": ["http"],
      "X-Forwarded-Host": ["App.hatch.local"],
    });
    expect(asObject(upstreamRequestHeaders(fakeReq(["Host", "a.hatch.local", "Connection", "Upgrade", "Upgrade", "websocket"]), { trustForwarded: false, upgrade: true }))).toMatchObject({
      Connection: ["Upgrade"],
      Upgrade: ["websocket"],
    });
  });

  it("drops hop-by-hop response headers and adds the extras", () => {
    const out = downstreamResponseHeaders(
      ["Content-Type", "text/plain", "Connection", "keep-alive, X-Internal", "Keep-Alive", "timeout=5", "X-Internal", "x", "Transfer-Encoding", "chunked", "Set-Cookie", "a=1", "Set-Cookie", "b=2"],
      ["Server-Timing", "wake;dur=12"],
    );
    expect(asObject(out)).toEqual({ "Content-Type": ["text/plain"], "Set-Cookie": ["a=1", "b=2"], "Server-Timing": ["wake;dur=12"] });
  });
});
