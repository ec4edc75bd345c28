/**
 * This process's view of the sleeps in progress (vm_sleeps), followed through LISTEN/NOTIFY and a
 * periodic re-read: the Traefik config leaves out the direct routers of these VMs, and the proxy
 * holds (or cancels an idle sleep for) the requests that reach them.
 */
import type { Database } from "../db/client.ts";
import type { VmSleepRow } from "../db/schema.ts";
import { getSleep, listActiveSleeps } from "../db/sleeps.repo.ts";
import type { Logger } from "../log.ts";
import type { VmDirectory } from "../vms/platform.ts";

/** Channel a trigger (drizzle/0003_vm_sleeps_notify.sql) announces vm_sleeps changes on. */
export const SLEEPS_CHANNEL = "hatch_vm_sleeps";

export interface SleepWatchOptions {
  database: Database;
  /** Re-read after a sleep ends, so a VM that is now asleep does not get its routers back first. */
  directory?: VmDirectory | undefined;
  /** A row whose holder has not heartbeaten for this long is ignored (its process died). */
  staleMs: number;
  /** Full re-read interval: heals lost notifications and expires stale rows. */
  reloadMs: number;
  log: Logger;
}

/** A live view of the active (not cancelled, heartbeating) sleeps, by VM id. */
export class SleepWatch {
  private rows = new Map<string, VmSleepRow>();
  private readonly listeners = new Set<(vmId: string | undefined) => void>();
  private readonly waiters = new Map<string, Set<() => void>>();
  private unlisten: (() => Promise<void>) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private failing = false;
  private version = 0;

  constructor(private readonly opts: SleepWatchOptions) {}

  /** The sleep in progress for `vmId`, if any. */
  get(vmId: string): VmSleepRow | undefined {
    return this.rows.get(vmId);
  }

  /** VM ids whose direct routers stay out of the Traefik config. */
  vmIds(): ReadonlySet<string> {
    return new Set(this.rows.keys());
  }

  /** Changes since start (a cheap cache key for the config). */
  get changes(): number {
    return this.version;
  }

  /** Calls `listener` with the VM id after a change of one VM, undefined after a full reload. */
  onChange(listener: (vmId: string | undefined) => void): () => void {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }

  /** Resolves once no sleep of `vmId` is in progress (at once when none is), or rejects on `signal`. */
  settled(vmId: string, signal?: AbortSignal): Promise<void> {
    if (!this.rows.has(vmId)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const set = this.waiters.get(vmId) ?? new Set();
      this.waiters.set(vmId, set);
      const done = () => {
        set.delete(done);
        if (!set.size) this.waiters.delete(vmId);
        signal?.removeEventListener("abort", onAbort);
        resolve();
      };
      const onAbort = () => {
        set.delete(done);
        if (!set.size) this.waiters.delete(vmId);
        reject(signal!.reason);
      };
      set.add(done);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  async start(): Promise<void> {
    this.stopped = false;
    try {
      this.unlisten = await this.opts.database.listen(SLEEPS_CHANNEL, (vmId) => void this.reloadOne(vmId));
    } catch (err) {
      this.opts.log.warn("cannot LISTEN for sleep changes; relying on the periodic re-read", { err });
    }
    await this.reload();
    this.timer = setInterval(() => void this.reload(), this.opts.reloadMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await this.unlisten?.().catch(() => {});
    for (const vmId of [...this.waiters.keys()]) this.release(vmId);
  }

  /** Re-reads every active sleep now. */
  async reload(): Promise<void> {
    let list: VmSleepRow[];
    try {
      list = await listActiveSleeps(this.opts.database, this.opts.staleMs);
    } catch (err) {
      if (!this.failing) this.opts.log.warn("sleeps in progress could not be read; keeping the last view", { err });
      this.failing = true;
      return;
    }
    this.failing = false;
    if (this.stopped) return;
    const next = new Map(list.map((r) => [r.vmId, r]));
    const ended = [...this.rows.keys()].filter((id) => !next.has(id));
    const changed = ended.length > 0 || list.some((r) => !same(this.rows.get(r.vmId), r));
    for (const r of list) this.rows.set(r.vmId, r);
    for (const id of ended) await this.end(id);
    if (changed) this.fire(undefined);
  }

  /** Re-reads one VM's sleep after a notification. */
  async reloadOne(vmId: string): Promise<void> {
    let row: VmSleepRow | undefined;
    try {
      row = await getSleep(this.opts.database, vmId);
    } catch (err) {
      this.opts.log.warn("sleep change could not be read; the next re-read catches up", { vm: vmId, err });
      return;
    }
    if (this.stopped) return;
    const active = row && !row.cancelledAt ? row : undefined;
    const had = this.rows.get(vmId);
    if (active) {
      if (same(had, active)) return;
      this.rows.set(vmId, active);
      this.fire(vmId);
    } else if (had) {
      await this.end(vmId);
      this.fire(vmId);
    }
  }

  /** A sleep ended (done, cancelled or failed): learn the VM's real state, then let it go. */
  private async end(vmId: string): Promise<void> {
    try {
      await this.opts.directory?.refreshOne(vmId);
    } catch (err) {
      this.opts.log.debug("vm state not refreshed after a sleep ended", { vm: vmId, err });
    }
    this.rows.delete(vmId);
    this.release(vmId);
  }

  private release(vmId: string): void {
    for (const w of [...(this.waiters.get(vmId) ?? [])]) w();
  }

  private fire(vmId: string | undefined): void {
    this.version += 1;
    for (const l of [...this.listeners]) {
      try {
        l(vmId);
      } catch (err) {
        this.opts.log.error("sleep listener failed", { err });
      }
    }
  }
}

function same(a: VmSleepRow | undefined, b: VmSleepRow): boolean {
  return !!a && a.phase === b.phase && a.holder === b.holder && a.reason === b.reason && +a.startedAt === +b.startedAt;
}
