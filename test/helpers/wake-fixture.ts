/** Shared pieces of the wake sidecar tests: a cache-only VM directory, a raw HTTP client, route rows. */
import { createHash, randomBytes } from "node:crypto";
import { request, type IncomingHttpHeaders } from "node:http";
import type { Database } from "../../src/db/client.ts";
import { insertRoute } from "../../src/db/routes.repo.ts";

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
