/**
 * The serialized dynamic configuration, rebuilt from per-route pieces that are cached between
 * builds: after one change only the changed routes are serialized again, so a rebuild at 100k
 * routes costs a sort, a join and a hash rather than a full serialization. Every piece comes from
 * buildDynamicConfig itself, and a test holds the result byte-equal to
 * JSON.stringify(buildDynamicConfig(...)).
 */
import type { Vm } from "../vms/platform.ts";
import { buildDynamicConfig, routeObjectName, type RouteLike, type TraefikSettings } from "./config-builder.ts";

interface Piece {
  route: RouteLike;
  ip: string;
  name: string;
  /** `"<name>":<router json>` and `"<name>":<service json>`. */
  router: string;
  service: string;
}

export interface ConfigAssembler {
  /** The canonical JSON for these routes and VM states (same bytes as the builder's document). */
  assemble(routes: readonly RouteLike[], vms: ReadonlyMap<string, Vm>): { json: string; routers: number };
}

const byName = (a: Piece, b: Piece) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

/** An assembler for fixed settings; keep one per config service so its cache lives across builds. */
export function createConfigAssembler(settings: TraefikSettings): ConfigAssembler {
  // The fixed objects (catch-all, API router, middleware) as the builder makes them with no route.
  const fixedDoc = buildDynamicConfig([], new Map(), settings).http;
  const fixed: Piece[] = Object.keys(fixedDoc.routers).map((name) => ({
    route: { id: name, vmId: "", subdomain: "", targetPort: 0 },
    ip: "",
    name,
    router: `${JSON.stringify(name)}:${JSON.stringify(fixedDoc.routers[name])}`,
    service: `${JSON.stringify(name)}:${JSON.stringify(fixedDoc.services[name])}`,
  }));
  const head = fixedDoc.middlewares ? `{"http":{"middlewares":${JSON.stringify(fixedDoc.middlewares)},"routers":{` : `{"http":{"routers":{`;
  let cache = new Map<string, Piece>();

  function pieceFor(route: RouteLike, vm: Vm): Piece | undefined {
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
    const one = buildDynamicConfig([route], new Map([[route.vmId, vm]]), settings).http;
    const name = routeObjectName(route.id);
    const router = one.routers[name];
    if (!router) return undefined;
    const key = JSON.stringify(name);
    return { route, ip: vm.guest_ip, name, router: `${key}:${JSON.stringify(router)}`, service: `${key}:${JSON.stringify(one.services[name])}` };
  }

  return {
    assemble(routes, vms) {
      const next = new Map<string, Piece>();
      const named = new Map<string, Piece>();
      for (const p of fixed) named.set(p.name, p);
      for (const route of routes) {
        const vm = vms.get(route.vmId);
        if (!vm || vm.state !== "running" || !vm.guest_ip) continue;
        const piece = pieceFor(route, vm);
        if (!piece) continue;
        next.set(route.id, piece);
        // As in the builder's object, a later route with the same name replaces an earlier one.
        named.set(piece.name, piece);
      }
      cache = next;
      const pieces = [...named.values()].sort(byName);
      const routers = pieces.map((p) => p.router).join(",");
      const services = pieces.map((p) => p.service).join(",");
      return { json: `${head}${routers}},"services":{${services}}}}`, routers: pieces.length };
    },
  };
}
