/**
 * The wake proxy: Host → route → VM, then the VM lifecycle decides (forward, hold for a wake, or
 * fail) and the HTTP or upgrade responder carries it out. Also answers Traefik's sleep fallback:
 * a GET that a direct router failed because the VM went to sleep behind Traefik's back.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { Agent, createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type { Registry } from "prom-client";
import type { Config, ListenAddr } from "../config.ts";
import type { Database } from "../db/client.ts";
import type { RouteRow } from "../db/schema.ts";
import { SHUTTING_DOWN } from "../lifecycle/failure.ts";
import { createLifecycleRuntime, type LifecycleRuntime } from "../lifecycle/runtime.ts";
import type { VmLifecycle } from "../lifecycle/vm-lifecycle.ts";
import { listen, type Listening } from "../listen.ts";
import type { Logger } from "../log.ts";
import { FALLBACK_PATH } from "../traefik/config-builder.ts";
import type { VmDirectory, VmPlatform } from "../vms/platform.ts";
import { servesPort } from "../vms/simulator/guest-ports.ts";
import { upstreamRequestHeaders, WAKE_SECRET_HEADER } from "./headers.ts";
import { createHttpResponder } from "./http-responder.ts";
import type { ProxyContext, Resolved } from "./proxy-context.ts";
import { answerClientError } from "./client-error.ts";
import { isMetricsScrape, sendMetrics } from "./metrics-endpoint.ts";
import { createRouteCache, isValidLabel, requestHost, subdomainOf } from "./resolve.ts";
import { createUpgradeResponder } from "./upgrade-responder.ts";

export interface WakeDeps {
  config: Config;
  database: Database;
  platform: VmPlatform;
  directory: VmDirectory;
  log: Logger;
  /** The process's shared lifecycle; without one the proxy runs its own (tests, tools). */
  lifecycle?: VmLifecycle | undefined;
}

export interface WakeProxyOptions {
  /** Serving HATCH_PROXY_ADDR directly (no Traefik in front): no wake secret, X-Forwarded-* not trusted. */
  embedded: boolean;
  /** How long a route lookup is trusted before a background re-read (NOTIFY clears it sooner). Default 10 s. */
  routeCacheTtlMs?: number;
  /** Connect timeout to a running VM's port before answering 504. */
  connectTimeoutMs?: number;
}

export interface WakeProxy {
  handleRequest(req: IncomingMessage, res: ServerResponse): void;
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /** The proxy's metrics registry (the API merges it into /metrics; a sidecar also serves it itself). */
  readonly registry: Registry;
  /** Stops listeners and timers; held requests get 503. */
  close(): Promise<void>;
}

/** Builds the wake proxy around its dependencies; `embedded` = no Traefik in front. */
export function createWakeProxy(deps: WakeDeps, opts: WakeProxyOptions): WakeProxy {
  const { config, database, directory, log } = deps;
  let own: LifecycleRuntime | undefined;
  if (!deps.lifecycle) {
    own = createLifecycleRuntime(deps);
    own.start().catch((err: unknown) => log.warn("proxy lifecycle did not start fully", { err }));
  }
  const lifecycle = deps.lifecycle ?? own!.lifecycle;
  const routes = createRouteCache(database, { ttlMs: opts.routeCacheTtlMs ?? 10_000, log, registry: lifecycle.metrics.registry });
  // A burst of replays (1,000 held requests) must not open 1,000 connections at once: the guest's
  // accept backlog would drop SYNs and cost a 1 s retransmit. Requests past the cap queue in the
  // agent and reuse kept-alive sockets.
  const agent = new Agent({ keepAlive: true, maxSockets: 256, maxFreeSockets: 256, scheduling: "lifo" });
  const secretHash = !opts.embedded && config.wakeSecret ? sha256(config.wakeSecret) : undefined;
  const tunnels = new Set<Duplex>();
  let closed = false;
  const apiTarget = opts.embedded ? hostPort(config.routeApiUrl) : undefined;

  /** A request from Traefik's errors middleware: its path carries the original URL and the secret. */
  function fallbackTarget(req: IncomingMessage): string | undefined {
    if (opts.embedded || !req.url?.startsWith(FALLBACK_PATH + "?")) return undefined;
    const q = new URLSearchParams(req.url.slice(FALLBACK_PATH.length + 1));
    if (secretHash && !matches(q.get("token"), secretHash)) return undefined;
    let original: URL;
    try {
      original = new URL(q.get("url") ?? "");
    } catch {
      return undefined;
    }
    // Only the host this request came for: the fallback can never aim at another route.
    const host = (req.headers.host ?? "").toLowerCase().replace(/:\d+$/, "");
    if (original.hostname.toLowerCase() !== host) return undefined;
    return original.pathname + original.search;
  }

  async function resolve(req: IncomingMessage): Promise<Resolved> {
    if (closed) return { kind: "fail", failure: SHUTTING_DOWN };
    const fallbackPath = fallbackTarget(req);
    if (fallbackPath !== undefined) {
      req.url = fallbackPath;
      lifecycle.metrics.fallback();
    } else if (secretHash && !matches(req.headers[WAKE_SECRET_HEADER], secretHash)) {
      return { kind: "fail", failure: { status: 403, error: "missing or invalid X-Hatch-Wake-Secret header" } };
    }
    const given = requestHost(req);
    if (!given.ok) return { kind: "fail", failure: { status: 400, error: given.message } };
    const host = subdomainOf(given.host, config.baseDomain);
    if (!host.ok) return { kind: "fail", failure: { status: 400, error: host.message } };
    const sub = host.subdomain;
    // With no Traefik in front, `api.<base>` is Hatch's whole API (the route API relays the rest).
    if (apiTarget && sub === "api") return { kind: "api", target: apiTarget };
    const noRoute: Resolved = { kind: "fail", failure: { status: 404, error: `no route for subdomain ${JSON.stringify(sub)}` } };
    if (!isValidLabel(sub)) return noRoute;
    let route: RouteRow | undefined;
    try {
      route = await routes.get(sub);
    } catch (err) {
      // The cache says once that the database is away (and counts these); one line per request would flood.
      log.debug("route lookup failed", { subdomain: sub, err });
      return { kind: "fail", failure: { status: 503, error: "route lookup failed", headers: { "retry-after": "1" } } };
    }
    if (!route) return noRoute;
    // Traefik's direct router failed for a fallback: the cached state is the one in doubt.
    let vm = fallbackPath === undefined ? directory.peek(route.vmId) : undefined;
    if (!vm) {
      try {
        vm = await lifecycle.refresh(route.vmId);
      } catch (err) {
        return { kind: "fail", failure: lifecycle.platformDown(err, route.vmId) };
      }
    }
    if (!vm) return { kind: "fail", failure: { status: 502, error: "vm not found" } };
    // A simulated VM lives on a host loopback address: a port it does not serve is the host's.
    if (!servesPort(vm, route.targetPort)) return { kind: "fail", failure: { status: 502, error: `vm port ${route.targetPort} refused the connection` } };
    return { kind: "routed", route, vm, subdomain: sub, fallback: fallbackPath !== undefined };
  }

  const ctx: ProxyContext = {
    config,
    log,
    lifecycle,
    metrics: lifecycle.metrics,
    agent,
    connectTimeoutMs: opts.connectTimeoutMs ?? 5000,
    headersFor: (req, upgrade = false) => upstreamRequestHeaders(req, { trustForwarded: !opts.embedded, upgrade }),
    resolve,
    tunnels,
    get closed() {
      return closed || lifecycle.isClosed;
    },
    debug: config.logLevel === "debug",
  };
  const serveHttp = createHttpResponder(ctx);
  const serveUpgrade = createUpgradeResponder(ctx);

  return {
    registry: lifecycle.metrics.registry,
    handleRequest(req, res) {
      if (!opts.embedded && isMetricsScrape(req, config.baseDomain)) {
        sendMetrics(res, lifecycle.metrics.registry).catch((err: unknown) => {
          log.error("metrics failed", { err });
          res.destroy();
        });
        return;
      }
      void serveHttp(req, res);
    },
    handleUpgrade(req, socket, head) {
      socket.on("error", () => socket.destroy());
      void serveUpgrade(req, socket, head);
    },
    async close() {
      if (closed) return;
      closed = true;
      for (const s of tunnels) s.destroy();
      agent.destroy();
      await routes.close();
      await own?.stop();
    },
  };
}

/** Starts an HTTP server for the proxy on `addr` (port 0 = any free port). */
export function startWakeServer(proxy: WakeProxy, addr: ListenAddr): Promise<Listening> {
  // Kept-alive connections outlive Traefik's idle timeout (90 s), so Traefik never reuses one this
  // server has just closed.
  // Without a Host header Node would answer 400 with an empty body; the proxy answers it in JSON.
  const server = createServer({ keepAliveTimeout: 95_000, requireHostHeader: false }, proxy.handleRequest);
  server.on("upgrade", proxy.handleUpgrade);
  server.on("clientError", answerClientError);
  // A deep accept queue: a thousand clients arriving at once for a sleeping VM is the point.
  // Requests still running at close get a second to finish, then their connections are cut.
  return listen(server, addr, { backlog: 4096, graceMs: 1000 });
}

/** host and port of an http:// URL (https is not dialed by this proxy). */
function hostPort(url: string): { host: string; port: number } | undefined {
  const u = new URL(url);
  if (u.protocol !== "http:") return undefined;
  return { host: u.hostname.replace(/^\[|\]$/g, ""), port: Number(u.port || 80) };
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}

/** Constant-time comparison of a presented secret with the expected one's hash. */
function matches(given: string | string[] | null | undefined, expected: Buffer): boolean {
  return typeof given === "string" && timingSafeEqual(sha256(given), expected);
}
