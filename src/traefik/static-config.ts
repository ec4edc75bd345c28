/**
 * Traefik's static configuration derived from Config: what `npm start` writes for the Traefik it
 * runs in front, and the source of truth that traefik/traefik.yml is tested against.
 */
import type { Config, ListenAddr } from "../config.ts";

/** Default loopback port of Traefik's own entry point (API, ping, metrics); 8080 is the route API. */
export const TRAEFIK_INTERNAL_PORT = 9092;
export const PROVIDER_POLL_INTERVAL = "1s";

/** The file-provider router that serves the few pages of Traefik's API hatch-proxy reads. */
export const INTERNAL_API_ROUTER = "hatch-traefik-api";
/** Where traefik/traefik.yml finds that router: relative to the directory Traefik runs in (the repository). */
export const INTERNAL_API_FILE = "traefik/internal-api.yml";
/**
 * One router's or one service's own page, nothing else: the sleeper asks whether a router is still
 * loaded, and `npm start` checks that the Traefik answering serves our sidecar. Middlewares (the
 * `hatch-wake-auth` headers and the `hatch-sleep-fallback` query carry the wake secret), lists and
 * `/api/rawdata` stay unreachable, even from this machine.
 */
export const INTERNAL_API_RULE = "PathRegexp(`^/api/http/(routers|services)/[^/]+$`)";

/** `:9090`, `host:9090` or `[::1]:9090`, as Traefik's entry point address expects. */
export function formatAddr(addr: ListenAddr): string {
  if (!addr.host) return `:${addr.port}`;
  return addr.host.includes(":") ? `[${addr.host}]:${addr.port}` : `${addr.host}:${addr.port}`;
}

export interface StaticConfigOptions {
  /** The provider endpoint; default `<HATCH_ROUTE_API_URL>/traefik/config`. */
  providerUrl?: string;
  /** Loopback port for Traefik's API, ping and metrics (entry point `traefik`). */
  apiPort?: number;
  /** The file holding internalApiRoutes(); default INTERNAL_API_FILE. */
  internalApiFile?: string;
  /**
   * How long Traefik lets requests and connections (WebSockets) run once told to stop, on each
   * entry point; Traefik's default is 10s. `npm start` stops within 5 s in all.
   */
  graceTimeOut?: string;
}

/** The dynamic config of the file provider: the only way into Traefik's API (see INTERNAL_API_RULE). */
export function internalApiRoutes(): Record<string, unknown> {
  return {
    http: {
      routers: {
        [INTERNAL_API_ROUTER]: { entryPoints: ["traefik"], rule: INTERNAL_API_RULE, service: "api@internal" },
      },
    },
  };
}

/**
 * The static config: the public entry point (first of HATCH_TRAEFIK_ENTRYPOINTS) on HATCH_PROXY_ADDR,
 * the HTTP provider polling the route API every second (with the bearer token when one is set),
 * and on a loopback-only entry point: ping, Prometheus metrics, and the pages of Traefik's API that
 * internalApiRoutes() lets through (the API itself is not served in insecure mode).
 */
export function buildStaticConfig(config: Config, opts: StaticConfigOptions = {}): Record<string, unknown> {
  const publicEntryPoint = config.traefikEntryPoints[0] ?? "web";
  const internal = `127.0.0.1:${opts.apiPort ?? TRAEFIK_INTERNAL_PORT}`;
  const lifeCycle = opts.graceTimeOut ? { transport: { lifeCycle: { graceTimeOut: opts.graceTimeOut } } } : {};
  return {
    global: { checkNewVersion: false, sendAnonymousUsage: false },
    entryPoints: {
      [publicEntryPoint]: { address: formatAddr(config.proxyAddr), ...lifeCycle },
      traefik: { address: internal, ...lifeCycle },
    },
    providers: {
      // Above the poll interval it only adds latency; the endpoint already coalesces changes.
      providersThrottleDuration: "500ms",
      http: {
        endpoint: opts.providerUrl ?? `${config.routeApiUrl}/traefik/config`,
        pollInterval: PROVIDER_POLL_INTERVAL,
        pollTimeout: "5s",
        ...(config.traefikToken && { headers: { Authorization: `Bearer ${config.traefikToken}` } }),
      },
      file: { filename: opts.internalApiFile ?? INTERNAL_API_FILE },
    },
    // Enabled for the api@internal service only: insecure mode would serve all of it, secrets included.
    api: { dashboard: false },
    ping: { entryPoint: "traefik" },
    metrics: {
      prometheus: { entryPoint: "traefik", addRoutersLabels: true, addServicesLabels: true, addEntryPointsLabels: true },
    },
    accessLog: { format: "json" },
    log: { level: "INFO", format: "json" },
  };
}
