import { sql } from "drizzle-orm";
import { boolean, check, index, integer, pgTable, primaryKey, text, timestamp } from "drizzle-orm/pg-core";

/** A route: `<subdomain>.<base domain>` → port `target_port` of VM `vm_id`. */
export const routes = pgTable(
  "routes",
  {
    id: text("id").primaryKey(),
    vmId: text("vm_id").notNull(),
    // UNIQUE: concurrent creates of one subdomain are settled here, not by a read-then-write.
    subdomain: text("subdomain").notNull().unique("routes_subdomain_key"),
    targetPort: integer("target_port").notNull(),
    autoWake: boolean("auto_wake").notNull().default(true),
    // The user that owns the route when keys are verified per user; '' in single-tenant mode.
    owner: text("owner").notNull().default(""),
    createdAt: timestamp("created_at", { withTimezone: true, precision: 6 }).notNull().defaultNow(),
    updatedAt: timestamp("updated_at", { withTimezone: true, precision: 6 }).notNull().defaultNow(),
  },
  (t) => [
    check("routes_target_port_range", sql`${t.targetPort} BETWEEN 1 AND 65535`),
    index("routes_vm_created_idx").on(t.vmId, t.createdAt.desc(), t.id.desc()),
    // The VM sync asks, per owner, which VMs their routes name (and whether any route is left).
    index("routes_owner_vm_idx").on(t.owner, t.vmId),
  ],
);

export type RouteRow = typeof routes.$inferSelect;
export type NewRouteRow = typeof routes.$inferInsert;

/**
 * When each VM was last seen in use, by any path: Traefik's direct routers (read from its metrics),
 * the wake sidecar, the embedded proxy, an open connection. Writers only ever move it forward.
 */
export const vmActivity = pgTable("vm_activity", {
  vmId: text("vm_id").primaryKey(),
  lastActivityAt: timestamp("last_activity_at", { withTimezone: true, precision: 3 }).notNull(),
});

/**
 * Requests and connections open right now through one proxy process (`holder`) to one VM. Each
 * holder refreshes `seen_at` while its count is above zero; rows of a holder that stopped
 * refreshing are ignored by readers, so a crashed process cannot keep a VM awake for ever.
 */
export const vmConnections = pgTable(
  "vm_connections",
  {
    vmId: text("vm_id").notNull(),
    holder: text("holder").notNull(),
    openCount: integer("open_count").notNull(),
    seenAt: timestamp("seen_at", { withTimezone: true, precision: 3 }).notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.vmId, t.holder], name: "vm_connections_pkey" }), check("vm_connections_open_count", sql`${t.openCount} >= 0`)],
);

/**
 * A sleep in progress, at most one per VM (the primary key settles races between replicas).
 * `draining`: the VM's direct routers are out and in-flight work is finishing; an idle sleep is
 * cancelled by a request (`cancelled_at`). `sleeping`: the snapshot/stop has started; requests
 * are held for the wake that follows. The row goes away when the sleep ends either way.
 */
export const vmSleeps = pgTable(
  "vm_sleeps",
  {
    vmId: text("vm_id").primaryKey(),
    phase: text("phase").notNull(),
    reason: text("reason").notNull(),
    action: text("action").notNull(),
    holder: text("holder").notNull(),
    startedAt: timestamp("started_at", { withTimezone: true, precision: 3 }).notNull().defaultNow(),
    heartbeatAt: timestamp("heartbeat_at", { withTimezone: true, precision: 3 }).notNull().defaultNow(),
    cancelledAt: timestamp("cancelled_at", { withTimezone: true, precision: 3 }),
    cancelReason: text("cancel_reason"),
  },
  (t) => [
    check("vm_sleeps_phase", sql`${t.phase} IN ('draining', 'sleeping')`),
    check("vm_sleeps_reason", sql`${t.reason} IN ('idle', 'api')`),
    check("vm_sleeps_action", sql`${t.action} IN ('snapshot', 'stop')`),
  ],
);

/**
 * The API key of a route owner (per-user mode), kept because a key-scoped platform (Hatch) wakes,
 * sleeps and shows a VM only to its owner. `sealed` is the key encrypted with HATCH_CREDENTIALS_KEY
 * (AES-256-GCM, bound to the owner); `key_digest` tells a newer key without decrypting; `key_id`
 * names the operator key that sealed it. A trigger (drizzle/0005) drops the row with the owner's
 * last route.
 */
export const ownerCredentials = pgTable("owner_credentials", {
  owner: text("owner").primaryKey(),
  sealed: text("sealed").notNull(),
  keyDigest: text("key_digest").notNull(),
  keyId: text("key_id").notNull(),
  updatedAt: timestamp("updated_at", { withTimezone: true, precision: 3 }).notNull().defaultNow(),
});

/** Named leases: the idle sweeper runs in whichever process holds `idle-sweeper` (one at a time). */
export const leases = pgTable("leases", {
  name: text("name").primaryKey(),
  holder: text("holder").notNull(),
  expiresAt: timestamp("expires_at", { withTimezone: true, precision: 3 }).notNull(),
});

export type VmSleepRow = typeof vmSleeps.$inferSelect;
