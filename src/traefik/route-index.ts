/**
 * The routes the Traefik config is built from, grouped by VM (a notification names the VM whose
 * routes changed, and only those are re-read), with the fingerprint that tells a lost notification
 * (routes-fingerprint.ts) and the names Traefik gives each route's routers and service.
 */
import type { Vm } from "../vms/platform.ts";
import { servesPort } from "../vms/guest-ports.ts";
import { routeObjectName, routeRouterNames, type RouteLike } from "./config-builder.ts";
import { rowFingerprint, type Fingerprint } from "./routes-fingerprint.ts";

/** The fields the config needs of a route row (less to keep for 100k routes). */
export function slim(r: RouteLike): RouteLike {
  return { id: r.id, vmId: r.vmId, subdomain: r.subdomain, targetPort: r.targetPort };
}

export class RouteIndex {
  private byVm: Map<string, RouteLike[]> | undefined;
  private fp: Fingerprint = { count: 0, sum: 0 };
  private readonly vmFp = new Map<string, Fingerprint>();
  // service name → VM id, rebuilt lazily after the routes change.
  private services: Map<string, string> | undefined;

  /** True once a full read has filled it. */
  get loaded(): boolean {
    return this.byVm !== undefined;
  }

  /** The fingerprint of every route held, kept in step with them. */
  get fingerprint(): Fingerprint {
    return this.fp;
  }

  /** Replaces everything with a full read. */
  replaceAll(rows: readonly RouteLike[]): void {
    const grouped = new Map<string, RouteLike[]>();
    for (const r of rows) {
      const list = grouped.get(r.vmId);
      if (list) list.push(slim(r));
      else grouped.set(r.vmId, [slim(r)]);
    }
    this.byVm = new Map();
    this.services = undefined;
    this.vmFp.clear();
    this.fp = { count: 0, sum: 0 };
    for (const [vmId, list] of grouped) this.setVm(vmId, list);
  }

  /** Replaces one VM's routes and their share of the fingerprint (none: the VM has no route left). */
  setVm(vmId: string, rows: readonly RouteLike[]): void {
    const byVm = (this.byVm ??= new Map());
    this.services = undefined;
    const old = this.vmFp.get(vmId);
    if (old) this.fp = { count: this.fp.count - old.count, sum: this.fp.sum - old.sum };
    if (!rows.length) {
      byVm.delete(vmId);
      this.vmFp.delete(vmId);
      return;
    }
    const list = rows.map(slim);
    byVm.set(vmId, list);
    const mine = { count: list.length, sum: list.reduce((n, r) => n + rowFingerprint(r), 0) };
    this.vmFp.set(vmId, mine);
    this.fp = { count: this.fp.count + mine.count, sum: this.fp.sum + mine.sum };
  }

  /**
   * The routes that get a direct router: those of running VMs that are not being put to sleep, on a
   * port the VM serves. Walks the (fewer) running VMs rather than every route: at 100k routes with
   * 10% running, a lookup per route dominated.
   */
  directRoutes(vms: ReadonlyMap<string, Vm>, asleep: ReadonlySet<string> | undefined, shared?: (vm: Vm) => boolean): RouteLike[] {
    const routes: RouteLike[] = [];
    if (!this.byVm) return routes;
    for (const [id, vm] of vms) {
      if (vm.state !== "running" || asleep?.has(id)) continue;
      const list = this.byVm.get(id);
      // An address two running VMs claim could lead to either: the sidecar answers those instead.
      if (!list || shared?.(vm)) continue;
      // A port a simulated VM does not serve belongs to the host: such a route gets no direct
      // router, and the sidecar answers it as a closed port.
      for (const r of list) if (servesPort(vm, r.targetPort)) routes.push(r);
    }
    return routes;
  }

  /** Names of the routers a VM's routes get while it runs (two per route). */
  routersOf(vmId: string): string[] {
    return (this.byVm?.get(vmId) ?? []).flatMap((r) => routeRouterNames(r.id));
  }

  /** The VM a route service name belongs to (Traefik's metrics name services, not VMs). */
  vmOfService(service: string): string | undefined {
    if (!this.services) {
      this.services = new Map();
      for (const [vmId, list] of this.byVm ?? []) for (const r of list) this.services.set(routeObjectName(r.id), vmId);
    }
    return this.services.get(service);
  }

  /** VMs that have at least one route. */
  routedVms(): string[] {
    return [...(this.byVm?.keys() ?? [])];
  }
}
