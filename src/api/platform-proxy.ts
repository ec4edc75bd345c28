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
import { CLIENT_CLOSED, readBodyBytes } from "./body.ts";

/** Largest body relayed to the platform: a VM's `user_data` can be large. */
export const RELAY_MAX_BODY = 10 * 1024 * 1024;
/** Hatch's snapshot and stop run on the request: a relay that gives up early cancels them midway. */
const SLEEP_CALL = /^\/vms\/[^/]+\/(snapshot|stop)\/?$/;
/** Hatch's exec has no time limit: the relay keeps it while its caller does. */
const EXEC_CALL = /^\/vms\/[^/]+\/exec\/?$/;

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
  const sleepTimeout = Math.max(writeTimeout, deps.config.platformSleepTimeoutMs);
  const deadlineOf = (method: string, path: string, sleepCall: boolean): number | undefined => {
    if (method === "GET" || method === "HEAD") return readTimeout;
    if (EXEC_CALL.test(path)) return undefined;
    return sleepCall ? sleepTimeout : writeTimeout;
  };

  return async (c: Context) => {
    const method = c.req.method;
    const path = c.req.path;
    const query = new URL(c.req.url).search;
    const headers = new Headers();
    for (const [k, v] of c.req.raw.headers) if (!DROP_REQUEST.has(k.toLowerCase())) headers.set(k, v);
    const body = method !== "GET" && method !== "HEAD" ? await readBodyBytes(c, RELAY_MAX_BODY) : undefined;
    const sleepCall = SLEEP_CALL.test(path);
    const timeoutMs = deadlineOf(method, path, sleepCall);
    // The caller leaving ends the call, except a snapshot or stop: cut midway, Hatch would leave the
    // VM paused, so it runs to its end. A deadline, where there is one, ends it too.
    const gone = sleepCall ? new AbortController().signal : c.req.raw.signal;
    const signal = timeoutMs === undefined ? gone : AbortSignal.any([gone, AbortSignal.timeout(timeoutMs)]);
    let res: Response;
    try {
      res = await doFetch(base + path + query, { method, headers, body: body ? new Uint8Array(body) : undefined, redirect: "manual", signal });
    } catch (err) {
      if (gone.aborted) throw new AppError(CLIENT_CLOSED, "client closed the connection before the VM platform answered", { code: "client_closed_request" });
      const timedOut = (err as Error)?.name === "TimeoutError";
      deps.log.warn("vm platform call failed", { method, path, timed_out: timedOut, err });
      if (timedOut) throw new AppError(504, `VM platform did not answer within ${formatDuration(timeoutMs ?? 0)}`, { code: "platform_timeout" });
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
