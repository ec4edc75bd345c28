/** Host header → subdomain → route, with a short-lived route cache invalidated by NOTIFY. */
import type { IncomingMessage } from "node:http";
import { Counter, Gauge, type Registry } from "prom-client";
import type { Database } from "../db/client.ts";
import { ROUTES_CHANNEL } from "../db/client.ts";
import { databaseUnavailable } from "../db/errors.ts";
import { MigrationGate } from "../db/migrations.ts";
import { getRouteBySubdomain } from "../db/routes.repo.ts";
import type { RouteRow } from "../db/schema.ts";
import type { Logger } from "../log.ts";
import { SingleFlight } from "../lifecycle/single-flight.ts";
import { SUBDOMAIN_LABEL } from "../subdomain.ts";


export type HostMatch = { ok: true; subdomain: string } | { ok: false; message: string };

/**
 * Extracts the subdomain from a Host header: the port and a trailing dot are stripped and the
 * name lower-cased; it must be exactly one label under `baseDomain`.
 */
export function subdomainOf(host: string | undefined, baseDomain: string): HostMatch {
  if (!host?.trim()) return { ok: false, message: "missing Host header" };
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

/**
 * The request's one Host header. A request that names its host twice (two Host headers, or an
 * absolute-form target naming another host) is refused: routing would read one and the VM could
 * read the other.
 */
export function requestHost(req: IncomingMessage): { ok: true; host: string | undefined } | { ok: false; message: string } {
  let host: string | undefined;
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.length !== 4 || raw[i]!.toLowerCase() !== "host") continue;
    if (host !== undefined) return { ok: false, message: "more than one Host header" };
    host = raw[i + 1]!;
  }
  const target = req.url;
  if (target && !target.startsWith("/") && target !== "*") {
    let named: string | undefined;
    try {
      named = new URL(target).hostname.toLowerCase();
    } catch {
      // Not absolute-form either: the path check downstream deals with it.
    }
    const own = (host ?? "").trim().toLowerCase().replace(/:\d+$/, "").replace(/\.$/, "");
    if (named !== undefined && named.replace(/\.$/, "") !== own) return { ok: false, message: "the request target names another host than the Host header" };
  }
  return { ok: true, host };
}

/** True when `sub` could be a stored subdomain (saves a query for garbage). */
export function isValidLabel(sub: string): boolean {
  return SUBDOMAIN_LABEL.test(sub);
}

export interface RouteCache {
  /**
   * The route for `subdomain` (undefined: none), from the cache when fresh. While the database
   * cannot be read, a route known from an earlier read is answered from it; only a name never read
   * rejects.
   */
  get(subdomain: string): Promise<RouteRow | undefined>;
  /** Forgets every cached entry. */
  clear(): void;
  /** Stops listening for changes. */
  close(): Promise<void>;
}

export interface RouteCacheOptions {
  /** How long an entry is trusted before a background re-read (a notification invalidates it sooner). */
  ttlMs: number;
  log: Logger;
  now?: () => number;
  /** Where the cache's metrics go (the proxy's registry); none when absent. */
  registry?: Registry | undefined;
  /** Names without a route remembered at most (default 10,000); past it only they are dropped. */
  maxAbsent?: number;
}

interface Known {
  route: RouteRow;
  expires: number;
  /** A notification said this VM's routes changed: re-read before use, unless the database is away. */
  changed: boolean;
}

/** Names that had no route; bounded apart from known routes, so a scan of random names evicts only its own kind. */
const MAX_ABSENT = 10_000;
/** Known routes kept; the oldest read is dropped first past this. */
const MAX_KNOWN = 200_000;

/** The cache's counters, shared by every cache on one registry (the sidecar and the embedded proxy). */
function cacheMetrics(registry: Registry | undefined) {
  if (!registry) return { stale: { inc() {} }, failed: { inc() {} }, away: { set(_: number) {} } };
  const get = <T>(name: string, make: () => T): T => (registry.getSingleMetric(name) as T | undefined) ?? make();
  return {
    stale: get("hatch_route_cache_stale_total", () => new Counter({ name: "hatch_route_cache_stale_total", help: "Route lookups answered from the last good read because the database could not be read.", registers: [registry] })),
    failed: get("hatch_route_lookup_failures_total", () => new Counter({ name: "hatch_route_lookup_failures_total", help: "Route lookups that failed with nothing cached to answer from (503).", registers: [registry] })),
    away: get("hatch_route_cache_database_away", () => new Gauge({ name: "hatch_route_cache_database_away", help: "1 while route lookups cannot read the database and known routes are served from the last good read.", registers: [registry] })),
  };
}

/**
 * Caches route lookups, misses too (so unknown names cannot hammer the database). A write to the
 * routes table (NOTIFY on ROUTES_CHANNEL from any replica, payload: the VM id) invalidates that VM's
 * routes and the misses, nothing else; the TTL only bounds staleness should a notification be lost.
 * An expired entry is still answered at once while one background lookup refreshes it: the hot
 * path never waits on the database (PGlite runs queries on the event loop). While the database
 * cannot be read, every known route, changed or not, is served from its last good read, and the
 * logs and metrics say so: a database blip must not take known sites down, nor stop waking them.
 */
export function createRouteCache(database: Database, opts: RouteCacheOptions): RouteCache {
  const now = opts.now ?? Date.now;
  const log = opts.log;
  const metrics = cacheMetrics(opts.registry);
  const maxAbsent = opts.maxAbsent ?? MAX_ABSENT;
  const known = new Map<string, Known>();
  const byVm = new Map<string, Set<string>>();
  const absent = new Map<string, number>();
  const lookups = new SingleFlight<RouteRow | undefined>();
  // "No such route" from a database that is being restored is not an answer.
  const migrated = new MigrationGate(database, 1000, now);
  // A lookup that started before an invalidation must not write its (possibly stale) answer back.
  let generation = 0;
  let closed = false;
  let away: { since: number; stale: number } | undefined;

  const forget = (subdomain: string) => {
    const old = known.get(subdomain);
    if (!old) return;
    known.delete(subdomain);
    const set = byVm.get(old.route.vmId);
    set?.delete(subdomain);
    if (set?.size === 0) byVm.delete(old.route.vmId);
  };

  const remember = (subdomain: string, route: RouteRow | undefined) => {
    forget(subdomain);
    if (!route) {
      absent.delete(subdomain);
      if (absent.size >= maxAbsent) absent.clear();
      absent.set(subdomain, now() + opts.ttlMs);
      return;
    }
    absent.delete(subdomain);
    if (known.size >= MAX_KNOWN) forget(known.keys().next().value!);
    known.set(subdomain, { route, expires: now() + opts.ttlMs, changed: false });
    let set = byVm.get(route.vmId);
    if (!set) byVm.set(route.vmId, (set = new Set()));
    set.add(subdomain);
  };

  /** A notification: the VM's routes (or, without a VM, all of them) must be re-read before use. */
  const invalidate = (vmId: string | undefined) => {
    generation += 1;
    absent.clear();
    const names = vmId === undefined ? known.keys() : (byVm.get(vmId) ?? []).values();
    for (const name of names) known.get(name)!.changed = true;
  };

  const unlisten = database
    .listen(ROUTES_CHANNEL, (payload) => invalidate(payload && payload !== "*" ? payload : undefined))
    .catch((err: unknown) => {
      log.warn("route change notifications unavailable; relying on the cache TTL", { err });
      return undefined;
    });

  const wentAway = (err: unknown) => {
    if (away) return;
    away = { since: now(), stale: 0 };
    metrics.away.set(1);
    const down = databaseUnavailable(err);
    log.warn("route lookups cannot read the database; serving known routes from the last good read", { cause: down?.cause ?? "unexpected error", err, known: known.size });
  };
  const cameBack = () => {
    if (!away) return;
    log.info("route lookups read the database again", { away_ms: now() - away.since, served_from_last_read: away.stale });
    away = undefined;
    metrics.away.set(0);
  };

  const lookup = (subdomain: string) =>
    lookups.run(subdomain, async () => {
      const gen = generation;
      let route: RouteRow | undefined;
      try {
        route = await getRouteBySubdomain(database, subdomain);
        if (!route) await migrated.ensure();
      } catch (err) {
        wentAway(err);
        throw err;
      }
      cameBack();
      if (closed) return route;
      if (gen === generation) remember(subdomain, route);
      else if (route) {
        // A notification came in meanwhile: this read may be stale, but it is still the last good one.
        remember(subdomain, route);
        known.get(subdomain)!.changed = true;
      }
      return route;
    });

  /** The last good read, counted as such. */
  const fromLastRead = (hit: Known) => {
    metrics.stale.inc();
    if (away) away.stale += 1;
    return hit.route;
  };

  return {
    async get(subdomain) {
      const hit = known.get(subdomain);
      if (hit && !hit.changed) {
        if (hit.expires <= now() && !lookups.has(subdomain)) lookup(subdomain).catch(() => {});
        return away ? fromLastRead(hit) : hit.route;
      }
      if (!hit && (absent.get(subdomain) ?? 0) > now()) return undefined;
      try {
        return await lookup(subdomain);
      } catch (err) {
        if (hit) return fromLastRead(hit);
        metrics.failed.inc();
        throw err;
      }
    },
    clear() {
      generation += 1;
      known.clear();
      byVm.clear();
      absent.clear();
    },
    async close() {
      closed = true;
      known.clear();
      byVm.clear();
      absent.clear();
      const stop = await unlisten;
      await stop?.().catch(() => {});
    },
  };
}
