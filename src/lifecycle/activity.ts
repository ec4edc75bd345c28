/**
 * Activity seen by this process (requests it proxied, connections it holds open, Traefik counters
 * it read), kept in memory on the hot path and written to the database in one batch per flush, so
 * every replica and the next start of this one see it.
 */
import { hostname } from "node:os";
import { randomBytes } from "node:crypto";
import type { Database } from "../db/client.ts";
import { forgetHolder, recordActivity, reportConnections } from "../db/activity.repo.ts";
import type { Logger } from "../log.ts";

/** A name for this process in `vm_connections` and `vm_sleeps` rows, unique across restarts. */
export function newHolderId(): string {
  return `${hostname()}:${process.pid}:${randomBytes(3).toString("hex")}`;
}

export interface ActivityRecorderOptions {
  database: Database;
  holder: string;
  /** How often touched VMs and open counts are written (also the heartbeat of open counts). */
  flushMs: number;
  log: Logger;
}

/**
 * Two things per VM: when it was last touched, and how many requests/connections are open to it
 * right now. An open count above zero is activity for as long as it lasts (a WebSocket that sends
 * nothing still keeps its VM awake): every flush re-marks such VMs active now.
 */
export class ActivityRecorder {
  readonly holder: string;
  private readonly touched = new Map<string, number>();
  private readonly open = new Map<string, number>();
  /** Counts as last written; a VM whose count differs is written at the next flush. */
  private readonly reported = new Map<string, number>();
  /** VMs someone waits on (a sleep draining): a change of their count is written at once. */
  private readonly urgent = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private again = false;
  private soon: NodeJS.Immediate | undefined;
  private failing = false;
  private stopped = false;

  constructor(private readonly opts: ActivityRecorderOptions) {
    this.holder = opts.holder;
  }

  /** Marks `vmId` in use now. */
  touch(vmId: string): void {
    this.touched.set(vmId, Date.now());
  }

  /** Counts one open request or connection to `vmId` until the returned (idempotent) release. */
  hold(vmId: string): () => void {
    this.open.set(vmId, (this.open.get(vmId) ?? 0) + 1);
    this.touched.set(vmId, Date.now());
    if (this.urgent.has(vmId)) this.flushSoon();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.open.get(vmId) ?? 1) - 1;
      if (left > 0) this.open.set(vmId, left);
      else this.open.delete(vmId);
      this.touched.set(vmId, Date.now());
      if (this.urgent.has(vmId)) this.flushSoon();
    };
  }

  /** Requests and connections open to `vmId` through this process now. */
  openCount(vmId: string): number {
    return this.open.get(vmId) ?? 0;
  }

  /** Every VM with something open through this process. */
  openVms(): string[] {
    return [...this.open.keys()];
  }

  /**
   * Someone waits for `vmId`'s open count (a drain): write it now and after every change until
   * `unwatch`. Returns the count at this moment.
   */
  watch(vmId: string): number {
    this.urgent.add(vmId);
    this.flushSoon();
    return this.openCount(vmId);
  }

  unwatch(vmId: string): void {
    this.urgent.delete(vmId);
  }

  /** Writes what changed since the last flush; resolves when written (never rejects). */
  flush(): Promise<void> {
    if (this.flushing) {
      this.again = true;
      return this.flushing;
    }
    this.flushing = this.write()
      .catch((err: unknown) => {
        if (!this.failing) this.opts.log.warn("activity not written; will retry", { err });
        this.failing = true;
      })
      .finally(() => {
        this.flushing = undefined;
        if (this.again && !this.stopped) {
          this.again = false;
          void this.flush();
        }
      });
    return this.flushing;
  }

  private flushSoon(): void {
    if (this.soon || this.stopped) return;
    this.soon = setImmediate(() => {
      this.soon = undefined;
      void this.flush();
    });
  }

  private async write(): Promise<void> {
    const now = Date.now();
    const marks = [...this.touched].map(([vmId, at]) => ({ vmId, agoMs: now - at }));
    for (const vmId of this.open.keys()) if (!this.touched.has(vmId)) marks.push({ vmId, agoMs: 0 });
    const taken = new Map(this.touched);
    this.touched.clear();
    const counts = new Map<string, number>();
    for (const [vmId, n] of this.open) counts.set(vmId, n);
    for (const vmId of this.reported.keys()) if (!this.open.has(vmId)) counts.set(vmId, 0);
    try {
      await recordActivity(this.opts.database, marks);
      if (counts.size) await reportConnections(this.opts.database, this.opts.holder, counts);
    } catch (err) {
      // Keep the newest touch of each VM for the next try.
      for (const [vmId, at] of taken) if ((this.touched.get(vmId) ?? 0) < at) this.touched.set(vmId, at);
      throw err;
    }
    for (const [vmId, n] of counts) {
      if (n > 0) this.reported.set(vmId, n);
      else this.reported.delete(vmId);
    }
    if (this.failing) this.opts.log.info("activity written again");
    this.failing = false;
  }

  start(): void {
    if (this.timer || this.stopped) return;
    this.timer = setInterval(() => void this.flush(), this.opts.flushMs);
    this.timer.unref();
  }

  /** Writes the last activity and removes this process's open counts. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (this.soon) clearImmediate(this.soon);
    await this.flushing;
    this.open.clear();
    await this.write().catch(() => {});
    await forgetHolder(this.opts.database, this.opts.holder).catch(() => {});
  }
}
