/**
 * The loop that keeps the route index current and asks for rebuilds: a full read at start, one
 * VM's routes on each notification, a cheap fingerprint check every `resyncMs` (a full re-read only
 * when it differs: a lost notification), and a rebuild whenever VM states or sleeps change. At most
 * one round runs at a time; work asked for meanwhile joins the next round, none is lost.
 */
import type { Database } from "../db/client.ts";
import { ROUTES_CHANNEL } from "../db/client.ts";
import { DatabaseNotMigratedError } from "../db/errors.ts";
import { MigrationGate } from "../db/migrations.ts";
import { listAllRoutes, listRoutesByVm } from "../db/routes.repo.ts";
import type { Logger } from "../log.ts";
import type { VmDirectory } from "../vms/platform.ts";
import type { RouteIndex } from "./route-index.ts";
import { routesFingerprint, type Fingerprint } from "./routes-fingerprint.ts";

/** What the config needs to know of sleeps in progress (the lifecycle's SleepWatch is one). */
export interface SleepingVms {
  /** VMs being put to sleep now: their direct routers stay out even while they still run. */
  vmIds(): ReadonlySet<string>;
  /** Called when a sleep starts, moves on or ends; returns the unsubscribe. */
  onChange(listener: (vmId: string | undefined) => void): () => void;
}

export interface ConfigRefreshDeps {
  database: Database;
  directory: VmDirectory;
  sleeps?: SleepingVms | undefined;
  index: RouteIndex;
  log: Logger;
  resyncMs: number;
  /** Rebuilds the served body from the index and the VM states. */
  build(): void;
  /** A read failed (public reason, cause); the last good config stays. */
  failed(reason: string, err: unknown): void;
  /** A read went through: any earlier failure is over. */
  readOk(): void;
  /** Checked and unchanged, nothing to rebuild: the served config is confirmed current. */
  confirmed(): boolean;
}

/** The public reason for a failed read. */
const readFailure = (err: unknown) => (err instanceof DatabaseNotMigratedError ? `database not fully migrated (${err.message})` : "database unavailable");

export class ConfigRefresh {
  private wantFull = false;
  private wantCheck = false;
  private readonly wantVms = new Set<string>();
  private wantBuild = false;
  private running: Promise<void> | undefined;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private readyTimer: NodeJS.Timeout | undefined;
  private unlisten: (() => Promise<void>) | undefined;
  private unsubscribe: (() => void) | undefined;
  // Never build from a database that lacks migrations (being restored, or older than this code):
  // its empty tables would publish a config without a single route.
  private readonly gate: MigrationGate;

  constructor(private readonly deps: ConfigRefreshDeps) {
    this.gate = new MigrationGate(deps.database);
  }

  /** Loads everything once, then follows notifications, VM states, sleeps and the resync timer. */
  async start(): Promise<void> {
    const { database, directory, sleeps, log } = this.deps;
    this.stopped = false;
    const rebuild = () => {
      this.wantBuild = true;
      void this.kick();
    };
    const offDirectory = directory.onChange(rebuild);
    const offSleeps = sleeps?.onChange(rebuild);
    this.unsubscribe = () => {
      offDirectory();
      offSleeps?.();
    };
    try {
      this.unlisten = await database.listen(ROUTES_CHANNEL, (payload) => {
        // Payload = the VM whose routes changed; anything else means "re-read everything".
        if (payload && payload !== "*") this.wantVms.add(payload);
        else this.wantFull = true;
        void this.kick();
      });
    } catch (err) {
      log.warn("cannot LISTEN for route changes; relying on the periodic resync", { err });
    }
    this.wantFull = true;
    await this.kick();
    if (!directory.ready) {
      // A directory becoming ready without any VM change (e.g. an empty platform) fires no event.
      this.readyTimer = setInterval(() => {
        if (!directory.ready) return;
        clearInterval(this.readyTimer);
        rebuild();
      }, 100);
      this.readyTimer.unref();
    }
    this.timer = setInterval(() => {
      this.wantCheck = true;
      void this.kick();
    }, this.deps.resyncMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (this.readyTimer) clearInterval(this.readyTimer);
    this.unsubscribe?.();
    await this.running?.catch(() => {});
    await this.unlisten?.().catch(() => {});
  }

  /** A full re-read and rebuild; resolves when done. */
  async refresh(): Promise<void> {
    this.wantFull = true;
    // A round already in flight may have passed its full read; wait for it, then run ours.
    await this.running;
    await this.kick();
  }

  /** Runs the pending work; at most one round runs at a time, later requests join the next. */
  private kick(): Promise<void> {
    if (this.running) return this.running;
    this.running = this.drain()
      .catch((err) => this.deps.failed("internal error", err))
      .finally(() => {
        this.running = undefined;
        // Work queued during the last await of a finished round.
        if (!this.stopped && !this.wantFull && (this.wantVms.size || this.wantBuild)) void this.kick();
      });
    return this.running;
  }

  private async drain(): Promise<void> {
    while (!this.stopped && (this.wantFull || this.wantVms.size || this.wantBuild || this.wantCheck)) {
      let readOk = true;
      let read = true;
      if (this.wantFull || !this.deps.index.loaded) {
        this.wantFull = false;
        this.wantCheck = false;
        // Changes announced while the full read runs are re-read afterwards, so none is lost.
        this.wantVms.clear();
        readOk = await this.loadAll();
      } else if (this.wantVms.size) {
        const vms = [...this.wantVms];
        this.wantVms.clear();
        readOk = await this.migrated();
        if (readOk) for (const id of vms) if (!(readOk = await this.loadVm(id))) break;
      } else if (this.wantCheck) {
        this.wantCheck = false;
        ({ ok: readOk, read } = await this.check());
      }
      if (!readOk) {
        // The change is unknown: the periodic resync re-reads everything. VM state changes still
        // apply to the routes of the last good read below.
        this.wantFull = true;
        this.wantVms.clear();
        if (!this.wantBuild) return;
      } else this.deps.readOk();
      if (!read && !this.wantBuild && this.deps.confirmed()) continue;
      this.wantBuild = false;
      this.deps.build();
      if (!readOk) return;
    }
  }

  /** Runs `read`; false (and the failure reported) when the database could not be read. */
  private async attempt(read: () => Promise<void>): Promise<boolean> {
    try {
      await read();
      return true;
    } catch (err) {
      this.deps.failed(readFailure(err), err);
      return false;
    }
  }

  /** True when every migration is applied now (asked once per round of notified VMs). */
  private migrated(): Promise<boolean> {
    return this.attempt(() => this.gate.ensure(true));
  }

  private loadAll(): Promise<boolean> {
    return this.attempt(async () => {
      await this.gate.ensure(true);
      this.deps.index.replaceAll(await listAllRoutes(this.deps.database));
    });
  }

  private loadVm(vmId: string): Promise<boolean> {
    return this.attempt(async () => this.deps.index.setVm(vmId, await listRoutesByVm(this.deps.database, vmId)));
  }

  /** The periodic check: a full re-read only when the table differs from the index (a lost NOTIFY). */
  private async check(): Promise<{ ok: boolean; read: boolean }> {
    let db: Fingerprint | undefined;
    const ok = await this.attempt(async () => {
      // A database swapped for one being restored still answers: its migrations say it is not ready.
      await this.gate.ensure(true);
      db = await routesFingerprint(this.deps.database);
    });
    if (!ok || !db) return { ok: false, read: false };
    const fp = this.deps.index.fingerprint;
    if (db.count === fp.count && db.sum === fp.sum) return { ok: true, read: false };
    this.deps.log.info("routes changed without a notification reaching this replica; re-reading all", { routes: db.count });
    return { ok: await this.loadAll(), read: true };
  }
}
