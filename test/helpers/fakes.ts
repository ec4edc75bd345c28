import type { CallOptions, Vm, VmDirectory, VmPlatform } from "../../src/vms/platform.ts";
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

/** A VmDirectory that only remembers what it is told (no polling). */
export function recordingDirectory(): VmDirectory {
  const vms = new Map<string, Vm>();
  const listeners = new Set<() => void>();
  let version = 0;
  return {
    peek: (id) => vms.get(id),
    all: () => vms,
    async refreshOne(id) {
      return vms.get(id);
    },
    async refreshAll() {},
    record(v) {
      vms.set(v.id, v);
      version++;
      listeners.forEach((l) => l());
    },
    onChange(l) {
      listeners.add(l);
      return () => listeners.delete(l);
    },
    get version() {
      return version;
    },
    ready: true,
    start() {},
    stop() {},
  };
}
