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
  /** The route API, published as `api.<base>` (route calls) above every other router. */
  apiUrl?: string | undefined;
  /** The VM platform's API (Hatch, or the simulator): every other call on `api.<base>` goes straight to it. */
  platformUrl?: string | undefined;
  /**
   * Longest wait for a VM's response headers on a direct router; 0 or absent = none. A connection
   * Traefik keeps to a VM that the platform pauses for a snapshot never answers: past this, a GET
   * falls back to the sidecar (which wakes the VM) and other methods get a 504.
   */
  vmResponseTimeoutMs?: number | undefined;
}

export const WAKE_ROUTER = "hatch-wake";
export const WAKE_SERVICE = "hatch-wake";
export const WAKE_MIDDLEWARE = "hatch-wake-auth";
export const STREAMS_ROUTER = "hatch-streams";
export const FALLBACK_MIDDLEWARE = "hatch-sleep-fallback";
export const RETRY_MIDDLEWARE = "hatch-vm-retry";
export const VM_TRANSPORT = "hatch-vm";
/**
 * Traefik's retry repeats a request only when its connection failed before the request was
 * written (no byte reached the VM, so nothing runs twice): a VM put to sleep behind Traefik's back
 * and woken within about 3.4 s (6 attempts, 500 ms growing) still answers non-GET requests.
 */
export const RETRY = { attempts: 6, initialInterval: "500ms" };
/**
 * A VM's port accepts within milliseconds on its bridge. One that does not (a VM Hatch is pausing
 * to snapshot is a black hole; a snapshotted one fails only after seconds of ARP) must not hold a
 * request for Traefik's default 30 s per attempt, nor 5 s: past this, a GET falls back to the
 * sidecar (which keeps trying and wakes the VM) and other methods get the retry middleware.
 */
export const VM_DIAL_TIMEOUT = "1s";
/**
 * Idle connections kept per VM, as Traefik's default transport keeps: a declared serversTransport
 * without it falls back to Go's 2, and every concurrent request beyond 2 opens a new connection
 * (measured: half the direct path's throughput, twice Traefik's CPU per request).
 */
export const VM_MAX_IDLE_CONNS = 200;
/**
 * How long a connection to a VM stays pooled unused (Go's default: 90 s). A sleep takes longer than
 * this (drain, then a snapshot that pauses the VM for seconds), so no pooled connection survives
 * one: after a restore, a kept connection is dead (or frozen) and a POST written on it would fail.
 * Opening a new one to a VM on the host's bridge costs well under a millisecond.
 */
export const VM_IDLE_CONN_TIMEOUT = "1s";
export const API_ROUTER = "hatch-api";
export const API_SERVICE = "hatch-api";
export const VM_API_ROUTER = "hatch-vm-api";
export const VM_API_SERVICE = "hatch-vm-api";
/**
 * The calls `api.<base>` sends to the route API; the rest of Hatch's API goes to the VM platform.
 * The same list the route API serves itself (src/api/app.ts).
 */
export const ROUTE_API_RULE =
  "(PathRegexp(`^/vms/[^/]+/(routes|sleep|activity)/?$`) || PathPrefix(`/routes`) || Path(`/healthz`) || Path(`/readyz`) || Path(`/metrics`) || Path(`/openapi.json`))";
export const WAKE_SECRET_HEADER = "X-Hatch-Wake-Secret";
/** Suffix of a route's second router, the one for GET and HEAD that falls back to the sidecar. */
export const GET_ROUTER_SUFFIX = "-get";
/**
 * Explicit priorities, far above any default (a router's default priority is its rule's length,
 * under 400 for any route): the API router first, then upgrades and event streams to the sidecar,
 * then the routes' own routers by rule length, the catch-all last.
 */
export const API_PRIORITY = 20_000;
export const STREAMS_PRIORITY = 10_000;
/** The path prefix the API router never forwards, so the provider endpoint is not reachable through Traefik. */
export const PROVIDER_PATH_PREFIX = "/traefik";
/** Where Traefik's errors middleware re-asks the sidecar for a GET that a sleeping VM failed. */
export const FALLBACK_PATH = "/.well-known/hatch-proxy/sleep-fallback";
/**
 * Statuses Traefik answers itself when a VM's port is gone (refused, reset: 502; dial timeout: 504).
 * 503 is left to the apps: Traefik does not produce it for a single-server service.
 */
export const FALLBACK_STATUSES = ["502", "504"];
/**
 * The errors middleware answers with the status it caught whatever its service says (it discards
 * the service's status), so the fallback's status is fixed here: a 307 back to the same URL, which
 * the sidecar sends once the VM is awake; the client repeats the request and gets the app's own
 * answer and status.
 */
export const FALLBACK_REWRITE = 307;

// Keys are declared (and created) in sorted order: entryPoints, middlewares, priority, rule, service, tls.
type Router = {
  entryPoints: string[];
  middlewares?: string[];
  priority?: number;
  rule: string;
  service: string;
  tls?: { certResolver: string; domains: { main: string; sans: string[] }[] };
};
type Service = { loadBalancer: { passHostHeader: boolean; servers: { url: string }[]; serversTransport?: string } };
type Middleware =
  | { headers: { customRequestHeaders: Record<string, string> } }
  | { errors: { query: string; service: string; status: string[]; statusRewrites: Record<string, number> } }
  | { retry: { attempts: number; initialInterval: string } };
type ServersTransport = { forwardingTimeouts: { dialTimeout: string; idleConnTimeout: string; responseHeaderTimeout?: string }; maxIdleConnsPerHost: number };

export interface DynamicConfig {
  http: {
    middlewares: Record<string, Middleware>;
    routers: Record<string, Router>;
    serversTransports: Record<string, ServersTransport>;
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

/** Requests that hold a connection open (WebSocket and other upgrades, server-sent events): always through the sidecar, which sees them open. */
export function streamsRule(baseDomain: string): string {
  return `${catchAllRule(baseDomain)} && (HeaderRegexp(\`Upgrade\`, \`.\`) || HeaderRegexp(\`Accept\`, \`(?i)text/event-stream\`))`;
}

/** The errors-middleware query: the original URL and status, and the wake secret (the middleware sends no custom header). */
export function fallbackQuery(wakeSecret: string | undefined): string {
  const token = wakeSecret ? `token=${encodeURIComponent(wakeSecret)}&` : "";
  return `${FALLBACK_PATH}?${token}status={status}&url={url}`;
}

const SAFE_NAME = /^[A-Za-z0-9_-]+$/;
const RESERVED_NAMES = new Set([
  WAKE_ROUTER,
  WAKE_SERVICE,
  WAKE_MIDDLEWARE,
  STREAMS_ROUTER,
  FALLBACK_MIDDLEWARE,
  RETRY_MIDDLEWARE,
  VM_TRANSPORT,
  API_ROUTER,
  API_SERVICE,
  VM_API_ROUTER,
  VM_API_SERVICE,
]);

/**
 * The router/service name of a route. Route ids are already safe (`rt_…`); anything else (an `@`,
 * a dot, a clash with our own names or with another route's GET router) is replaced by a stable
 * hash so no id can break the payload.
 */
export function routeObjectName(id: string): string {
  if (SAFE_NAME.test(id) && !RESERVED_NAMES.has(id) && !id.endsWith(GET_ROUTER_SUFFIX)) return id;
  return `rt-x${createHash("sha256").update(id).digest("hex").slice(0, 24)}`;
}

/** The names of a route's two routers (its service has the first name). */
export function routeRouterNames(id: string): [string, string] {
  const name = routeObjectName(id);
  return [name, name + GET_ROUTER_SUFFIX];
}

function hostUrl(ip: string, port: number): string {
  return `http://${ip.includes(":") ? `[${ip}]` : ip}:${port}`;
}

/**
 * A running route's routers and service: `<name>` for every method (with the retry), and
 * `<name>-get` (longer rule, so tried first) for GET and HEAD with the sleep fallback: if the VM
 * went to sleep behind Traefik's back, the errors middleware asks the sidecar, which wakes it.
 */
export function routeObjects(route: RouteLike, guestIp: string, s: TraefikSettings): { routers: [string, Router][]; service: [string, Service] } {
  const entryPoints = [...s.entryPoints];
  const tls = tlsOf(s);
  const [name, getName] = routeRouterNames(route.id);
  const host = "Host(`" + route.subdomain + "." + s.baseDomain + "`)";
  const plain: Router = { entryPoints, middlewares: [RETRY_MIDDLEWARE], rule: host, service: name };
  const get: Router = { entryPoints, middlewares: [FALLBACK_MIDDLEWARE], rule: `${host} && (Method(\`GET\`) || Method(\`HEAD\`))`, service: name };
  if (tls) {
    plain.tls = tls;
    get.tls = tls;
  }
  return {
    routers: [
      [name, plain],
      [getName, get],
    ],
    service: [name, { loadBalancer: { passHostHeader: true, servers: [{ url: hostUrl(guestIp, route.targetPort) }], serversTransport: VM_TRANSPORT } }],
  };
}

function tlsOf(s: TraefikSettings) {
  return s.certResolver ? { certResolver: s.certResolver, domains: [{ main: s.baseDomain, sans: [`*.${s.baseDomain}`] }] } : undefined;
}

const byKey = <T>(a: [string, T], b: [string, T]) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);

/**
 * Builds the dynamic configuration: two routers and a service per route whose VM is `running`, the
 * streams router and the catch-all (priority 1) to the wake sidecar, and the `api.<base>` router.
 * Objects are created with their keys already in sorted order, so stableStringify has nothing to
 * reorder on the hot path (100k routes).
 */
export function buildDynamicConfig(
  routes: readonly RouteLike[],
  vms: ReadonlyMap<string, Vm>,
  s: TraefikSettings,
): DynamicConfig {
  const tls = tlsOf(s);
  const entryPoints = [...s.entryPoints];
  const routers: [string, Router][] = [];
  const services: [string, Service][] = [];

  for (const r of routes) {
    // A route called `api` cannot be created through the API; should one exist anyway, it must not
    // compete with the API router.
    if (s.apiUrl && r.subdomain === "api") continue;
    const vm = vms.get(r.vmId);
    if (!vm || vm.state !== "running" || !vm.guest_ip) continue;
    const objects = routeObjects(r, vm.guest_ip, s);
    routers.push(...objects.routers);
    services.push(objects.service);
  }

  const auth = s.wakeSecret ? { middlewares: [WAKE_MIDDLEWARE] } : {};
  const wakeRouter: Router = { entryPoints, ...auth, priority: 1, rule: catchAllRule(s.baseDomain), service: WAKE_SERVICE };
  const streamsRouter: Router = { entryPoints, ...auth, priority: STREAMS_PRIORITY, rule: streamsRule(s.baseDomain), service: WAKE_SERVICE };
  if (tls) {
    wakeRouter.tls = tls;
    streamsRouter.tls = tls;
  }
  routers.push([WAKE_ROUTER, wakeRouter], [STREAMS_ROUTER, streamsRouter]);
  services.push([WAKE_SERVICE, { loadBalancer: { passHostHeader: true, servers: [{ url: s.wakeUrl }] } }]);

  if (s.apiUrl) {
    // The provider endpoint carries the wake secret and is meant for Traefik's own poll only.
    const apiHost = `Host(\`api.${s.baseDomain}\`) && !PathPrefix(\`${PROVIDER_PATH_PREFIX}\`)`;
    const apiRouter: Router = {
      entryPoints,
      priority: API_PRIORITY,
      rule: s.platformUrl ? `${apiHost} && ${ROUTE_API_RULE}` : apiHost,
      service: API_SERVICE,
    };
    if (tls) apiRouter.tls = tls;
    routers.push([API_ROUTER, apiRouter]);
    services.push([API_SERVICE, { loadBalancer: { passHostHeader: true, servers: [{ url: s.apiUrl }] } }]);
    if (s.platformUrl) {
      // Everything else of Hatch's API, straight to the platform: no hop of ours for VM calls.
      const vmRouter: Router = { entryPoints, priority: API_PRIORITY - 1, rule: apiHost, service: VM_API_SERVICE };
      if (tls) vmRouter.tls = tls;
      routers.push([VM_API_ROUTER, vmRouter]);
      services.push([VM_API_SERVICE, { loadBalancer: { passHostHeader: false, servers: [{ url: s.platformUrl }] } }]);
    }
  }

  const middlewares: Record<string, Middleware> = {
    [FALLBACK_MIDDLEWARE]: {
      errors: {
        query: fallbackQuery(s.wakeSecret),
        service: WAKE_SERVICE,
        status: [...FALLBACK_STATUSES],
        statusRewrites: Object.fromEntries(FALLBACK_STATUSES.map((c) => [c, FALLBACK_REWRITE])),
      },
    },
  };
  middlewares[RETRY_MIDDLEWARE] = { retry: { ...RETRY } };
  if (s.wakeSecret) middlewares[WAKE_MIDDLEWARE] = { headers: { customRequestHeaders: { [WAKE_SECRET_HEADER]: s.wakeSecret } } };
  return {
    http: {
      middlewares,
      routers: Object.fromEntries(routers.sort(byKey)),
      serversTransports: { [VM_TRANSPORT]: vmTransport(s) },
      services: Object.fromEntries(services.sort(byKey)),
    },
  };
}

/** The direct routers' transport: a short dial, Traefik's pool size, and the response deadline if set. */
function vmTransport(s: TraefikSettings): ServersTransport {
  const ms = s.vmResponseTimeoutMs ?? 0;
  const base = { dialTimeout: VM_DIAL_TIMEOUT, idleConnTimeout: VM_IDLE_CONN_TIMEOUT };
  const forwardingTimeouts = ms > 0 ? { ...base, responseHeaderTimeout: `${ms}ms` } : base;
  return { forwardingTimeouts, maxIdleConnsPerHost: VM_MAX_IDLE_CONNS };
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
