/**
 * The Traefik v3 dynamic configuration as a pure function of routes, VM states and settings.
 * No I/O, no clock: the same inputs give the same bytes on every replica, which is what lets
 * Traefik's HTTP provider skip unchanged polls (it hashes the raw body).
 */
import { createHash } from "node:crypto";
import type { Vm } from "../vms/platform.ts";

/** The fields of a route row the config needs. */
export interface RouteLike {
  id: string;
  vmId: string;
  subdomain: string;
  targetPort: number;
}

export interface TraefikSettings {
  baseDomain: string;
  entryPoints: string[];
  /** Where the catch-all sends every route without a direct router (the wake sidecar). */
  wakeUrl: string;
  /** Added by Traefik as X-Hatch-Wake-Secret on requests to the sidecar. */
  wakeSecret?: string | undefined;
  certResolver?: string | undefined;
  /** The route API, published as `api.<base>` with priority 100. */
  apiUrl?: string | undefined;
}

export const WAKE_ROUTER = "hatch-wake";
export const WAKE_SERVICE = "hatch-wake";
export const WAKE_MIDDLEWARE = "hatch-wake-auth";
export const API_ROUTER = "hatch-api";
export const API_SERVICE = "hatch-api";
export const WAKE_SECRET_HEADER = "X-Hatch-Wake-Secret";
/** Above any route router's default priority (rule length) for ordinary base domains, far above the catch-all. */
export const API_PRIORITY = 100;
/** The path prefix the API router never forwards, so the provider endpoint is not reachable through Traefik. */
export const PROVIDER_PATH_PREFIX = "/traefik";

type Router = {
  rule: string;
  service: string;
  entryPoints: string[];
  priority?: number;
  middlewares?: string[];
  tls?: { certResolver: string; domains: { main: string; sans: string[] }[] };
};
type Service = { loadBalancer: { servers: { url: string }[]; passHostHeader: boolean } };

export interface DynamicConfig {
  http: {
    routers: Record<string, Router>;
    services: Record<string, Service>;
    middlewares?: Record<string, { headers: { customRequestHeaders: Record<string, string> } }>;
  };
}

/** Escapes a string for use inside a Go (RE2) regular expression. */
export function escapeRegexp(text: string): string {
  return text.replace(/[\\.+*?()|[\]{}^$]/g, "\\$&");
}

/** The catch-all rule: any single label directly under the base domain. */
export function catchAllRule(baseDomain: string): string {
  return `HostRegexp(\`^[a-z0-9-]+\\.${escapeRegexp(baseDomain)}$\`)`;
}

const SAFE_NAME = /^[A-Za-z0-9_-]+$/;
const RESERVED_NAMES = new Set([WAKE_ROUTER, WAKE_SERVICE, WAKE_MIDDLEWARE, API_ROUTER, API_SERVICE]);

/**
 * The router/service name of a route. Route ids are already safe (`rt_…`); anything else (an `@`,
 * a dot, a clash with our own names) is replaced by a stable hash so no id can break the payload.
 */
export function routeObjectName(id: string): string {
  if (SAFE_NAME.test(id) && !RESERVED_NAMES.has(id)) return id;
  return `rt-x${createHash("sha256").update(id).digest("hex").slice(0, 24)}`;
}

function hostUrl(ip: string, port: number): string {
  return `http://${ip.includes(":") ? `[${ip}]` : ip}:${port}`;
}

/**
 * Builds the dynamic configuration: a router and service per route whose VM is `running`, one
 * catch-all (priority 1) to the wake sidecar for everything else, and the `api.<base>` router.
 */
export function buildDynamicConfig(
  routes: readonly RouteLike[],
  vms: ReadonlyMap<string, Vm>,
  s: TraefikSettings,
): DynamicConfig {
  const tls = s.certResolver
    ? { certResolver: s.certResolver, domains: [{ main: s.baseDomain, sans: [`*.${s.baseDomain}`] }] }
    : undefined;
  const entryPoints = [...s.entryPoints];
  const routers: Record<string, Router> = {};
  const services: Record<string, Service> = {};

  for (const r of routes) {
    // A route called `api` cannot be created through the API; should one exist anyway, it must not
    // compete with the API router.
    if (s.apiUrl && r.subdomain === "api") continue;
    const vm = vms.get(r.vmId);
    if (!vm || vm.state !== "running" || !vm.guest_ip) continue;
    const name = routeObjectName(r.id);
    routers[name] = {
      rule: `Host(\`${r.subdomain}.${s.baseDomain}\`)`,
      service: name,
      entryPoints,
      ...(tls && { tls }),
    };
    services[name] = { loadBalancer: { servers: [{ url: hostUrl(vm.guest_ip, r.targetPort) }], passHostHeader: true } };
  }

  routers[WAKE_ROUTER] = {
    rule: catchAllRule(s.baseDomain),
    service: WAKE_SERVICE,
    entryPoints,
    priority: 1,
    ...(s.wakeSecret && { middlewares: [WAKE_MIDDLEWARE] }),
    ...(tls && { tls }),
  };
  services[WAKE_SERVICE] = { loadBalancer: { servers: [{ url: s.wakeUrl }], passHostHeader: true } };

  if (s.apiUrl) {
    routers[API_ROUTER] = {
      // The provider endpoint carries the wake secret and is meant for Traefik's own poll only.
      rule: `Host(\`api.${s.baseDomain}\`) && !PathPrefix(\`${PROVIDER_PATH_PREFIX}\`)`,
      service: API_SERVICE,
      entryPoints,
      priority: API_PRIORITY,
      ...(tls && { tls }),
    };
    services[API_SERVICE] = { loadBalancer: { servers: [{ url: s.apiUrl }], passHostHeader: true } };
  }

  const config: DynamicConfig = { http: { routers, services } };
  if (s.wakeSecret) {
    config.http.middlewares = {
      [WAKE_MIDDLEWARE]: { headers: { customRequestHeaders: { [WAKE_SECRET_HEADER]: s.wakeSecret } } },
    };
  }
  return config;
}

/** JSON with object keys sorted at every level, no whitespace: equal values give equal bytes. */
export function stableStringify(value: unknown): string {
  const parts: string[] = [];
  write(value, parts);
  return parts.join("");
}

function write(value: unknown, out: string[]): void {
  if (value === null || typeof value !== "object") {
    out.push(value === undefined ? "null" : JSON.stringify(value));
    return;
  }
  if (Array.isArray(value)) {
    out.push("[");
    for (let i = 0; i < value.length; i++) {
      if (i) out.push(",");
      write(value[i], out);
    }
    out.push("]");
    return;
  }
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj)
    .filter((k) => obj[k] !== undefined)
    .sort();
  out.push("{");
  for (let i = 0; i < keys.length; i++) {
    if (i) out.push(",");
    out.push(JSON.stringify(keys[i]), ":");
    write(obj[keys[i]!], out);
  }
  out.push("}");
}
