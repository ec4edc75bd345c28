/**
 * The cache around the pure builder: the body is rebuilt when routes or VM states change, never
 * per poll, and a failed read never replaces the last good body (Traefik drops every router it
 * does not see, so a 200 with a partial config would take all sites down). The routes live in a
 * RouteIndex, kept current by the ConfigRefresh loop; this file holds what is served.
 */
import type { Config } from "../config.ts";
import type { Database } from "../db/client.ts";
import { databaseUnavailable } from "../db/errors.ts";
import type { Logger } from "../log.ts";
import type { VmDirectory } from "../vms/platform.ts";
import { createConfigAssembler } from "./config-assembler.ts";
import { ConfigRefresh, type SleepingVms } from "./config-refresh.ts";
import { makeSnapshot, traefikSettings, type ConfigSnapshot } from "./config-snapshot.ts";
import { RouteIndex } from "./route-index.ts";
import { AddressIndex } from "../vms/address-index.ts";

export type { ConfigSnapshot } from "./config-snapshot.ts";
export type { SleepingVms } from "./config-refresh.ts";

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
  sleeps?: SleepingVms | undefined;
}

/** Creates the cached config; call start() to load it and follow changes. */
export function createConfigService(deps: ConfigServiceDeps): ConfigService {
  const { directory } = deps;
  const log = deps.log.child({ component: "traefik-config" });
  const assembler = createConfigAssembler(traefikSettings(deps.config));
  const index = new RouteIndex();
  const addresses = new AddressIndex(directory);
  let snapshot: ConfigSnapshot | undefined;
  let lastError: string | undefined;
  let lastSuccessAt: number | undefined;
  let reason = "starting";

  function build() {
    if (!index.loaded) return;
    if (!directory.ready) {
      if (!snapshot) reason = "VM states not loaded yet";
      return;
    }
    // A VM being put to sleep keeps running for a while, but its requests must reach the sidecar.
    const vms = directory.all();
    // Same bytes as JSON.stringify(buildDynamicConfig(...)), re-serializing only changed routes.
    const { json, routers } = assembler.assemble(
      index.directRoutes(vms, deps.sleeps?.vmIds(), (vm) => addresses.othersOf(vm).length > 0),
      vms,
    );
    const now = Date.now();
    if (!lastError) lastSuccessAt = now;
    if (snapshot?.json === json) return;
    snapshot = makeSnapshot(json, routers, now);
    log.debug("traefik config built", { routers, bytes: snapshot.body.length, etag: snapshot.etag });
  }

  const refresh = new ConfigRefresh({
    database: deps.database,
    directory,
    sleeps: deps.sleeps,
    index,
    log,
    resyncMs: deps.resyncMs ?? 5000,
    build,
    failed(publicReason, err) {
      if (lastError !== publicReason) log.error("traefik config not refreshed; keeping the last good one", { reason: publicReason, cause: databaseUnavailable(err)?.cause, err });
      lastError = publicReason;
      if (!snapshot) reason = publicReason;
    },
    readOk() {
      lastError = undefined;
    },
    confirmed() {
      if (!snapshot) return false;
      lastSuccessAt = Date.now();
      return true;
    },
  });

  return {
    start: () => refresh.start(),
    stop: () => refresh.stop(),
    current: () => snapshot,
    refresh: () => refresh.refresh(),
    health: () => ({ ready: snapshot !== undefined, lastError, lastSuccessAt }),
    notReadyReason: () => reason,
    routersOf: (vmId) => index.routersOf(vmId),
    vmOfService: (service) => index.vmOfService(service),
    routedVms: () => index.routedVms(),
  };
}
