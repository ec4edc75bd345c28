/** The keys kept for route owners (owner_credentials) and the route facts the VM sync needs per owner. */
import { sql } from "drizzle-orm";
import { queryRows, type Database } from "./client.ts";

export interface StoredCredential {
  owner: string;
  sealed: string;
  keyDigest: string;
  keyId: string;
}

/** Rows of a raw statement, whichever driver ran it (postgres.js gives the rows, PGlite an object holding them). */
function rowsOf<T>(result: unknown): T[] {
  return (Array.isArray(result) ? result : (result as { rows: unknown[] }).rows) as T[];
}

/**
 * Keeps (or replaces) `c` for its owner, only while the owner has a route; true when kept. Under the
 * owner's advisory lock, which the cleanup trigger (drizzle/0005) takes before it drops a key: the
 * route check below sees every route deletion committed before it, so no key outlives its last route.
 */
export async function storeCredential(d: Database, c: StoredCredential): Promise<boolean> {
  return d.db.transaction(async (tx) => {
    await tx.execute(sql`select pg_advisory_xact_lock(hashtextextended('hatch-proxy:owner-credentials:' || ${c.owner}, 0))`);
    const rows = rowsOf<{ owner: string }>(
      await tx.execute(sql`insert into owner_credentials (owner, sealed, key_digest, key_id, updated_at)
        select ${c.owner}, ${c.sealed}, ${c.keyDigest}, ${c.keyId}, now()
        where exists (select 1 from routes where owner = ${c.owner})
        on conflict (owner) do update set sealed = excluded.sealed, key_digest = excluded.key_digest, key_id = excluded.key_id, updated_at = now()
        returning owner`),
    );
    return rows.length > 0;
  });
}

/** True when `owner` has at least one route (an index lookup). */
export async function ownerHasRoutes(d: Database, owner: string): Promise<boolean> {
  const rows = await queryRows<{ one: number }>(d, sql`select 1 as one from routes where owner = ${owner} limit 1`);
  return rows.length > 0;
}

/** The key kept for `owner`, if any. */
export async function getCredential(d: Database, owner: string): Promise<StoredCredential | undefined> {
  const [row] = await queryRows<{ owner: string; sealed: string; key_digest: string; key_id: string }>(
    d,
    sql`select owner, sealed, key_digest, key_id from owner_credentials where owner = ${owner}`,
  );
  return row && { owner: row.owner, sealed: row.sealed, keyDigest: row.key_digest, keyId: row.key_id };
}

export interface RoutedOwner {
  owner: string;
  /** The VMs the owner's routes name. */
  vmIds: string[];
  credential: StoredCredential | undefined;
}

/** Every owner with at least one route, the VMs they route, and the key kept for them. */
export async function routedOwners(d: Database): Promise<RoutedOwner[]> {
  const rows = await queryRows<{ owner: string; vm_ids: string[] | string; sealed: string | null; key_digest: string | null; key_id: string | null }>(
    d,
    sql`select r.owner, array_agg(distinct r.vm_id) as vm_ids, c.sealed, c.key_digest, c.key_id
      from routes r left join owner_credentials c on c.owner = r.owner
      group by r.owner, c.sealed, c.key_digest, c.key_id
      order by r.owner`,
  );
  return rows.map((r) => ({
    owner: r.owner,
    vmIds: parseTextArray(r.vm_ids),
    credential: r.sealed && r.key_digest && r.key_id ? { owner: r.owner, sealed: r.sealed, keyDigest: r.key_digest, keyId: r.key_id } : undefined,
  }));
}

/** The routes of one VM with their owners (ids, so a deletion can name exactly what it checked). */
export function routeOwnersOfVm(d: Database, vmId: string): Promise<{ id: string; owner: string }[]> {
  return queryRows<{ id: string; owner: string }>(d, sql`select id, owner from routes where vm_id = ${vmId} order by owner, id`);
}

/** Gives `owner` the routes of `vmId` that have no owner (written before keys were verified per user, or imported without one). */
export async function claimUnownedRoutes(d: Database, vmId: string, owner: string): Promise<number> {
  const rows = await queryRows<{ id: string }>(d, sql`update routes set owner = ${owner}, updated_at = now() where vm_id = ${vmId} and owner = '' returning id`);
  return rows.length;
}

/** Deletes the routes with these ids; how many went. */
export async function deleteRoutesById(d: Database, ids: readonly string[]): Promise<number> {
  if (!ids.length) return 0;
  const rows = await queryRows<{ id: string }>(d, sql`delete from routes where id in (${sql.join(ids.map((id) => sql`${id}`), sql`, `)}) returning id`);
  return rows.length;
}

/** A Postgres text[] as a driver hands it over: an array, or its text form `{a,b}`. */
function parseTextArray(v: string[] | string): string[] {
  if (Array.isArray(v)) return v;
  const inner = v.replace(/^\{|\}$/g, "");
  return inner ? inner.split(",").map((s) => s.replace(/^"|"$/g, "")) : [];
}
