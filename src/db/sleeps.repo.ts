/**
 * Sleeps in progress (one row per VM) and named leases. Every transition is one conditional
 * statement, so two replicas racing (a sweeper moving to `sleeping`, a sidecar cancelling) are
 * settled by the database: exactly one of them changes the row.
 */
import { and, eq, isNull, sql } from "drizzle-orm";
import { queryRows, type Database } from "./client.ts";
import { vmSleeps, type VmSleepRow } from "./schema.ts";

export type SleepReason = "idle" | "api";
export type SleepPhase = "draining" | "sleeping";

const secs = (ms: number) => sql`make_interval(secs => ${ms / 1000})`;

/**
 * Starts a sleep of `vmId` in phase `draining`. Returns the new row, or `{ busy }` with the row of
 * the sleep already under way. A row whose holder stopped heartbeating for `staleMs` is taken over.
 */
export async function beginSleep(
  d: Database,
  s: { vmId: string; reason: SleepReason; action: "snapshot" | "stop"; holder: string; staleMs: number },
): Promise<{ row: VmSleepRow } | { busy: VmSleepRow }> {
  const [row] = await d.db
    .insert(vmSleeps)
    .values({ vmId: s.vmId, phase: "draining", reason: s.reason, action: s.action, holder: s.holder })
    .onConflictDoUpdate({
      target: vmSleeps.vmId,
      set: {
        phase: "draining",
        reason: s.reason,
        action: s.action,
        holder: s.holder,
        startedAt: sql`now()`,
        heartbeatAt: sql`now()`,
        cancelledAt: null,
        cancelReason: null,
      },
      setWhere: sql`${vmSleeps.heartbeatAt} < now() - ${secs(s.staleMs)}`,
    })
    .returning();
  if (row) return { row };
  const busy = await getSleep(d, s.vmId);
  // Gone between the two statements: the other sleep just ended; try once more.
  if (!busy) return beginSleep(d, s);
  return { busy };
}

/** Refreshes the heartbeat of our sleep; false when the row is no longer ours. */
export async function heartbeatSleep(d: Database, vmId: string, holder: string): Promise<boolean> {
  const rows = await d.db
    .update(vmSleeps)
    .set({ heartbeatAt: sql`now()` })
    .where(and(eq(vmSleeps.vmId, vmId), eq(vmSleeps.holder, holder)))
    .returning({ vmId: vmSleeps.vmId });
  return rows.length > 0;
}

/**
 * Cancels an idle sleep that is still draining (a request arrived, so the VM is not idle). True
 * when this call cancelled it (or it already was); false when there is none or it can no longer be
 * cancelled (phase `sleeping`, or a sleep asked for through the API).
 */
export async function cancelIdleSleep(d: Database, vmId: string, why: string): Promise<boolean> {
  const rows = await queryRows<{ vm_id: string }>(
    d,
    sql`update vm_sleeps set cancelled_at = coalesce(cancelled_at, now()), cancel_reason = coalesce(cancel_reason, ${why})
        where vm_id = ${vmId} and phase = 'draining' and reason = 'idle' returning vm_id`,
  );
  return rows.length > 0;
}

/** Marks our own draining sleep cancelled (drain timeout, Traefik unreadable...). */
export async function cancelOwnSleep(d: Database, vmId: string, holder: string, why: string): Promise<void> {
  await d.db
    .update(vmSleeps)
    .set({ cancelledAt: sql`now()`, cancelReason: why })
    .where(and(eq(vmSleeps.vmId, vmId), eq(vmSleeps.holder, holder), isNull(vmSleeps.cancelledAt)));
}

/** draining → sleeping, unless cancelled meanwhile; true when the snapshot/stop may start. */
export async function startSleeping(d: Database, vmId: string, holder: string): Promise<boolean> {
  const rows = await d.db
    .update(vmSleeps)
    .set({ phase: "sleeping", heartbeatAt: sql`now()` })
    .where(and(eq(vmSleeps.vmId, vmId), eq(vmSleeps.holder, holder), eq(vmSleeps.phase, "draining"), isNull(vmSleeps.cancelledAt)))
    .returning({ vmId: vmSleeps.vmId });
  return rows.length > 0;
}

/** Ends our sleep (whatever its outcome): the row goes, the VM's routers follow its real state again. */
export async function endSleep(d: Database, vmId: string, holder: string): Promise<void> {
  await d.db.delete(vmSleeps).where(and(eq(vmSleeps.vmId, vmId), eq(vmSleeps.holder, holder)));
}

export async function getSleep(d: Database, vmId: string): Promise<VmSleepRow | undefined> {
  const [row] = await d.db.select().from(vmSleeps).where(eq(vmSleeps.vmId, vmId));
  return row;
}

/** Sleeps whose holder is alive (heartbeat within `staleMs`) and that were not cancelled. */
export async function listActiveSleeps(d: Database, staleMs: number): Promise<VmSleepRow[]> {
  return d.db
    .select()
    .from(vmSleeps)
    .where(and(isNull(vmSleeps.cancelledAt), sql`${vmSleeps.heartbeatAt} >= now() - ${secs(staleMs)}`));
}

/**
 * Takes or renews the lease `name` for `ttlMs`; true while `holder` has it. A lease whose holder
 * stopped renewing expires and goes to the next caller.
 */
export async function acquireLease(d: Database, name: string, holder: string, ttlMs: number): Promise<boolean> {
  const rows = await queryRows<{ holder: string }>(
    d,
    sql`insert into leases (name, holder, expires_at) values (${name}, ${holder}, now() + ${secs(ttlMs)})
        on conflict (name) do update set holder = excluded.holder, expires_at = excluded.expires_at
        where leases.holder = excluded.holder or leases.expires_at < now()
        returning holder`,
  );
  return rows[0]?.holder === holder;
}

/** Gives the lease up (a clean shutdown), so another process takes over at once. */
export async function releaseLease(d: Database, name: string, holder: string): Promise<void> {
  await d.db.execute(sql`delete from leases where name = ${name} and holder = ${holder}`);
}
