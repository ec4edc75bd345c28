/**
 * GET /config and /config.yaml: what Traefik's HTTP provider polls. The body carries the wake
 * secret, so it is served only with the bearer token, or (no token configured) only to loopback
 * clients that did not come through a proxy.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { Hono, type Context } from "hono";
import { getConnInfo } from "@hono/node-server/conninfo";
import type { Config } from "../config.ts";
import type { Logger } from "../log.ts";
import type { ConfigService } from "./config-service.ts";

export interface TraefikEndpointDeps {
  config: Config;
  log: Logger;
  /**
   * The peer address of the request's connection. Default: the Node socket's remote address, or
   * undefined when there is no socket (in-process `app.request()`), which counts as NOT loopback:
   * a missing address must never open the endpoint. Tests inject their own.
   */
  clientAddress?: (c: Context) => string | undefined;
  /**
   * Called for every poll from a Traefik answered with the config (200 or 304): a Traefik follows
   * this API. A person reading it (curl, a browser) is not one.
   */
  onPoll?: () => void;
}

/** The socket peer address from @hono/node-server, or undefined when the request has no socket. */
export function socketAddress(c: Context): string | undefined {
  try {
    return getConnInfo(c).remote.address;
  } catch {
    return undefined;
  }
}

/** True for 127.0.0.0/8, ::1 and IPv4-mapped loopback. */
export function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  const a = address.toLowerCase().replace(/^::ffff:/, "");
  return a === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(a);
}

/**
 * True for a request from Traefik's HTTP provider: it sends Go's default User-Agent
 * (`Go-http-client/1.1`, `/2.0`), unless its `providers.http.headers` name one, which then says
 * traefik. curl, browsers and scripts send their own.
 */
export function isTraefikPoll(userAgent: string | undefined): boolean {
  return userAgent !== undefined && (/^Go-http-client\//.test(userAgent) || /traefik/i.test(userAgent));
}

// Any of these means the request was relayed (e.g. by Traefik itself on loopback): the socket peer
// is then the proxy, not the client, so loopback proves nothing.
const FORWARDING_HEADERS = ["forwarded", "x-forwarded-for", "x-real-ip", "x-forwarded-host"];

const digest = (s: string) => createHash("sha256").update(s).digest();

/**
 * A request header, read from Node's IncomingMessage when there is one: asking Hono's request for
 * headers makes @hono/node-server build a full Request per poll, the main per-request cost here.
 */
function header(c: Context, name: string): string | undefined {
  const incoming = (c.env as { incoming?: { headers: Record<string, string | string[] | undefined> } } | undefined)?.incoming;
  if (!incoming) return c.req.header(name);
  const v = incoming.headers[name];
  return Array.isArray(v) ? v.join(", ") : v;
}

/** A constant-time check of `Authorization: Bearer <token>`. */
function bearerMatches(header: string | undefined, expected: Buffer): "missing" | "invalid" | "ok" {
  if (!header) return "missing";
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  if (!m) return "invalid";
  // Hashing first gives equal lengths, so timingSafeEqual never leaks the token length.
  return timingSafeEqual(digest(m[1]!), expected) ? "ok" : "invalid";
}

function matchesIfNoneMatch(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  if (header.trim() === "*") return true;
  // If-None-Match uses the weak comparison: W/"x" matches "x".
  return header.split(",").some((t) => t.trim().replace(/^W\//, "") === etag);
}

/**
 * The API's logger with the request lines of this endpoint at debug: a Traefik polls it every
 * second (86,400 info lines a day said nothing), and refusals are summarized by the endpoint itself.
 * A 5xx (config not built) stays at info.
 */
export function quietTraefikPolls(log: Logger): Logger {
  const routine = (msg: string, fields?: Record<string, unknown>) =>
    msg === "request" && typeof fields?.path === "string" && /^\/traefik\/config(\.yaml)?$/.test(fields.path) && Number(fields.status) < 500;
  return {
    debug: (m, f) => log.debug(m, f),
    info: (m, f) => (routine(m, f) ? log.debug(m, f) : log.info(m, f)),
    warn: (m, f) => log.warn(m, f),
    error: (m, f) => log.error(m, f),
    child: (fields) => quietTraefikPolls(log.child(fields)),
  };
}

/** Most kinds of refusal tracked at once; others share one line. */
const MAX_REFUSAL_KINDS = 100;

/**
 * Refusals in the log: the first of each kind (reason and address) as a warning at once, repeats
 * counted and written as one line per window while they go on. A misconfigured Traefik polling
 * every second, or a scanner, then costs a line a minute instead of one per request.
 */
export class RefusalLog {
  private readonly kinds = new Map<string, { fields: Record<string, unknown>; repeats: number }>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly log: Logger,
    private readonly windowMs = 60_000,
  ) {}

  note(fields: { reason: string; address?: string | undefined }): void {
    let key = `${fields.reason} ${fields.address ?? ""}`;
    if (!this.kinds.has(key) && this.kinds.size >= MAX_REFUSAL_KINDS) key = "other";
    const kind = this.kinds.get(key);
    if (kind) kind.repeats += 1;
    else {
      const shown = key === "other" ? { reason: "various", address: "various" } : fields;
      this.kinds.set(key, { fields: shown, repeats: 0 });
      this.log.warn("traefik config request refused", { ...shown, repeats_summarized_every_s: this.windowMs / 1000 });
    }
    this.timer ??= setTimeout(() => this.flush(), this.windowMs).unref();
  }

  /** Writes the repeats seen since the last window; a kind that stopped is forgotten (its next refusal warns again). */
  flush(): void {
    this.timer = undefined;
    for (const [key, kind] of this.kinds) {
      if (kind.repeats === 0) {
        this.kinds.delete(key);
        continue;
      }
      this.log.warn("traefik config requests refused again", { ...kind.fields, count: kind.repeats, window_s: this.windowMs / 1000 });
      kind.repeats = 0;
    }
    if (this.kinds.size > 0) this.timer = setTimeout(() => this.flush(), this.windowMs).unref();
  }
}

/** The Hono sub-app the API mounts at `/traefik`. */
export function traefikEndpoint(service: ConfigService, deps: TraefikEndpointDeps): Hono {
  const { config } = deps;
  const log = deps.log.child({ component: "traefik-endpoint" });
  const clientAddress = deps.clientAddress ?? socketAddress;
  const expected = config.traefikToken ? digest(config.traefikToken) : undefined;
  const refusals = new RefusalLog(log);
  const app = new Hono();

  if (expected) log.info("traefik config endpoint requires a bearer token (HATCH_TRAEFIK_TOKEN)");
  else log.info("HATCH_TRAEFIK_TOKEN is not set: the traefik config endpoint answers loopback clients only");

  /** The refusal for a request that may not read the config, or undefined when it may. */
  const refuse = (c: Context): Response | undefined => {
    if (expected) {
      const result = bearerMatches(header(c, "authorization"), expected);
      if (result === "ok") return undefined;
      refusals.note({ reason: `${result} token`, address: clientAddress(c) });
      c.header("WWW-Authenticate", 'Bearer realm="hatch-proxy traefik config"');
      return c.json({ error: result === "missing" ? "missing bearer token" : "invalid bearer token" }, 401);
    }
    const address = clientAddress(c);
    const relayed = FORWARDING_HEADERS.some((h) => header(c, h) !== undefined);
    if (isLoopback(address) && !relayed) return undefined;
    refusals.note({ reason: relayed ? "relayed" : "not loopback", address });
    return c.json({ error: "the traefik config is served to loopback clients only (set HATCH_TRAEFIK_TOKEN to allow others)" }, 403);
  };

  // One synchronous handler per path (no middleware chain): every poll is a single function call.
  const serve = (format: "json" | "yaml") => (c: Context) => {
    const refused = refuse(c);
    if (refused) return refused;
    const snap = service.current();
    if (!snap) {
      c.header("Retry-After", "1");
      c.header("Cache-Control", "no-store");
      return c.json({ error: `traefik config not built yet: ${service.notReadyReason()}` }, 503);
    }
    const etag = format === "json" ? snap.etag : snap.yamlEtag;
    if (format === "json" && isTraefikPoll(header(c, "user-agent"))) deps.onPoll?.();
    if (matchesIfNoneMatch(header(c, "if-none-match"), etag)) {
      return new Response(null, { status: 304, headers: { etag, "cache-control": "private, no-cache" } });
    }
    // A Response with a plain header object is written by @hono/node-server without building a
    // Headers instance: the cheapest path for the bytes of every poll.
    const body = format === "json" ? snap.body : snap.yaml;
    return new Response(body, {
      status: 200,
      headers: {
        "content-type": format === "json" ? "application/json" : "application/yaml; charset=utf-8",
        "content-length": String(typeof body === "string" ? Buffer.byteLength(body) : body.byteLength),
        etag,
        "cache-control": "private, no-cache",
      },
    });
  };

  app.get("/config", serve("json"));
  app.get("/config.yaml", serve("yaml"));
  return app;
}
