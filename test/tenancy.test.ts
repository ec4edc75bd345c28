/**
 * hatch-proxy on a platform that scopes every VM call to its key's user (Hatch): the keys it keeps
 * for route owners (sealed, replaced, dropped with the last route, even under races), and the VM
 * calls made with them (followed, woken and slept as their owner; never "gone" on a 404 that a key
 * which does not speak for the VM gets).
 */
import { randomBytes } from "node:crypto";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { queryRows, type Database } from "../src/db/client.ts";
import { insertRoute, deleteRoute } from "../src/db/routes.repo.ts";
import { silentLogger } from "../src/log.ts";
import { OwnerKeys } from "../src/tenancy/owner-keys.ts";
import { Tenancy } from "../src/tenancy/tenancy.ts";
import { TenantPlatform } from "../src/tenancy/tenant-platform.ts";
import { CredentialVault, SealBrokenError } from "../src/tenancy/vault.ts";
import { VmAccessError } from "../src/vms/platform.ts";
import { createSimulator, type Simulator } from "../src/vms/simulator/index.ts";
import { dbKinds, freshDb, type TestDb } from "./helpers/db.ts";

const ALICE_KEY = "alice-key-5f1c0d9e7a3b";
const BOB_KEY = "bob-key-8e2a4c6d0f1b";
const OPS_KEY = "ops-key-3d7f9a1c5e2b";

describe("the vault", () => {
  const vault = new CredentialVault(randomBytes(32));

  it("opens what it sealed, for that owner only, with that operator key only", () => {
    const sealed = vault.seal("alice", ALICE_KEY);
    expect(sealed).not.toContain(ALICE_KEY);
    expect(sealed).not.toContain(Buffer.from(ALICE_KEY).toString("base64url").slice(0, 12));
    expect(vault.open("alice", sealed)).toBe(ALICE_KEY);
    // A fresh nonce each time: the same key seals differently.
    expect(vault.seal("alice", ALICE_KEY)).not.toBe(sealed);
    expect(() => vault.open("bob", sealed)).toThrow(SealBrokenError);
    expect(() => new CredentialVault(randomBytes(32)).open("alice", sealed)).toThrow(SealBrokenError);
    const [v, nonce, body] = sealed.split(".");
    const flipped = Buffer.from(body!, "base64url");
    flipped[0]! ^= 1;
    expect(() => vault.open("alice", `${v}.${nonce}.${flipped.toString("base64url")}`)).toThrow(SealBrokenError);
    expect(() => vault.open("alice", "garbage")).toThrow(SealBrokenError);
  });

  it("digests a key the same way each time, differently under another operator key", () => {
    expect(vault.digest(ALICE_KEY)).toBe(vault.digest(ALICE_KEY));
    expect(vault.digest(ALICE_KEY)).not.toBe(vault.digest(BOB_KEY));
    expect(new CredentialVault(randomBytes(32)).digest(ALICE_KEY)).not.toBe(vault.digest(ALICE_KEY));
    expect(vault.digest(ALICE_KEY)).not.toContain(ALICE_KEY);
  });
});

const kinds = await dbKinds();

describe.each(kinds)("keys of route owners, on %s", (kind) => {
  let t: TestDb;
  let keys: OwnerKeys;
  const vault = new CredentialVault(randomBytes(32));
  beforeAll(async () => {
    t = await freshDb(kind);
    keys = new OwnerKeys({ database: t.database, vault, log: silentLogger });
  });
  afterAll(() => t.drop());

  const route = (owner: string, vmId: string, subdomain: string) =>
    insertRoute(t.database, { id: `rt_${subdomain}`, vmId, subdomain, targetPort: 8080, autoWake: true, owner });
  const stored = (db: Database) => queryRows<Record<string, string>>(db, sql`select owner, sealed, key_digest, key_id from owner_credentials order by owner`);

  it("keeps a key only for an owner with a route, sealed; replaces it with a newer one; drops it with the last route", async () => {
    await keys.offer("carol", "carol-key-without-routes");
    expect(await stored(t.database)).toEqual([]);

    await route("carol", "vm_c1", "carol-one");
    await route("carol", "vm_c2", "carol-two");
    await keys.offer("carol", "carol-key-1-0123456789", true);
    let rows = await stored(t.database);
    expect(rows.map((r) => r.owner)).toEqual(["carol"]);
    expect(JSON.stringify(rows)).not.toContain("carol-key-1");
    expect(await keys.keyOf("carol")).toEqual({ key: "carol-key-1-0123456789" });

    await keys.offer("carol", "carol-key-2-9876543210");
    rows = await stored(t.database);
    expect(rows).toHaveLength(1);
    expect(vault.open("carol", rows[0]!.sealed!)).toBe("carol-key-2-9876543210");
    // A second process (no cache) reads the same.
    expect(await new OwnerKeys({ database: t.database, vault, log: silentLogger }).keyOf("carol")).toEqual({ key: "carol-key-2-9876543210" });

    await deleteRoute(t.database, "rt_carol-one");
    expect(await stored(t.database)).toHaveLength(1);
    await deleteRoute(t.database, "rt_carol-two");
    expect(await stored(t.database)).toEqual([]);
    const fresh = await new OwnerKeys({ database: t.database, vault, log: silentLogger }).keyOf("carol");
    expect("problem" in fresh && fresh.problem.reason).toBe("no_credential");
  });

  it("drops the key of an owner whose routes all go to another owner", async () => {
    await route("dave", "vm_d", "dave-one");
    await keys.offer("dave", "dave-key-0123456789", true);
    await queryRows(t.database, sql`update routes set owner = 'erin' where owner = 'dave'`);
    expect((await stored(t.database)).map((r) => r.owner)).not.toContain("dave");
    await t.database.db.execute(sql`delete from routes where owner = 'erin'`);
  });

  it("a key sealed with another HATCH_CREDENTIALS_KEY is no key (and is replaced at the owner's next call)", async () => {
    await route("fay", "vm_f", "fay-one");
    const other = new OwnerKeys({ database: t.database, vault: new CredentialVault(randomBytes(32)), log: silentLogger });
    await other.offer("fay", "fay-key-0123456789", true);
    const mine = new OwnerKeys({ database: t.database, vault, log: silentLogger });
    const before = await mine.keyOf("fay");
    expect("problem" in before && before.problem.reason).toBe("no_credential");
    await mine.offer("fay", "fay-key-0123456789");
    expect(await mine.keyOf("fay")).toEqual({ key: "fay-key-0123456789" });
    await deleteRoute(t.database, "rt_fay-one");
  });

  it.runIf(kind === "postgres")("a key is kept exactly while its owner has a route, however creates, deletes and calls interleave (50 races of each)", async () => {
    const second = await freshDbSameUrl(t);
    try {
      for (let i = 0; i < 50; i++) {
        await route("gil", "vm_g", `gil-old-${i}`);
        await keys.offer("gil", "gil-key-0123456789", true);
        // One connection deletes the last route while another creates one and keeps the key.
        const racer = new OwnerKeys({ database: second, vault, log: silentLogger });
        await Promise.all([
          deleteRoute(t.database, `rt_gil-old-${i}`),
          insertRoute(second, { id: `rt_gil-new-${i}`, vmId: "vm_g", subdomain: `gil-new-${i}`, targetPort: 80, autoWake: true, owner: "gil" }).then(() =>
            racer.offer("gil", "gil-key-0123456789", true),
          ),
        ]);
        const [routes] = await queryRows<{ n: number }>(t.database, sql`select count(*)::int as n from routes where owner = 'gil'`);
        expect([i, (await stored(t.database)).filter((r) => r.owner === "gil").length]).toEqual([i, routes!.n > 0 ? 1 : 0]);
        // The owner calls with a new key while their last route is deleted: the key must not outlive it.
        await Promise.all([deleteRoute(t.database, `rt_gil-new-${i}`), racer.offer("gil", `gil-key-new-${i}-0123456789`)]);
        expect([i, (await stored(t.database)).filter((r) => r.owner === "gil")]).toEqual([i, []]);
      }
    } finally {
      await second.close();
    }
  }, 60_000);
});

/** A second pool on the same Postgres database (another replica). */
async function freshDbSameUrl(t: TestDb): Promise<Database> {
  const { openDatabase } = await import("../src/db/client.ts");
  return openDatabase({ url: t.url! });
}

describe("VM calls as the VM's owner, on a key-scoped platform", () => {
  let sim: Simulator;
  let t: TestDb;
  const users = new Map([
    [ALICE_KEY, "alice"],
    [BOB_KEY, "bob"],
    [OPS_KEY, "ops"],
  ]);
  const vault = new CredentialVault(randomBytes(32));
  beforeAll(async () => {
    sim = await createSimulator({ ipPrefix: "127.0.47", restoreMs: 0, users });
    t = await freshDb("pglite");
  });
  afterAll(async () => {
    await sim.close();
    await t.drop();
  });

  const tenant = (perUser = true, hasServiceKey = true) => {
    const keys = new OwnerKeys({ database: t.database, vault, log: silentLogger });
    const platform = new TenantPlatform({
      base: sim.platformAs(hasServiceKey ? OPS_KEY : undefined),
      keys,
      database: t.database,
      perUser,
      hasServiceKey,
      log: silentLogger,
    });
    return { keys, platform, tenancy: new Tenancy(keys, platform, t.database, silentLogger) };
  };
  const route = (owner: string, vmId: string, subdomain: string) =>
    insertRoute(t.database, { id: `rt_${subdomain}`, vmId, subdomain, targetPort: 8080, autoWake: true, owner });
  const reason = async (p: Promise<unknown>) => {
    const err = await p.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(VmAccessError);
    return (err as VmAccessError).reason;
  };

  it("follows, wakes and sleeps each owner's routed VMs with that owner's key, and never calls a VM gone on someone else's 404", async () => {
    const mine = await sim.createVm({ ownerKey: ALICE_KEY });
    const unrouted = await sim.createVm({ ownerKey: ALICE_KEY });
    const bobs = await sim.createVm({ ownerKey: BOB_KEY });
    const ops = await sim.createVm({ ownerKey: OPS_KEY });
    await route("alice", mine.id, "alice-app");
    await route("bob", bobs.id, "bob-app");
    const { keys, platform } = tenant();

    // Before the owners ever called: only the operator's VMs are seen; theirs are unknown, not gone.
    expect((await platform.list()).map((v) => v.id)).toEqual([ops.id]);
    expect(await reason(platform.get(mine.id))).toBe("no_credential");
    expect(await reason(platform.wake(mine.id))).toBe("no_credential");
    expect(await platform.deleteRoutesOfGoneVm(mine.id)).toBe(0);

    await keys.offer("alice", ALICE_KEY, true);
    await keys.offer("bob", BOB_KEY, true);
    const listed = (await platform.list()).map((v) => v.id).sort();
    // Each owner's key follows the VMs that owner routes: not Alice's unrouted one.
    expect(listed).toEqual([mine.id, bobs.id, ops.id].sort());
    expect(listed).not.toContain(unrouted.id);
    expect((await platform.get(bobs.id))?.state).toBe("running");

    expect((await platform.sleep(mine.id, "snapshot")).state).toBe("snapshotted");
    expect((await platform.wake(mine.id)).state).toBe("running");
    expect(sim.getVm(mine.id)?.wake_count).toBe(1);

    // Alice deletes her VM on the platform: her own key says 404, so it is gone, with her routes only.
    await route("alice", bobs.id, "alice-on-bobs-vm");
    await sim.deleteVm(mine.id);
    expect(await platform.get(mine.id)).toBeUndefined();
    expect(await platform.deleteRoutesOfGoneVm(mine.id)).toBe(1);
    // A route of Alice's that names Bob's VM: her key cannot see it, Bob's can: kept, and still running.
    expect(await platform.deleteRoutesOfGoneVm(bobs.id)).toBe(0);
    expect((await platform.get(bobs.id))?.state).toBe("running");
    await deleteRoute(t.database, "rt_alice-on-bobs-vm");
    await deleteRoute(t.database, "rt_bob-app");
    await sim.deleteVm(bobs.id);
    await sim.deleteVm(ops.id);
    await sim.deleteVm(unrouted.id);
  });

  it("a key the platform refuses is not sent again until its owner brings another", async () => {
    const vm = await sim.createVm({ ownerKey: ALICE_KEY });
    await route("alice", vm.id, "alice-refused");
    const { keys, platform } = tenant();
    await keys.offer("alice", ALICE_KEY, true);
    expect((await platform.get(vm.id))?.id).toBe(vm.id);

    users.delete(ALICE_KEY);
    users.set("alice-key-rotated-77", "alice");
    expect(await reason(platform.get(vm.id))).toBe("credential_rejected");
    // The list goes on for everyone else and simply leaves her VM out (the directory keeps it as known).
    expect((await platform.list()).map((v) => v.id)).not.toContain(vm.id);
    expect(await reason(platform.sleep(vm.id, "snapshot"))).toBe("credential_rejected");
    expect(await platform.deleteRoutesOfGoneVm(vm.id)).toBe(0);

    await keys.offer("alice", "alice-key-rotated-77");
    expect((await platform.get(vm.id))?.state).toBe("running");
    users.delete("alice-key-rotated-77");
    users.set(ALICE_KEY, "alice");
    await deleteRoute(t.database, "rt_alice-refused");
    await sim.deleteVm(vm.id);
  });

  it("routes without an owner: unreachable per user unless HATCH_API_KEY sees the VM; claimed by the VM's owner", async () => {
    const vm = await sim.createVm({ ownerKey: BOB_KEY });
    await route("", vm.id, "imported-app");
    const noService = tenant(true, false);
    expect(await reason(noService.platform.get(vm.id))).toBe("unowned");
    expect(await noService.platform.access(vm.id)).toMatchObject({ ok: false, problem: { reason: "unowned" } });
    // With a service key that cannot see it (Hatch's 404 for another user's VM): still not gone.
    const withService = tenant(true, true);
    expect(await reason(withService.platform.get(vm.id))).toBe("unowned");

    await withService.tenancy.claim(vm.id, "bob", BOB_KEY);
    const [row] = await queryRows<{ owner: string }>(t.database, sql`select owner from routes where id = 'rt_imported-app'`);
    expect(row?.owner).toBe("bob");
    expect((await withService.platform.get(vm.id))?.state).toBe("running");
    expect(await withService.platform.access(vm.id)).toEqual({ ok: true });
    await deleteRoute(t.database, "rt_imported-app");
    await sim.deleteVm(vm.id);
  });

  it("single-tenant (static keys): the service key speaks for every route, as before", async () => {
    const unscoped = await createSimulator({ ipPrefix: "127.0.48", restoreMs: 0 });
    try {
      const vm = await unscoped.createVm();
      await route("", vm.id, "single-app");
      const keys = new OwnerKeys({ database: t.database, vault: undefined, log: silentLogger });
      const platform = new TenantPlatform({ base: unscoped.platform, keys, database: t.database, perUser: false, hasServiceKey: false, log: silentLogger });
      expect((await platform.list()).map((v) => v.id)).toEqual([vm.id]);
      await unscoped.deleteVm(vm.id);
      expect(await platform.get(vm.id)).toBeUndefined();
      expect(await platform.deleteRoutesOfGoneVm(vm.id)).toBe(1);
    } finally {
      await unscoped.close();
    }
  });
});
