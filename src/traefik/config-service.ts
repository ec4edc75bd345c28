/**
 * The cache around the pure builder: the body is rebuilt when routes or VM states change, never
 * per poll, and a failed read never replaces the last good body (Traefik drops every router it
 * does not see, so a 200 with a partial config would take all sites down).
 */
import { createHash } from "node:crypto";
import { stringify as toYaml } from "yaml";
import type { Config } from "../config.ts";
import type { Database } from "../db/client.ts";
import { ROUTES_CHANNEL } from "../db/client.ts";
import { DatabaseNotMigratedError, databaseUnavailable } from "../db/errors.ts";
import { MigrationGate } from "../db/migrations.ts";
import { listAllRoutes, listRoutesByVm } from "../db/routes.repo.ts";
import type { Logger } from "../log.ts";
import type { VmDirectory } from "../vms/platform.ts";
import { servesPort } from "../vms/guest-ports.ts";
import type { SleepWatch } from "../lifecycle/sleep-watch.ts";
import { createConfigAssembler } from "./config-assembler.ts";
import { routeObjectName, routeRouterNames, type RouteLike, type TraefikSettings } from "./config-builder.ts";
import { routesFingerprint, rowFingerprint, type Fingerprint } from "./routes-fingerprint.ts";

/** One built configuration; the same routes and states always give the same `json` and `etag`. */
export interface ConfigSnapshot {
  json: string;
  /** The same document as YAML (built on first use: most pollers never ask for it). */
  readonly yaml: string;
  /** Strong ETag (quoted) of `json`. */
  etag: string;
  /** Strong ETag (quoted) of `yaml`. */
  readonly yamlEtag: string;
  /** `json` as bytes, so serving a poll copies nothing. */
  body: Uint8Array<ArrayBuffer>;
  /** Epoch ms when these bytes were first built (not part of the body). */
  builtAt: number;
  routers: number;
}

export interface ConfigServiceHealth {
  /** A config has been built at least once (the endpoint answers 200). */
  ready: boolean;
  /** Why the last attempt failed, in public words (no driver messages); undefined when it succeeded. */
  lastError: string | undefined;
  lastSuccessAt: number | undefined;
}

export interface ConfigService {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** The last good config, or undefined before the first successful build. */
  current(): ConfigSnapshot | undefined;
  /** Re-reads every route from the database and rebuilds; resolves when done (never rejects). */
  refresh(): Promise<void>;
  health(): ConfigServiceHealth;
  /** Why there is no config yet (for the 503 body). */
  notReadyReason(): string;
  /** Names of the routers a VM's routes get while it runs (two per route), from the cached routes. */
  routersOf(vmId: string): string[];
  /** The VM a route service name belongs to (Traefik's metrics name services, not VMs). */
  vmOfService(service: string): string | undefined;
  /** VMs that have at least one route (cached). */
  routedVms(): string[];
}

export interface ConfigServiceDeps {
  database: Database;
  directory: VmDirectory;
  config: Config;
  log: Logger;
  /** Interval of the fingerprint check that heals lost notifications with a full re-read (default 5 s). */
  resyncMs?: number;
  /** Sleeps in progress: their VMs' direct routers stay out even while the VMs still run. */
  sleeps?: SleepWatch | undefined;
}

/** The builder settings derived from the process configuration. */
export function traefikSettings(config: Config): TraefikSettings {
  return {
    baseDomain: config.baseDomain,
    entryPoints: config.traefikEntryPoints,
    wakeUrl: config.wakeUrl,
    wakeSecret: config.wakeSecret,
    certResolver: config.traefikCertResolver,
    apiUrl: config.routeApiUrl,
    platformUrl: config.traefikPlatformUrl,
  };
}

/** Strong ETag of a body: a quoted SHA-256 (base64url). */
export function etagOf(text: string): string {
  return `"${createHash("sha256").update(text).digest("base64url")}"`;
}

/** Wraps a built JSON document with its hash, bytes and a lazily built YAML twin. */
export function makeSnapshot(json: string, routers: number, builtAt: number): ConfigSnapshot {
  let yaml: string | undefined;
  let yamlEtag: string | undefined;
  return {
    json,
    etag: etagOf(json),
    body: new TextEncoder().encode(json),
    builtAt,
    routers,
    get yaml() {
      yaml ??= toYaml(JSON.parse(json), { lineWidth: 0 });
      return yaml;
    },
    get yamlEtag() {
      yamlEtag ??= etagOf(this.yaml);
      return yamlEtag;
    },
  };
}

function slim(r: RouteLike): RouteLike {
  return { id: r.id, vmId: r.vmId, subdomain: r.subdomain, targetPort: r.targetPort };
}

/** Creates the cached config; call start() to load it and follow changes. */
export function createConfigService(deps: ConfigServiceDeps): ConfigService {
  const { database, directory, config } = deps;
  const log = deps.log.child({ component: "traefik-config" });
  const assembler = createConfigAssembler(traefikSettings(config));
  const resyncMs = deps.resyncMs ?? 5000;

  // Routes grouped by VM, so a notification (payload = VM id) re-reads only that VM's routes.
  let byVm: Map<string, RouteLike[]> | undefined;
  // The cache's fingerprint, kept in step with byVm (see routes-fingerprint.ts).
  let fp: Fingerprint = { count: 0, sum: 0 };
  const vmFp = new Map<string, Fingerprint>();
  let snapshot: ConfigSnapshot | undefined;
  // service name → VM id, rebuilt lazily after the routes change.
  let services: Map<string, string> | undefined;
  let lastError: string | undefined;
  let lastSuccessAt: number | undefined;
  let reason = "starting";

  let wantFull = false;
  let wantCheck = false;
  const wantVms = new Set<string>();
  let wantBuild = false;
  let running: Promise<void> | undefined;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let readyTimer: NodeJS.Timeout | undefined;
  let unlisten: (() => Promise<void>) | undefined;
  let unsubscribe: (() => void) | undefined;

  // Never build from a database that lacks migrations (being restored, or older than this code):
  // its empty tables would publish a config without a single route.
  const gate = new MigrationGate(database);

  /** The public reason for a failed read. */
  const readFailure = (err: unknown) =>
    err instanceof DatabaseNotMigratedError ? `database not fully migrated (${err.message})` : "database unavailable";

  function fail(publicReason: string, err: unknown) {
    if (lastError !== publicReason) log.error("traefik config not refreshed; keeping the last good one", { reason: publicReason, cause: databaseUnavailable(err)?.cause, err });
    lastError = publicReason;
    if (!snapshot) reason = publicReason;
  }

  /** Replaces one VM's routes in the cache and in its fingerprint. */
  function setVm(vmId: string, list: RouteLike[] | undefined) {
    services = undefined;
    const old = vmFp.get(vmId);
    if (old) fp = { count: fp.count - old.count, sum: fp.sum - old.sum };
    if (!list?.length) {
      byVm!.delete(vmId);
      vmFp.delete(vmId);
      return;
    }
    byVm!.set(vmId, list);
    const mine = { count: list.length, sum: list.reduce((n, r) => n + rowFingerprint(r), 0) };
    vmFp.set(vmId, mine);
    fp = { count: fp.count + mine.count, sum: fp.sum + mine.sum };
  }

  /** True when every migration is applied now (asked once per round of notified VMs). */
  async function migrated(): Promise<boolean> {
    try {
      await gate.ensure(true);
      return true;
    } catch (err) {
      fail(readFailure(err), err);
      return false;
    }
  }

  async function loadAll(): Promise<boolean> {
    try {
      await gate.ensure(true);
      const rows = await listAllRoutes(database);
      const grouped = new Map<string, RouteLike[]>();
      for (const r of rows) {
        const list = grouped.get(r.vmId);
        if (list) list.push(slim(r));
        else grouped.set(r.vmId, [slim(r)]);
      }
      byVm = new Map();
      services = undefined;
      vmFp.clear();
      fp = { count: 0, sum: 0 };
      for (const [vmId, list] of grouped) setVm(vmId, list);
      return true;
    } catch (err) {
      fail(readFailure(err), err);
      return false;
    }
  }

  async function loadVm(vmId: string): Promise<boolean> {
    try {
      const rows = await listRoutesByVm(database, vmId);
      setVm(vmId, rows.map(slim));
      return true;
    } catch (err) {
      fail(readFailure(err), err);
      return false;
    }
  }

  function build() {
    if (!byVm) return;
    if (!directory.ready) {
      if (!snapshot) reason = "VM states not loaded yet";
      return;
    }
    // Only routes of running VMs get a router: walking the (fewer) running VMs avoids a lookup per
    // route, which dominates at 100k routes with 10% running. The builder still checks each state.
    const vms = directory.all();
    const routes: RouteLike[] = [];
    // A VM being put to sleep keeps running for a while, but its requests must reach the sidecar.
    const asleep = deps.sleeps?.vmIds();
    for (const [id, vm] of vms) {
      if (vm.state !== "running" || asleep?.has(id)) continue;
      const list = byVm.get(id);
      // A port a simulated VM does not serve belongs to the host: such a route gets no direct
      // router, and the sidecar answers it as a closed port.
      if (list) for (const r of list) if (servesPort(vm, r.targetPort)) routes.push(r);
    }
    // Same bytes as JSON.stringify(buildDynamicConfig(...)), re-serializing only changed routes.
    const { json, routers } = assembler.assemble(routes, vms);
    const now = Date.now();
    if (!lastError) lastSuccessAt = now;
    if (snapshot?.json === json) return;
    snapshot = makeSnapshot(json, routers, now);
    log.debug("traefik config built", { routers, bytes: snapshot.body.length, etag: snapshot.etag });
  }

  /** The periodic check: a full re-read only when the table differs from the cache (a lost NOTIFY). */
  async function check(): Promise<{ ok: boolean; read: boolean }> {
    let db: Fingerprint;
    try {
      // A database swapped for one being restored still answers: its migrations say it is not ready.
      await gate.ensure(true);
      db = await routesFingerprint(database);
    } catch (err) {
      fail(readFailure(err), err);
      return { ok: false, read: false };
    }
    if (db.count === fp.count && db.sum === fp.sum) return { ok: true, read: false };
    log.info("routes changed without a notification reaching this replica; re-reading all", { routes: db.count });
    return { ok: await loadAll(), read: true };
  }

  async function drain(): Promise<void> {
    while (!stopped && (wantFull || wantVms.size || wantBuild || wantCheck)) {
      let readOk = true;
      let read = true;
      if (wantFull || !byVm) {
        wantFull = false;
        wantCheck = false;
        // Changes announced while the full read runs are re-read afterwards, so none is lost.
        wantVms.clear();
        readOk = await loadAll();
      } else if (wantVms.size) {
        const vms = [...wantVms];
        wantVms.clear();
        readOk = await migrated();
        if (readOk) for (const id of vms) if (!(readOk = await loadVm(id))) break;
      } else if (wantCheck) {
        wantCheck = false;
        ({ ok: readOk, read } = await check());
      }
      if (!readOk) {
        // The change is unknown: the periodic resync re-reads everything. VM state changes still
        // apply to the routes of the last good read below.
        wantFull = true;
        wantVms.clear();
        if (!wantBuild) return;
      } else lastError = undefined;
      if (!read && !wantBuild && snapshot) {
        // Checked and unchanged: the served config is confirmed current.
        lastSuccessAt = Date.now();
        continue;
      }
      wantBuild = false;
      build();
      if (!readOk) return;
    }
  }

  /** Runs the pending work; at most one drain runs at a time, later requests join the next round. */
  function kick(): Promise<void> {
    if (running) return running;
    running = drain()
      .catch((err) => fail("internal error", err))
      .finally(() => {
        running = undefined;
        // Work queued during the last await of a finished drain.
        if (!stopped && !wantFull && (wantVms.size || wantBuild)) void kick();
      });
    return running;
  }

  return {
    async start() {
      stopped = false;
      const rebuild = () => {
        wantBuild = true;
        void kick();
      };
      const offDirectory = directory.onChange(rebuild);
      const offSleeps = deps.sleeps?.onChange(rebuild);
      unsubscribe = () => {
        offDirectory();
        offSleeps?.();
      };
      try {
        unlisten = await database.listen(ROUTES_CHANNEL, (payload) => {
          // Payload = the VM whose routes changed; anything else means "re-read everything".
          if (payload && payload !== "*") wantVms.add(payload);
          else wantFull = true;
          void kick();
        });
      } catch (err) {
        log.warn("cannot LISTEN for route changes; relying on the periodic resync", { err });
      }
      wantFull = true;
      await kick();
      if (!directory.ready) {
        // A directory becoming ready without any VM change (e.g. an empty platform) fires no event.
        readyTimer = setInterval(() => {
          if (!directory.ready) return;
          clearInterval(readyTimer);
          wantBuild = true;
          void kick();
        }, 100);
        readyTimer.unref();
      }
      timer = setInterval(() => {
        wantCheck = true;
        void kick();
      }, resyncMs);
      timer.unref();
    },
    async stop() {
      stopped = true;
      if (timer) clearInterval(timer);
      if (readyTimer) clearInterval(readyTimer);
      unsubscribe?.();
      await running?.catch(() => {});
      await unlisten?.().catch(() => {});
    },
    current: () => snapshot,
    async refresh() {
      wantFull = true;
      // A drain already in flight may have passed its full read; wait for it, then run ours.
      await running;
      await kick();
    },
    health: () => ({ ready: snapshot !== undefined, lastError, lastSuccessAt }),
    notReadyReason: () => reason,
    routersOf: (vmId) => (byVm?.get(vmId) ?? []).flatMap((r) => routeRouterNames(r.id)),
    vmOfService(service) {
      if (!services) {
        services = new Map();
        for (const [vmId, list] of byVm ?? []) for (const r of list) services.set(routeObjectName(r.id), vmId);
      }
      return services.get(service);
    },
    routedVms: () => [...(byVm?.keys() ?? [])],
  };
}
