import { and, count, desc, eq, sql } from "drizzle-orm";
import type { Database } from "./client.ts";
import { routes, type NewRouteRow, type RouteRow } from "./schema.ts";

/** Thrown by insertRoute when the subdomain is taken (the UNIQUE index decided). */
export class SubdomainTakenError extends Error {
  constructor(readonly subdomain: string) {
    super(`subdomain "${subdomain}" is already in use`);
  }
}

/** True when `err` (or its cause, as drizzle wraps driver errors) is a Postgres unique violation. */
export function isUniqueViolation(err: unknown, constraint?: string): boolean {
  for (let e: any = err; e; e = e.cause) {
    if (e.code === "23505" && (!constraint || e.constraint_name === constraint || e.constraint === constraint || String(e.message).includes(constraint))) return true;
  }
  return false;
}

/** The route API's insert, built once per database: building the statement per request cost more than running it. */
const preparedInserts = new WeakMap<Database, ReturnType<typeof prepareInsert>>();

function prepareInsert(d: Database) {
  return d.db
    .insert(routes)
    .values({
      id: sql.placeholder("id"),
      vmId: sql.placeholder("vmId"),
      subdomain: sql.placeholder("subdomain"),
      targetPort: sql.placeholder("targetPort"),
      autoWake: sql.placeholder("autoWake"),
      owner: sql.placeholder("owner"),
    })
    .returning()
    .prepare("hatch_insert_route");
}

/** Inserts a route (a trigger announces it). Throws SubdomainTakenError on a subdomain collision. */
export async function insertRoute(d: Database, row: Pick<NewRouteRow, "id" | "vmId" | "subdomain" | "targetPort" | "autoWake" | "owner">): Promise<RouteRow> {
  try {
    let insert = preparedInserts.get(d);
    if (!insert) preparedInserts.set(d, (insert = prepareInsert(d)));
    const [created] = await insert.execute({
      id: row.id,
      vmId: row.vmId,
      subdomain: row.subdomain,
      targetPort: row.targetPort,
      // A placeholder leaves no column to its default: the schema's defaults, taken from it.
      autoWake: row.autoWake ?? (routes.autoWake.default as boolean),
      owner: row.owner ?? (routes.owner.default as string),
    });
    return created!;
  } catch (err) {
    if (isUniqueViolation(err, "routes_subdomain_key")) throw new SubdomainTakenError(row.subdomain);
    throw err;
  }
}

/** Routes of one VM, newest first; ties on created_at broken by id so the order is stable. */
export function listRoutesByVm(d: Database, vmId: string, owner?: string): Promise<RouteRow[]> {
  return d.db
    .select()
    .from(routes)
    .where(owner === undefined ? eq(routes.vmId, vmId) : and(eq(routes.vmId, vmId), eq(routes.owner, owner)))
    .orderBy(desc(routes.createdAt), desc(routes.id));
}

export async function getRoute(d: Database, id: string): Promise<RouteRow | undefined> {
  const [row] = await d.db.select().from(routes).where(eq(routes.id, id));
  return row;
}

export async function getRouteBySubdomain(d: Database, subdomain: string): Promise<RouteRow | undefined> {
  const [row] = await d.db.select().from(routes).where(eq(routes.subdomain, subdomain));
  return row;
}

/** Every route, ordered by subdomain (the Traefik config and the VM directory read this). */
export function listAllRoutes(d: Database): Promise<RouteRow[]> {
  return d.db.select().from(routes).orderBy(routes.subdomain);
}

/** Deletes one route; returns it, or undefined when it did not exist (or belongs to another owner). */
export async function deleteRoute(d: Database, id: string, owner?: string): Promise<RouteRow | undefined> {
  const [row] = await d.db
    .delete(routes)
    .where(owner === undefined ? eq(routes.id, id) : and(eq(routes.id, id), eq(routes.owner, owner)))
    .returning();
  return row;
}

/** How many routes there are (of one owner, when given). */
export async function countRoutes(d: Database, owner?: string): Promise<number> {
  const [row] = await d.db
    .select({ n: count() })
    .from(routes)
    .where(owner === undefined ? undefined : eq(routes.owner, owner));
  return Number(row?.n ?? 0);
}
