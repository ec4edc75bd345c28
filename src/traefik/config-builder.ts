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

// Keys are declared (and created) in sorted order: entryPoints, middlewares, priority, rule, service, tls.
type Router = {
  entryPoints: string[];
  middlewares?: string[];
  priority?: number;
  rule: string;
  service: string;
  tls?: { certResolver: string; domains: { main: string; sans: string[] }[] };
};
type Service = { loadBalancer: { passHostHeader: boolean; servers: { url: string }[] } };

export interface DynamicConfig {
  http: {
    middlewares?: Record<string, { headers: { customRequestHeaders: Record<string, string> } }>;
    routers: Record<string, Router>;
    services: Record<string, Service>;
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
 * Objects are created with their keys already in sorted order, so stableStringify has nothing to
 * reorder on the hot path (100k routes).
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
  const suffix = `.${s.baseDomain}\`)`;
  const direct: [string, Router, Service][] = [];

  for (const r of routes) {
    // A route called `api` cannot be created through the API; should one exist anyway, it must not
    // compete with the API router.
    if (s.apiUrl && r.subdomain === "api") continue;
    const vm = vms.get(r.vmId);
    if (!vm || vm.state !== "running" || !vm.guest_ip) continue;
    const name = routeObjectName(r.id);
    const router: Router = { entryPoints, rule: "Host(`" + r.subdomain + suffix, service: name };
    if (tls) router.tls = tls;
    direct.push([name, router, { loadBalancer: { passHostHeader: true, servers: [{ url: hostUrl(vm.guest_ip, r.targetPort) }] } }]);
  }

  const wakeRouter: Router = s.wakeSecret
    ? { entryPoints, middlewares: [WAKE_MIDDLEWARE], priority: 1, rule: catchAllRule(s.baseDomain), service: WAKE_SERVICE }
    : { entryPoints, priority: 1, rule: catchAllRule(s.baseDomain), service: WAKE_SERVICE };
  if (tls) wakeRouter.tls = tls;
  direct.push([WAKE_ROUTER, wakeRouter, { loadBalancer: { passHostHeader: true, servers: [{ url: s.wakeUrl }] } }]);

  if (s.apiUrl) {
    const apiRouter: Router = {
      entryPoints,
      priority: API_PRIORITY,
      // The provider endpoint carries the wake secret and is meant for Traefik's own poll only.
      rule: `Host(\`api.${s.baseDomain}\`) && !PathPrefix(\`${PROVIDER_PATH_PREFIX}\`)`,
      service: API_SERVICE,
    };
    if (tls) apiRouter.tls = tls;
    direct.push([API_ROUTER, apiRouter, { loadBalancer: { passHostHeader: true, servers: [{ url: s.apiUrl }] } }]);
  }

  direct.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const routers: Record<string, Router> = {};
  const services: Record<string, Service> = {};
  for (const [name, router, service] of direct) {
    routers[name] = router;
    services[name] = service;
  }
  const middlewares = s.wakeSecret
    ? { [WAKE_MIDDLEWARE]: { headers: { customRequestHeaders: { [WAKE_SECRET_HEADER]: s.wakeSecret } } } }
    : undefined;
  return { http: middlewares ? { middlewares, routers, services } : { routers, services } };
}

/**
 * JSON with object keys sorted at every level and no whitespace: equal values give equal bytes.
 * Objects whose keys are already in order are not copied, and the native JSON.stringify does the
 * writing. (Integer-like keys would be listed first by any JS engine, in numeric order: still
 * deterministic, and no key here is integer-like.)
 */
export function stableStringify(value: unknown): string {
  return JSON.stringify(sortKeys(value)) ?? "null";
}

function sortKeys(value: unknown): unknown {
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) {
    let copy: unknown[] | undefined;
    for (let i = 0; i < value.length; i++) {
      const v = value[i];
      const sv = sortKeys(v);
      if (sv !== v) (copy ??= value.slice())[i] = sv;
    }
    return copy ?? value;
  }
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj);
  let inOrder = true;
  for (let i = 1; i < keys.length; i++) if (keys[i - 1]! > keys[i]!) inOrder = false;
  let copy: Record<string, unknown> | undefined;
  if (!inOrder) {
    keys.sort();
    copy = {};
  }
  for (const k of keys) {
    const v = obj[k];
    const sv = sortKeys(v);
    if (copy) copy[k] = sv;
    else if (sv !== v) {
      // A child changed: copy this object from here on (keys are in order already).
      copy = {};
      for (const k2 of keys) {
        if (k2 === k) break;
        copy[k2] = obj[k2];
      }
      copy[k] = sv;
    }
  }
  return copy ?? obj;
}
