import type { Vm, VmDirectory } from "../src/vms/platform.ts";

/** A VmDirectory over a Map that never polls: benchmarks measure the request path, not VM syncs. */
export function staticDirectory(vms: Map<string, Vm> = new Map()): VmDirectory {
  return {
    peek: (id) => vms.get(id),
    all: () => vms,
    refreshOne: async (id) => vms.get(id),
    refreshAll: async () => {},
    record: (vm) => void vms.set(vm.id, vm),
    onChange: () => () => {},
    version: 0,
    ready: true,
    start() {},
    stop() {},
  };
}
