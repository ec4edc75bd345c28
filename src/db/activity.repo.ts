/**
 * Activity per VM, shared by every process through the database: when each VM was last in use and
 * how many requests or connections each proxy process has open to it right now. Timestamps are
 * the database's clock (writers send ages, not times), so hosts with skewed clocks still agree.
 */
import { sql } from "drizzle-orm";
import { queryRows, type Database } from "./client.ts";

/** A VM seen in use `agoMs` milliseconds before the write. */
export interface ActivityMark {
  vmId: string;
  agoMs: number;
}

/** Moves each VM's last activity forward (never back) to now − agoMs, in one statement. */
export async function recordActivity(d: Database, marks: readonly ActivityMark[]): Promise<void> {
  if (!marks.length) return;
  const values = sql.join(
    marks.map((m) => sql`(${m.vmId}, now() - make_interval(secs => ${Math.max(0, m.agoMs) / 1000}))`),
    sql`, `,
  );
  await d.db.execute(sql`
    insert into vm_activity (vm_id, last_activity_at) values ${values}
    on conflict (vm_id) do update set last_activity_at = greatest(vm_activity.last_activity_at, excluded.last_activity_at)`);
}

/**
 * Replaces this holder's open counts: rows with a count above zero are written with seen_at = now
 * (a heartbeat), rows for VMs whose count fell to zero are deleted.
 */
export async function reportConnections(d: Database, holder: string, counts: ReadonlyMap<string, number>): Promise<void> {
  const open = [...counts].filter(([, n]) => n > 0);
  const closed = [...counts].filter(([, n]) => n <= 0).map(([id]) => id);
  if (open.length) {
    const values = sql.join(
      open.map(([vmId, n]) => sql`(${vmId}, ${holder}, ${n}, now())`),
      sql`, `,
    );
    await d.db.execute(sql`
      insert into vm_connections (vm_id, holder, open_count, seen_at) values ${values}
      on conflict (vm_id, holder) do update set open_count = excluded.open_count, seen_at = excluded.seen_at`);
  }
  if (closed.length) {
    await d.db.execute(sql`delete from vm_connections where holder = ${holder} and vm_id in (${sql.join(
      closed.map((id) => sql`${id}`),
      sql`, `,
    )})`);
  }
}

/** Removes every row of `holder` (a process stopping cleanly). */
export async function forgetHolder(d: Database, holder: string): Promise<void> {
  await d.db.execute(sql`delete from vm_connections where holder = ${holder}`);
}

/** Deletes rows not refreshed within `staleMs` (their holder died); returns how many. */
export async function pruneConnections(d: Database, staleMs: number): Promise<number> {
  const rows = await queryRows<{ vm_id: string }>(
    d,
    sql`delete from vm_connections where seen_at < now() - make_interval(secs => ${staleMs / 1000}) returning vm_id`,
  );
  return rows.length;
}

/** Open requests and connections to `vmId` across every live holder. */
export async function openConnections(d: Database, vmId: string, staleMs: number): Promise<number> {
  const [row] = await queryRows<{ n: number | string | null }>(
    d,
    sql`select coalesce(sum(open_count), 0)::int as n from vm_connections
        where vm_id = ${vmId} and open_count > 0 and seen_at >= now() - make_interval(secs => ${staleMs / 1000})`,
  );
  return Number(row?.n ?? 0);
}

/** What the idle check knows about one VM that has routes. */
export interface VmIdleFacts {
  vmId: string;
  /** Creation of the VM's oldest route: the start of the clock for a VM never reached. */
  firstRouteAt: Date;
  lastActivityAt: Date | undefined;
  /** max(last activity, first route): what "idle for" counts from. */
  idleSince: Date;
  /** Milliseconds since idleSince, by the database's clock. */
  idleMs: number;
  openConnections: number;
}

interface IdleRow {
  vm_id: string;
  first_route_at: Date | string;
  last_activity_at: Date | string | null;
  idle_since: Date | string;
  idle_ms: number | string;
  open: number | string;
}

const toDate = (v: Date | string) => (v instanceof Date ? v : new Date(v));

function idleFacts(r: IdleRow): VmIdleFacts {
  return {
    vmId: r.vm_id,
    firstRouteAt: toDate(r.first_route_at),
    lastActivityAt: r.last_activity_at === null ? undefined : toDate(r.last_activity_at),
    idleSince: toDate(r.idle_since),
    idleMs: Math.max(0, Number(r.idle_ms)),
    openConnections: Number(r.open),
  };
}

function idleQuery(staleMs: number, vmId?: string) {
  return sql`
    with r as (select vm_id, min(created_at) as first_route_at from routes ${vmId === undefined ? sql`` : sql`where vm_id = ${vmId}`} group by vm_id),
         c as (select vm_id, sum(open_count)::int as open from vm_connections
               where open_count > 0 and seen_at >= now() - make_interval(secs => ${staleMs / 1000}) group by vm_id)
    select r.vm_id, r.first_route_at, a.last_activity_at,
           greatest(r.first_route_at, coalesce(a.last_activity_at, r.first_route_at)) as idle_since,
           (extract(epoch from (now() - greatest(r.first_route_at, coalesce(a.last_activity_at, r.first_route_at)))) * 1000)::float8 as idle_ms,
           coalesce(c.open, 0) as open
    from r left join vm_activity a on a.vm_id = r.vm_id left join c on c.vm_id = r.vm_id
    order by r.vm_id`;
}

/** Idle facts of every VM that has at least one route. */
export async function listIdleFacts(d: Database, staleMs: number): Promise<VmIdleFacts[]> {
  return (await queryRows<IdleRow>(d, idleQuery(staleMs))).map(idleFacts);
}

/** Idle facts of one VM, or undefined when it has no route. */
export async function getIdleFacts(d: Database, vmId: string, staleMs: number): Promise<VmIdleFacts | undefined> {
  const [row] = await queryRows<IdleRow>(d, idleQuery(staleMs, vmId));
  return row ? idleFacts(row) : undefined;
}
