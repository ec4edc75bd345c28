import { createApp, type ApiDeps } from "../../src/api/app.ts";
import { createStaticKeyAuth } from "../../src/api/auth.ts";
import { testConfig } from "../../src/config.ts";
import { openDatabase, type Database } from "../../src/db/client.ts";
import type { Listening } from "../../src/listen.ts";
import { silentLogger } from "../../src/log.ts";
import { listenHono } from "../../src/listen.ts";
import type { CallOptions, Vm, VmDirectory, VmPlatform, VmState } from "../../src/vms/platform.ts";
import { PlatformUnavailableError } from "../../src/vms/platform.ts";

/** An in-memory VM platform for API tests: VMs are plain objects; `down` simulates an outage. */
export function fakePlatform(vms: Vm[] = []) {
  const byId = new Map(vms.map((v) => [v.id, v]));
  const owners = new Map<string, string>();
  const state = { down: false, calls: 0, lastUserKey: undefined as string | undefined };
  const visible = (id: string, opts?: CallOptions) => {
    const owner = owners.get(id);
    return !owner || !opts?.userKey || owner === opts.userKey;
  };
  const platform: VmPlatform = {
    kind: "simulator",
    async get(id, opts) {
      state.calls++;
      state.lastUserKey = opts?.userKey;
      if (state.down) throw new PlatformUnavailableError("VM platform unavailable: connection refused");
      const vm = byId.get(id);
      return vm && visible(id, opts) ? { ...vm } : undefined;
    },
    async list(opts) {
      if (state.down) throw new PlatformUnavailableError("VM platform unavailable: connection refused");
      return [...byId.values()].filter((v) => visible(v.id, opts));
    },
    async wake(id) {
      const vm = byId.get(id)!;
      vm.state = "running";
      return { ...vm };
    },
    async sleep(id, action) {
      const vm = byId.get(id)!;
      vm.state = action === "stop" ? "stopped" : "snapshotted";
      return { ...vm };
    },
  };
  return {
    platform,
    state,
    add(vm: Vm, owner?: string) {
      byId.set(vm.id, vm);
      if (owner) owners.set(vm.id, owner);
    },
    remove: (id: string) => byId.delete(id),
  };
}

/** A VM object with Hatch's fields. */
export const vm = (id: string, state: Vm["state"] = "running", guest_ip = "127.0.1.250"): Vm => ({ id, state, guest_ip });

/**
 * A VmDirectory for tests that never polls. With a `platform`, refreshOne/refreshAll read it (so a
 * test can leave the cache stale on purpose: a VM snapshotted behind its back still looks running);
 * without one it only remembers what it is told. `set` and `markReady` let a test drive it.
 */
export function fakeDirectory(opts: { platform?: VmPlatform; vms?: Vm[]; ready?: boolean } = {}) {
  const vms = new Map((opts.vms ?? []).map((v) => [v.id, v]));
  const listeners = new Set<() => void>();
  let version = 0;
  let ready = opts.ready ?? true;
  const changed = () => {
    version++;
    for (const l of listeners) l();
  };
  const dir = {
    /** How many times refreshOne asked. */
    refreshes: 0,
    peek: (id: string) => vms.get(id),
    all: () => vms,
    async refreshOne(id: string) {
      dir.refreshes++;
      if (!opts.platform) return vms.get(id);
      const vm = await opts.platform.get(id);
      if (vm) vms.set(id, { ...vm });
      else vms.delete(id);
      changed();
      return vm ? { ...vm } : undefined;
    },
    async refreshAll() {
      if (!opts.platform) return;
      for (const vm of await opts.platform.list()) vms.set(vm.id, { ...vm });
      changed();
    },
    record(vm: Vm) {
      vms.set(vm.id, { ...vm });
      changed();
    },
    onChange(l: () => void) {
      listeners.add(l);
      return () => listeners.delete(l);
    },
    get version() {
      return version;
    },
    get ready() {
      return ready;
    },
    start() {},
    stop() {},
    /** Sets a VM's state as if the platform had reported it. */
    set(id: string, state: VmState, ip = "127.0.1.9") {
      vms.set(id, { id, state, guest_ip: ip });
      changed();
    },
    /** Makes `ready` true, with or without a change event. */
    markReady(silently = false) {
      ready = true;
      if (!silently) changed();
    },
  } satisfies VmDirectory & Record<string, unknown>;
  return dir;
}

/**
 * The route API on `database` with test defaults: the test config, a fake directory, static `keys`,
 * no log; `deps` replaces any of them (the platform, a log to read, the sleep endpoints, ...).
 */
export function testApp(database: Database, platform: VmPlatform, keys: string[], deps: Partial<ApiDeps> = {}): ReturnType<typeof createApp> {
  return createApp({ config: testConfig(), database, platform, directory: fakeDirectory(), auth: createStaticKeyAuth(keys), log: silentLogger, ...deps });
}

/** The real route API on in-memory PGlite, served on a free loopback port (for CLI tests). */
export async function serveRouteApi(platform: VmPlatform, keys: string[]): Promise<Listening & { database: Database }> {
  const database = await openDatabase({});
  const app = testApp(database, platform, keys);
  const served = await listenHono(app.fetch, { host: "127.0.0.1", port: 0 });
  return {
    ...served,
    database,
    async close() {
      await served.close();
      await database.close();
    },
  };
}
