/** `hatch-proxy vms …`: the VM platform API (the simulator, or a real Hatch) for people and scripts. */
import { callApi, type ApiTarget } from "./http-client.ts";
import { formatTable } from "./table.ts";
import { UsageError } from "./targets.ts";
import type { Subcommand, SubcommandContext } from "./subcommand.ts";

export interface VmJson {
  id: string;
  state: string;
  guest_ip?: string;
  guest_ports?: number[];
  wake_count?: number;
}

/** Aligned table of VMs: ID, STATE, GUEST IP, PORTS, WAKES ("-" where a real Hatch has no such field). */
export function vmsTable(vms: readonly VmJson[]): string[] {
  return formatTable(
    ["ID", "STATE", "GUEST IP", "PORTS", "WAKES"],
    vms.map((v) => [
      String(v.id),
      String(v.state),
      v.guest_ip ? String(v.guest_ip) : "-",
      Array.isArray(v.guest_ports) && v.guest_ports.length ? v.guest_ports.join(",") : "-",
      typeof v.wake_count === "number" ? String(v.wake_count) : "-",
    ]),
  );
}

const id = encodeURIComponent;

/** A `POST /vms/<id>/<action>` command that answers with the VM (stop, start, restore). */
function action(name: "stop" | "start" | "restore", about: string): Subcommand<ApiTarget> {
  return {
    name,
    synopsis: `vms ${name} <vm>`,
    about,
    positionals: ["vm"],
    options: {},
    async run({ target, args, fetch, print }) {
      const answer = await callApi(fetch, target, "POST", `/vms/${id(args[0]!)}/${name}`);
      print(answer, () => vmsTable([answer.json as VmJson]));
    },
  };
}

function parsePorts(given: unknown): number[] | undefined {
  if (given === undefined) return undefined;
  const parts = (given as string[]).flatMap((p) => p.split(",")).map((p) => p.trim());
  for (const p of parts) if (!/^\d{1,9}$/.test(p)) throw new UsageError(`vms create: --port must be a whole number, not ${JSON.stringify(p)}`);
  return parts.map(Number);
}

export const VM_SUBCOMMANDS: Subcommand<ApiTarget>[] = [
  {
    name: "create",
    synopsis: "vms create [--port <port>]... [--restore-ms <ms>]",
    about: "Create and start a VM (the simulator: a guest HTTP server on each port, default 8080).",
    positionals: [],
    options: {
      port: { type: "string", multiple: true, help: "guest port to serve (repeat, or 8080,3000)" },
      "restore-ms": { type: "string", help: "how long a restore/start of this VM takes (simulator)" },
    },
    async run({ target, values, fetch, print }: SubcommandContext<ApiTarget>) {
      const body: Record<string, unknown> = {};
      const ports = parsePorts(values.port);
      if (ports) body.guest_ports = ports;
      const restore = values["restore-ms"];
      if (typeof restore === "string") {
        if (!/^\d{1,9}$/.test(restore)) throw new UsageError(`vms create: --restore-ms must be a whole number of milliseconds, not ${JSON.stringify(restore)}`);
        body.restore_ms = Number(restore);
      }
      const answer = await callApi(fetch, target, "POST", "/vms", body);
      print(answer, () => vmsTable([answer.json as VmJson]));
    },
  },
  {
    name: "list",
    synopsis: "vms list",
    about: "Every VM the key can see.",
    positionals: [],
    options: {},
    async run({ target, fetch, print }) {
      const answer = await callApi(fetch, target, "GET", "/vms");
      const vms = answer.json as VmJson[];
      print(answer, () => (vms.length ? vmsTable(vms) : ["no VMs"]));
    },
  },
  {
    name: "get",
    synopsis: "vms get <vm>",
    about: "One VM by id.",
    positionals: ["vm"],
    options: {},
    async run({ target, args, fetch, print }) {
      const answer = await callApi(fetch, target, "GET", `/vms/${id(args[0]!)}`);
      print(answer, () => vmsTable([answer.json as VmJson]));
    },
  },
  {
    name: "snapshot",
    synopsis: "vms snapshot <vm>",
    about: "Snapshot a running VM: it sleeps until a request (or `vms restore`) wakes it.",
    positionals: ["vm"],
    options: {},
    async run({ target, args, fetch, print }) {
      const answer = await callApi(fetch, target, "POST", `/vms/${id(args[0]!)}/snapshot`);
      // The answer is the snapshot, not the VM: people want to see the VM's new state.
      if (print.json) return print(answer, () => []);
      const vm = await callApi(fetch, target, "GET", `/vms/${id(args[0]!)}`);
      print(vm, () => vmsTable([vm.json as VmJson]));
    },
  },
  action("restore", "Restore a snapshotted VM (blocks until it runs)."),
  action("stop", "Stop a running or snapshotted VM."),
  action("start", "Start a stopped VM (the simulator; Hatch has no start call)."),
  {
    name: "delete",
    synopsis: "vms delete <vm>",
    about: "Delete a VM (its routes go with it at the next sync).",
    positionals: ["vm"],
    options: {},
    async run({ target, args, fetch, print }) {
      const answer = await callApi(fetch, target, "DELETE", `/vms/${id(args[0]!)}`);
      print(answer, () => [`deleted vm ${args[0]}`]);
    },
  },
];
