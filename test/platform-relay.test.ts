/**
 * The relay of Hatch's other calls (issue 18): bodies up to 10 MiB (a large `user_data`), no total
 * deadline for `exec`, a snapshot or stop never cut by us (nor by its caller leaving: Hatch would
 * leave the VM paused), and the usual deadline for other calls.
 */
import { createHash } from "node:crypto";
import { createServer, request, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Hono } from "hono";
import { serve } from "@hono/node-server";
import { platformProxy, RELAY_MAX_BODY } from "../src/api/platform-proxy.ts";
import { AppError } from "../src/errors.ts";
import { testConfig } from "../src/config.ts";
import { silentLogger } from "../src/log.ts";
import { fakeDirectory } from "./helpers/fakes.ts";
import { buildOpenApiDocument } from "../src/api/openapi.ts";

/** What the fake platform saw of each call: its body's hash and length, and whether it ran to the end. */
interface Seen {
  path: string;
  sha256: string;
  length: number;
  finished: boolean;
  /** The relay closed the call before the platform answered. */
  cut: boolean;
}

describe("the relay to the VM platform", () => {
  let platform: Server;
  let relay: { close(): void };
  let relayPort: number;
  const seen: Seen[] = [];
  // Calls to these paths answer after this many ms.
  const slow: Record<string, number> = { "/vms/vm_a/exec": 1500, "/vms/vm_a/snapshot": 1500, "/vms/vm_a/restore": 1500 };

  beforeAll(async () => {
    platform = createServer((req: IncomingMessage, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const body = Buffer.concat(chunks);
        const entry: Seen = { path: req.url ?? "", sha256: createHash("sha256").update(body).digest("hex"), length: body.length, finished: false, cut: false };
        seen.push(entry);
        res.once("close", () => {
          if (!entry.finished) entry.cut = true;
        });
        const delay = slow[req.url ?? ""] ?? 0;
        setTimeout(() => {
          if (entry.cut) return;
          entry.finished = true;
          res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ sha256: entry.sha256, length: entry.length }));
        }, delay);
      });
    });
    await new Promise<void>((r) => platform.listen(0, "127.0.0.1", r));
    const base = `http://127.0.0.1:${(platform.address() as AddressInfo).port}`;
    // Deadlines far below the slow calls: only the calls exempt from them can succeed.
    const config = { ...testConfig(), platformTimeoutMs: 300, wakeTimeoutMs: 300, platformSleepTimeoutMs: 10_000 };
    const app = new Hono();
    app.onError((err, c) => (err instanceof AppError ? c.json({ error: err.message }, err.status as 400) : c.json({ error: "internal" }, 500)));
    app.all("/vms/*", platformProxy({ config, baseUrl: base, directory: fakeDirectory(), log: silentLogger }));
    const server = serve({ fetch: app.fetch, hostname: "127.0.0.1", port: 0 });
    await new Promise<void>((r) => server.once("listening", () => r()));
    relayPort = (server.address() as AddressInfo).port;
    relay = server;
  });
  afterAll(async () => {
    relay?.close();
    await new Promise((r) => platform?.close(r));
  });

  const call = (method: string, path: string, body?: Buffer, opts: { chunked?: boolean; abortAfterMs?: number } = {}) =>
    new Promise<{ status: number; json: any }>((resolve, reject) => {
      const headers: Record<string, string | number> = { "content-type": "application/json" };
      if (body && !opts.chunked) headers["content-length"] = body.length;
      const req = request({ host: "127.0.0.1", port: relayPort, method, path, headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(chunks).toString("utf8") || "null") }));
      });
      req.on("error", reject);
      if (opts.abortAfterMs !== undefined) {
        setTimeout(() => {
          req.destroy();
          resolve({ status: 0, json: null });
        }, opts.abortAfterMs);
      }
      if (body && opts.chunked) {
        // Sent in pieces without a length: the relay counts as it reads.
        for (let i = 0; i < body.length; i += 1 << 20) req.write(body.subarray(i, i + (1 << 20)));
        req.end();
      } else req.end(body);
    });

  it("relays a 9 MiB body intact, with or without a declared length", async () => {
    const body = Buffer.alloc(9 * 1024 * 1024, 7);
    const hash = createHash("sha256").update(body).digest("hex");
    for (const chunked of [false, true]) {
      const r = await call("POST", "/vms", body, { chunked });
      expect(r.status).toBe(200);
      expect(r.json).toEqual({ sha256: hash, length: body.length });
    }
  });

  it("refuses a body over 10 MiB with a 413 naming the limit, and relays nothing", async () => {
    const before = seen.length;
    const body = Buffer.alloc(RELAY_MAX_BODY + 1, 1);
    for (const chunked of [false, true]) {
      const r = await call("POST", "/vms", body, { chunked });
      expect(r.status).toBe(413);
      expect(r.json.error).toBe("request body too large (limit 10 MiB)");
    }
    expect(seen.length).toBe(before);
  });

  it("gives exec no total deadline, and a snapshot the long one, while other calls keep theirs", async () => {
    const exec = await call("POST", "/vms/vm_a/exec", Buffer.from('{"command":"sleep 1"}'));
    expect(exec.status).toBe(200);
    const snap = await call("POST", "/vms/vm_a/snapshot");
    expect(snap.status).toBe(200);
    const restore = await call("POST", "/vms/vm_a/restore");
    expect(restore.status).toBe(504);
    expect(restore.json.error).toBe("VM platform did not answer within 300ms");
  });

  it("lets a snapshot run to its end when its caller leaves", async () => {
    const before = seen.length;
    const r = await call("POST", "/vms/vm_a/snapshot", undefined, { abortAfterMs: 200 });
    expect(r.status).toBe(0);
    await new Promise((res) => setTimeout(res, 1800));
    const entry = seen.slice(before).find((s) => s.path === "/vms/vm_a/snapshot");
    expect(entry).toMatchObject({ finished: true, cut: false });
  });

  it("lists exec and connect in the OpenAPI document, as relayed calls", () => {
    const paths = buildOpenApiDocument(testConfig()).paths as Record<string, Record<string, { summary: string; requestBody?: unknown }>>;
    for (const p of ["/vms/{vm_id}/exec", "/vms/{vm_id}/connect"]) {
      expect(paths[p]?.post?.summary).toMatch(/relayed to the VM platform/);
      expect(paths[p]?.post?.requestBody).toBeDefined();
    }
  });
});
