/** Host header → subdomain → route, with a short-lived route cache invalidated by NOTIFY. */
import type { Database } from "../db/client.ts";
import { ROUTES_CHANNEL } from "../db/client.ts";
import { getRouteBySubdomain } from "../db/routes.repo.ts";
import type { RouteRow } from "../db/schema.ts";
import type { Logger } from "../log.ts";
import { SingleFlight } from "./single-flight.ts";

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export type HostMatch = { ok: true; subdomain: string } | { ok: false; message: string };

/**
 * Extracts the subdomain from a Host header: the port and a trailing dot are stripped and the
 * name lower-cased; it must be exactly one label under `baseDomain`.
 */
export function subdomainOf(host: string | undefined, baseDomain: string): HostMatch {
  if (!host) return { ok: false, message: "no subdomain in host header" };
  let name = host.trim().toLowerCase();
  if (name.startsWith("[")) {
    // An IPv6 literal can never be under a DNS base domain.
    return { ok: false, message: `host ${JSON.stringify(name)} is not under the base domain ${JSON.stringify(baseDomain)}` };
  }
  const colon = name.lastIndexOf(":");
  if (colon !== -1) name = name.slice(0, colon);
  if (name.endsWith(".")) name = name.slice(0, -1);
  if (name === baseDomain) return { ok: false, message: "no subdomain in host header" };
  const suffix = "." + baseDomain;
  if (!name.endsWith(suffix)) {
    return { ok: false, message: `host ${JSON.stringify(name)} is not under the base domain ${JSON.stringify(baseDomain)}` };
  }
  const sub = name.slice(0, -suffix.length);
  if (!sub) return { ok: false, message: "no subdomain in host header" };
  if (sub.includes(".")) {
    return { ok: false, message: `host ${JSON.stringify(name)} has more than one label before ${JSON.stringify(baseDomain)}` };
  }
  return { ok: true, subdomain: sub };
}

/** True when `sub` could be a stored subdomain (saves a query for garbage). */
export function isValidLabel(sub: string): boolean {
  return LABEL.test(sub);
}

export interface RouteCache {
  /** The route for `subdomain` (undefined: none), from the cache when fresh. Rejects when the database fails. */
  get(subdomain: string): Promise<RouteRow | undefined>;
  /** Forgets every cached entry. */
  clear(): void;
  /** Stops listening for changes. */
  close(): Promise<void>;
}

/**
 * Caches route lookups (misses too, so unknown names cannot hammer the database). Any write to the
 * routes table (NOTIFY on ROUTES_CHANNEL, from any replica) clears the cache; the TTL only bounds
 * staleness should a notification be lost. An expired entry is still answered at once while one
 * background lookup refreshes it: the hot path never waits on the database (PGlite runs queries on
 * the event loop), and a database outage does not take known routes down.
 */
export function createRouteCache(database: Database, opts: { ttlMs: number; log: Logger; now?: () => number }): RouteCache {
  const now = opts.now ?? Date.now;
  const entries = new Map<string, { route: RouteRow | undefined; expires: number }>();
  const lookups = new SingleFlight<RouteRow | undefined>();
  // A lookup that started before a clear() must not write its (possibly stale) answer back.
  let generation = 0;
  let closed = false;
  const unlisten = database
    .listen(ROUTES_CHANNEL, () => {
      generation += 1;
      entries.clear();
    })
    .catch((err: unknown) => {
      opts.log.warn("route change notifications unavailable; relying on the cache TTL", { err });
      return undefined;
    });

  const lookup = (subdomain: string) =>
    lookups.run(subdomain, async () => {
      const gen = generation;
      const route = await getRouteBySubdomain(database, subdomain);
      if (gen === generation && !closed) {
        // Bounded so that a scan of random names cannot grow memory without limit.
        if (entries.size >= 10_000 && !entries.has(subdomain)) entries.clear();
        entries.set(subdomain, { route, expires: now() + opts.ttlMs });
      }
      return route;
    });

  return {
    get(subdomain) {
      const hit = entries.get(subdomain);
      if (!hit) return lookup(subdomain);
      if (hit.expires <= now() && !lookups.has(subdomain)) {
        lookup(subdomain).catch((err: unknown) => opts.log.warn("route refresh failed; serving the cached route", { subdomain, err }));
      }
      return Promise.resolve(hit.route);
    },
    clear() {
      generation += 1;
      entries.clear();
    },
    async close() {
      closed = true;
      entries.clear();
      const stop = await unlisten;
      await stop?.().catch(() => {});
    },
  };
}
