/** A PostgreSQL database in the shape of Hatch's own store (its tables images, vms, proxy_routes). */
import postgres from "postgres";
import { freshDb, type TestDb } from "./db.ts";

export const HATCH_SCHEMA = `
CREATE TABLE images (id TEXT PRIMARY KEY, kernel_path TEXT NOT NULL, rootfs_path TEXT NOT NULL, boot_args TEXT NOT NULL DEFAULT '', created_at TIMESTAMPTZ NOT NULL DEFAULT NOW());
CREATE TABLE vms (id TEXT PRIMARY KEY, image_id TEXT NOT NULL REFERENCES images(id), state TEXT NOT NULL DEFAULT 'starting', vcpu_count INTEGER NOT NULL, mem_mib INTEGER NOT NULL,
  guest_ip TEXT, ssh_port INTEGER NOT NULL DEFAULT 0, user_id TEXT, created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(), updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW());
CREATE TABLE proxy_routes (id TEXT PRIMARY KEY, vm_id TEXT NOT NULL REFERENCES vms(id), subdomain TEXT NOT NULL UNIQUE, target_port INTEGER NOT NULL,
  auto_wake BOOLEAN NOT NULL DEFAULT TRUE, created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(), updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW());
`;

/** A fresh database holding Hatch's schema (and none of ours), with one image; `sql` writes to it. */
export async function hatchDatabase(): Promise<{ db: TestDb; sql: postgres.Sql; close(): Promise<void> }> {
  const db = await freshDb("postgres");
  const sql = postgres(db.url!, { max: 1, onnotice: () => {} });
  await sql.unsafe("drop schema public cascade; create schema public; drop schema if exists drizzle cascade;");
  await sql.unsafe(HATCH_SCHEMA);
  await sql.unsafe(`insert into images (id, kernel_path, rootfs_path) values ('img_default', '/k', '/r')`);
  return {
    db,
    sql,
    async close() {
      await sql.end({ timeout: 2 });
      await db.drop();
    },
  };
}
