import { sql } from "drizzle-orm";
import { boolean, check, index, integer, pgTable, text, timestamp } from "drizzle-orm/pg-core";

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
  ],
);

export type RouteRow = typeof routes.$inferSelect;
export type NewRouteRow = typeof routes.$inferInsert;
