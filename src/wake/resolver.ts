/**
 * Host header → route → target, for the wake sidecar and the embedded proxy: Traefik's sleep
 * fallback and the wake secret are checked, the subdomain read, the route looked up (cached), and
 * the VM taken as last known, or asked for when unknown (or when Traefik's direct router just
 * failed on it).
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";
import type { Config } from "../config.ts";
import type { RouteRow } from "../db/schema.ts";
import { NO_NETWORK, SHUTTING_DOWN } from "../lifecycle/failure.ts";
import type { VmLifecycle } from "../lifecycle/vm-lifecycle.ts";
import { FALLBACK_PATH } from "../traefik/config-builder.ts";
import type { Logger } from "../log.ts";
import type { VmDirectory } from "../vms/platform.ts";
import { servesPort } from "../vms/guest-ports.ts";
import { WAKE_SECRET_HEADER } from "./headers.ts";
import type { Resolved } from "./proxy-context.ts";
import { isValidLabel, requestHost, subdomainOf, type RouteCache } from "./resolve.ts";

export interface ResolverDeps {
  config: Config;
  directory: VmDirectory;
  lifecycle: VmLifecycle;
  routes: RouteCache;
  log: Logger;
  /** Serving HATCH_PROXY_ADDR itself: no wake secret, no fallback, and `api.<base>` is the route API. */
  embedded: boolean;
  isClosed(): boolean;
}

/** A resolver for one proxy; never rejects (every way it ends is a Resolved). */
export function createResolver(deps: ResolverDeps): (req: IncomingMessage) => Promise<Resolved> {
  const { config, directory, lifecycle } = deps;
  const log = deps.log;
  const secretHash = !deps.embedded && config.wakeSecret ? sha256(config.wakeSecret) : undefined;
  const apiTarget = deps.embedded ? hostPort(config.routeApiUrl) : undefined;

  /** A request from Traefik's errors middleware: its path carries the original URL and the secret. */
  function fallbackTarget(req: IncomingMessage): string | undefined {
    if (deps.embedded || !req.url?.startsWith(FALLBACK_PATH + "?")) return undefined;
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

  return async function resolve(req: IncomingMessage): Promise<Resolved> {
    if (deps.isClosed()) return { kind: "fail", failure: SHUTTING_DOWN };
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
      route = await deps.routes.get(sub);
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
    if (!vm.guest_ip) return { kind: "fail", failure: NO_NETWORK };
    const conflict = lifecycle.addresses.check(vm);
    if (conflict) return { kind: "fail", failure: conflict };
    // A simulated VM lives on a host loopback address: a port it does not serve is the host's.
    if (!servesPort(vm, route.targetPort)) return { kind: "fail", failure: { status: 502, error: `vm port ${route.targetPort} refused the connection` } };
    return { kind: "routed", route, vm, subdomain: sub, fallback: fallbackPath !== undefined };
  };
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
