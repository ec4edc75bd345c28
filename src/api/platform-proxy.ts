/**
 * The rest of Hatch's API on the route API's own URL: every call that is not a route call
 * (`/vms`, `/vms/{id}`, `/vms/{id}/snapshot|restore|stop|start|snapshots|metrics|exec`, ...) is
 * relayed to the VM platform (HATCH_API_URL, or the simulator) with the caller's credentials
 * untouched, so Hatch's SDK and dashboard need one base URL, as with Hatch itself.
 */
import type { Context } from "hono";
import { addrToUrl, formatDuration, type Config } from "../config.ts";
import { AppError } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { VmDirectory } from "../vms/platform.ts";
import { MAX_API_BODY } from "./body.ts";

/** Request headers never relayed: they describe one hop, or are set again for the next. */
const DROP_REQUEST = new Set(["host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization", "proxy-connection", "content-length", "expect"]);
/** Response headers never relayed (fetch already decoded the body; lengths are set again). */
const DROP_RESPONSE = new Set(["connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authenticate", "content-length", "content-encoding"]);

export interface PlatformProxyDeps {
  config: Config;
  /** The platform's base URL (default platformApiUrl(config)); the simulator's actual one when it runs here. */
  baseUrl?: string | undefined;
  directory: VmDirectory;
  log: Logger;
  fetch?: typeof fetch;
}

/** The VM platform's API base URL as this process reaches it. */
export function platformApiUrl(config: Config): string {
  return config.hatchApiUrl ?? addrToUrl(config.simAddr);
}

/** A Hono handler relaying the request to the VM platform; errors keep Hatch's `{"error": ...}` shape. */
export function platformProxy(deps: PlatformProxyDeps) {
  const base = (deps.baseUrl ?? platformApiUrl(deps.config)).replace(/\/+$/, "");
  const doFetch = deps.fetch ?? fetch;
  // Restores block until the VM runs (seconds on a real Hatch): calls that change a VM get the wake timeout.
  const readTimeout = deps.config.platformTimeoutMs;
  const writeTimeout = Math.max(deps.config.platformTimeoutMs, deps.config.wakeTimeoutMs);

  return async (c: Context) => {
    const method = c.req.method;
    const path = c.req.path;
    const query = new URL(c.req.url).search;
    const headers = new Headers();
    for (const [k, v] of c.req.raw.headers) if (!DROP_REQUEST.has(k.toLowerCase())) headers.set(k, v);
    let body: Buffer | undefined;
    if (method !== "GET" && method !== "HEAD") {
      const declared = Number(c.req.header("content-length") ?? NaN);
      if (declared > MAX_API_BODY) throw new AppError(413, `request body too large (limit ${MAX_API_BODY / 1024} KiB)`);
      body = Buffer.from(await c.req.arrayBuffer());
      if (body.length > MAX_API_BODY) throw new AppError(413, `request body too large (limit ${MAX_API_BODY / 1024} KiB)`);
    }
    const timeoutMs = method === "GET" || method === "HEAD" ? readTimeout : writeTimeout;
    let res: Response;
    try {
      res = await doFetch(base + path + query, { method, headers, body: body ? new Uint8Array(body) : undefined, redirect: "manual", signal: AbortSignal.timeout(timeoutMs) });
    } catch (err) {
      const timedOut = (err as Error)?.name === "TimeoutError";
      deps.log.warn("vm platform call failed", { method, path, timed_out: timedOut, err });
      if (timedOut) throw new AppError(504, `VM platform did not answer within ${formatDuration(timeoutMs)}`, { code: "platform_timeout" });
      throw new AppError(503, "VM platform unavailable: try again shortly", { code: "platform_unavailable", headers: { "Retry-After": "1" } });
    }
    const out = new Headers();
    for (const [k, v] of res.headers) if (!DROP_RESPONSE.has(k.toLowerCase())) out.set(k, v);
    const bytes = Buffer.from(await res.arrayBuffer());
    const vmId = /^\/vms\/([^/]+)/.exec(path)?.[1];
    if (vmId && method !== "GET" && method !== "HEAD" && res.status < 300) {
      // A state this API caused (snapshot, restore, stop, delete): routers follow it now, not at the next sync.
      void deps.directory.refreshOne(decodeURIComponent(vmId)).catch(() => undefined);
    }
    if (res.status >= 400 && !isJson(res.headers.get("content-type"), bytes)) {
      // Hatch's clients read `error` from the body: keep that shape whatever the platform sent.
      return c.json({ error: bytes.toString("utf8").trim().slice(0, 300) || `VM platform answered ${res.status}` }, res.status as 400);
    }
    return new Response(method === "HEAD" ? null : bytes, { status: res.status, headers: out });
  };
}

function isJson(type: string | null, bytes: Buffer): boolean {
  if (!type?.toLowerCase().includes("json")) return false;
  try {
    const parsed = JSON.parse(bytes.toString("utf8"));
    return typeof parsed === "object" && parsed !== null && typeof parsed.error === "string";
  } catch {
    return false;
  }
}
