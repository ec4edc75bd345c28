/**
 * The serialized dynamic configuration, rebuilt from per-route pieces that are cached between
 * builds: after one change only the changed routes are serialized again, so a rebuild at 100k
 * routes costs a sort, a join and a hash rather than a full serialization. Every piece comes from
 * buildDynamicConfig itself, and a test holds the result byte-equal to
 * JSON.stringify(buildDynamicConfig(...)).
 */
import type { Vm } from "../vms/platform.ts";
import { buildDynamicConfig, routeObjects, type RouteLike, type TraefikSettings } from "./config-builder.ts";

/** One serialized object: its name and `"<name>":<json>`. */
type Entry = [string, string];

interface Piece {
  route: RouteLike;
  ip: string;
  routers: Entry[];
  service: Entry;
}

export interface ConfigAssembler {
  /** The canonical JSON for these routes and VM states (same bytes as the builder's document). */
  assemble(routes: readonly RouteLike[], vms: ReadonlyMap<string, Vm>): { json: string; routers: number };
}

const byName = (a: Entry, b: Entry) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);
const entry = (name: string, value: unknown): Entry => [name, `${JSON.stringify(name)}:${JSON.stringify(value)}`];

/** An assembler for fixed settings; keep one per config service so its cache lives across builds. */
export function createConfigAssembler(settings: TraefikSettings): ConfigAssembler {
  // The fixed objects (catch-all, streams and API routers, middlewares) as the builder makes them with no route.
  const fixedDoc = buildDynamicConfig([], new Map(), settings).http;
  const fixedRouters = Object.entries(fixedDoc.routers).map(([name, r]) => entry(name, r));
  const fixedServices = Object.entries(fixedDoc.services).map(([name, sv]) => entry(name, sv));
  const head = `{"http":{"middlewares":${JSON.stringify(fixedDoc.middlewares)},"routers":{`;
  const transports = `"serversTransports":${JSON.stringify(fixedDoc.serversTransports)}`;
  let cache = new Map<string, Piece>();

  function pieceFor(route: RouteLike, vm: Vm): Piece | undefined {
    // No address (a VM made without a network): no direct router; the sidecar says why.
    if (!vm.guest_ip) return undefined;
    const cached = cache.get(route.id);
    // Compared by value: a periodic full re-read replaces every row object without changing any.
    if (
      cached &&
      cached.ip === vm.guest_ip &&
      cached.route.subdomain === route.subdomain &&
      cached.route.targetPort === route.targetPort &&
      cached.route.vmId === route.vmId
    ) {
      return cached;
    }
    if (settings.apiUrl && route.subdomain === "api") return undefined;
    const o = routeObjects(route, vm.guest_ip, settings);
    return { route, ip: vm.guest_ip, routers: o.routers.map(([n, r]) => entry(n, r)), service: entry(o.service[0], o.service[1]) };
  }

  return {
    assemble(routes, vms) {
      const next = new Map<string, Piece>();
      // As in the builder's object, a later route with the same name replaces an earlier one.
      const routers = new Map<string, Entry>(fixedRouters.map((e) => [e[0], e]));
      const services = new Map<string, Entry>(fixedServices.map((e) => [e[0], e]));
      for (const route of routes) {
        const vm = vms.get(route.vmId);
        if (!vm || vm.state !== "running" || !vm.guest_ip) continue;
        const piece = pieceFor(route, vm);
        if (!piece) continue;
        next.set(route.id, piece);
        for (const r of piece.routers) routers.set(r[0], r);
        services.set(piece.service[0], piece.service);
      }
      cache = next;
      const r = [...routers.values()].sort(byName);
      const sv = [...services.values()].sort(byName);
      return { json: `${head}${r.map((e) => e[1]).join(",")}},${transports},"services":{${sv.map((e) => e[1]).join(",")}}}}`, routers: r.length };
    },
  };
}
