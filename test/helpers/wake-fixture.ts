/** Shared pieces of the wake sidecar tests: a cache-only VM directory, a raw HTTP client, route rows. */
import { createHash, randomBytes } from "node:crypto";
import { request, type IncomingHttpHeaders } from "node:http";
import type { Database } from "../../src/db/client.ts";
import { insertRoute } from "../../src/db/routes.repo.ts";
import type { Vm, VmDirectory, VmPlatform } from "../../src/vms/platform.ts";

/**
 * A VmDirectory that only changes when asked (refreshOne/record), never by polling: tests can make
 * it stale on purpose (a VM snapshotted behind its back still looks running).
 */
export function cacheOnlyDirectory(platform: VmPlatform): VmDirectory & { refreshes: number } {
  const vms = new Map<string, Vm>();
  const listeners = new Set<() => void>();
  let version = 0;
  const changed = () => {
    version += 1;
    for (const l of listeners) l();
  };
  const dir = {
    refreshes: 0,
    peek: (id: string) => vms.get(id),
    all: () => vms,
    async refreshOne(id: string) {
      dir.refreshes += 1;
      const vm = await platform.get(id);
      if (vm) vms.set(id, { ...vm });
      else vms.delete(id);
      changed();
      return vm ? { ...vm } : undefined;
    },
    async refreshAll() {
      for (const vm of await platform.list()) vms.set(vm.id, { ...vm });
      changed();
    },
    record(vm: Vm) {
      vms.set(vm.id, { ...vm });
      changed();
    },
    onChange(l: () => void) {
      listeners.add(l);
      return () => listeners.delete(l);
    },
    get version() {
      return version;
    },
    get ready() {
      return true;
    },
    start() {},
    stop() {},
  };
  return dir;
}

export interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  json(): any;
}

export interface CallOptions {
  host: string;
  method?: string;
  path?: string;
  headers?: Record<string, string | string[]>;
  body?: Buffer | string | undefined;
  /** Send the body with Transfer-Encoding: chunked, in pieces of this size. */
  chunked?: number;
  signal?: AbortSignal;
}

/** One HTTP/1.1 request on its own connection (the Host header is ours to set). */
export function call(baseUrl: string, opts: CallOptions): Promise<Reply> {
  const url = new URL(opts.path ?? "/", baseUrl);
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | string[]> = { host: opts.host, ...opts.headers };
    const body = typeof opts.body === "string" ? Buffer.from(opts.body) : opts.body;
    if (body && !opts.chunked) headers["content-length"] = String(body.length);
    if (opts.chunked) headers["transfer-encoding"] = "chunked";
    const req = request(url, { method: opts.method ?? "GET", headers, agent: false, signal: opts.signal }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("error", reject);
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        resolve({ status: res.statusCode!, headers: res.headers, text, json: () => JSON.parse(text) });
      });
    });
    req.on("error", reject);
    if (body && opts.chunked) {
      for (let i = 0; i < body.length; i += opts.chunked) req.write(body.subarray(i, i + opts.chunked));
      req.end();
    } else req.end(body);
  });
}

export const sha256 = (b: Buffer | string) => createHash("sha256").update(b).digest("hex");
export const EMPTY_SHA = sha256("");

let seq = 0;
/** Inserts a route; ids and subdomains are unique per call. */
export async function addRoute(database: Database, vmId: string, opts: { subdomain?: string; port?: number; autoWake?: boolean } = {}) {
  seq += 1;
  const subdomain = opts.subdomain ?? `app${seq}-${randomBytes(3).toString("hex")}`;
  return insertRoute(database, {
    id: `rt_${randomBytes(6).toString("hex")}`,
    vmId,
    subdomain,
    targetPort: opts.port ?? 8080,
    autoWake: opts.autoWake ?? true,
  });
}
