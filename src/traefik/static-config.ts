/**
 * Traefik's static configuration derived from Config: what `npm start` writes for the Traefik it
 * runs in front, and the source of truth that traefik/traefik.yml is tested against.
 */
import type { Config, ListenAddr } from "../config.ts";

/** Default loopback port of Traefik's own entry point (API, ping, metrics); 8080 is the route API. */
export const TRAEFIK_INTERNAL_PORT = 9092;
export const PROVIDER_POLL_INTERVAL = "1s";

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
}

/**
 * The static config: the public entry point (first of HATCH_TRAEFIK_ENTRYPOINTS) on HATCH_PROXY_ADDR,
 * the HTTP provider polling the route API every second (with the bearer token when one is set),
 * and Traefik's API (read-only, no dashboard), ping and Prometheus metrics on a loopback-only entry point.
 */
export function buildStaticConfig(config: Config, opts: StaticConfigOptions = {}): Record<string, unknown> {
  const publicEntryPoint = config.traefikEntryPoints[0] ?? "web";
  const internal = `127.0.0.1:${opts.apiPort ?? TRAEFIK_INTERNAL_PORT}`;
  return {
    global: { checkNewVersion: false, sendAnonymousUsage: false },
    entryPoints: {
      [publicEntryPoint]: { address: formatAddr(config.proxyAddr) },
      traefik: { address: internal },
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
    },
    // Insecure mode serves the API on the `traefik` entry point, which listens on loopback only.
    api: { insecure: true, dashboard: false },
    ping: { entryPoint: "traefik" },
    metrics: {
      prometheus: { entryPoint: "traefik", addRoutersLabels: true, addServicesLabels: true, addEntryPointsLabels: true },
    },
    accessLog: { format: "json" },
    log: { level: "INFO", format: "json" },
  };
}
