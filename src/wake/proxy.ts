/**
 * The wake proxy: the resolver turns a request into a route and its VM (resolver.ts), then the
 * HTTP or upgrade responder asks the VM lifecycle what to do (forward, hold for a wake, or fail)
 * and carries it out. Also answers Traefik's sleep fallback: a GET that a direct router failed
 * because the VM went to sleep behind Traefik's back.
 */
import { Agent, createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type { Registry } from "prom-client";
import type { Config, ListenAddr } from "../config.ts";
import type { Database } from "../db/client.ts";
import { createLifecycleRuntime, type LifecycleRuntime } from "../lifecycle/runtime.ts";
import type { VmLifecycle } from "../lifecycle/vm-lifecycle.ts";
import { listen, type Listening } from "../listen.ts";
import type { Logger } from "../log.ts";
import type { VmDirectory, VmPlatform } from "../vms/platform.ts";
import { upstreamRequestHeaders } from "./headers.ts";
import { createHttpResponder } from "./http-responder.ts";
import type { Resolved, ResponderDeps } from "./proxy-context.ts";
import { answerClientError } from "./client-error.ts";
import { isMetricsScrape, sendMetrics } from "./metrics-endpoint.ts";
import { createRouteCache } from "./resolve.ts";
import { createResolver } from "./resolver.ts";
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

/**
 * How long a connect to a VM may take before it is tried again (a VM that is not reached is asked
 * about and retried until the wake timeout): past one SYN retransmit, short of an ARP failure.
 */
export const VM_CONNECT_TIMEOUT_MS = 1500;

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
  const tunnels = new Set<Duplex>();
  let closed = false;

  const resolver = createResolver({ config, directory, lifecycle, routes, log, embedded: opts.embedded, isClosed: () => closed });
  // An unexpected error while resolving is answered like any other proxy error, never left unhandled.
  const resolve = (req: IncomingMessage): Promise<Resolved> =>
    resolver(req).catch((err: unknown) => {
      log.error("proxy error", { err, url: req.url });
      return { kind: "fail", failure: { status: 502, error: "proxy error" } };
    });
  const ctx: ResponderDeps = {
    config,
    log,
    lifecycle,
    metrics: lifecycle.metrics,
    agent,
    connectTimeoutMs: opts.connectTimeoutMs ?? VM_CONNECT_TIMEOUT_MS,
    headersFor: (req, upgrade = false) => upstreamRequestHeaders(req, { trustForwarded: !opts.embedded, upgrade }),
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
      void resolve(req).then((r) => serveHttp(req, res, r));
    },
    handleUpgrade(req, socket, head) {
      socket.on("error", () => socket.destroy());
      void resolve(req).then((r) => serveUpgrade(req, socket, head, r));
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
