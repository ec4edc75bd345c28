/**
 * `hatch-proxy vms sleep` and `hatch-proxy vms activity`: the route API's sleep protocol and its view
 * of a VM's activity (the VM platform knows neither: hatch-proxy runs the sleep and counts requests).
 */
import { callApi, type ApiTarget } from "./http-client.ts";
import type { Subcommand } from "./subcommand.ts";
import { UsageError } from "./targets.ts";
import { vmsTable, type VmJson } from "./vms-command.ts";

/**
 * How long `vms sleep` waits for its answer: the drain may take HATCH_IDLE_DRAIN_TIMEOUT (30 s by
 * default), then the snapshot or stop (seconds on a real Hatch).
 */
export const SLEEP_TIMEOUT_MS = 120_000;

const ACTIONS = ["snapshot", "stop"] as const;

/** What `GET /vms/{vm_id}/activity` answers (src/api/vm-sleep.ts ActivitySchema). */
export interface ActivityJson {
  vm_id: string;
  state: string;
  last_activity_at: string | null;
  idle_since: string | null;
  open_connections: number;
  idle_timeout_s: number;
  sleeps_at: string | null;
  sleep: { phase: string; reason: string; started_at: string } | null;
  /** Absent from older APIs. */
  platform_access?: { status: string; detail: string | null };
  sleep_blocked?: string | null;
}

const UNITS: [string, number][] = [
  ["d", 86_400],
  ["h", 3_600],
  ["m", 60],
  ["s", 1],
];

/** A duration for people: its two largest units (`12s`, `3m`, `1m 30s`, `2h 5m`, `1d 3h`); under a second, `250ms`. */
export function humanDuration(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))}ms`;
  const total = Math.round(ms / 1000);
  const first = UNITS.findIndex(([, n]) => total >= n);
  const [unit, size] = UNITS[first]!;
  const parts = [`${Math.floor(total / size)}${unit}`];
  const next = UNITS[first + 1];
  if (next && Math.floor((total % size) / next[1])) parts.push(`${Math.floor((total % size) / next[1])}${next[0]}`);
  return parts.join(" ");
}

/** An API timestamp to the second (what the route tables show), and how long ago it was. */
function past(iso: string, now: number): string {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  const ago = now - t;
  return `${toSeconds(t)} (${ago < 1000 ? "just now" : `${humanDuration(ago)} ago`})`;
}

const toSeconds = (t: number) => new Date(t).toISOString().replace(/\.\d{3}Z$/, "Z");

/** Why the idle sweeper has no time for the VM, when the answer tells (the API's reasons for a null sleeps_at). */
function whyNoSleep(a: ActivityJson): string | undefined {
  if (a.idle_timeout_s === 0) return "idle sleep is off";
  if (a.platform_access && a.platform_access.status !== "ok") return "hatch-proxy cannot act on it: see platform access";
  if (a.sleep_blocked) return "the platform refuses to put it to sleep: see sleep blocked";
  if (a.sleep) return "a sleep is under way";
  if (a.state !== "running") return "not running";
  if (a.idle_since === null) return "no routes";
  if (a.open_connections > 0) return `${a.open_connections} connection${a.open_connections === 1 ? "" : "s"} open`;
  return undefined;
}

/** `vms activity` for people: aligned `key  value` lines, times relative to `now` (ms since the epoch). */
export function activityLines(a: ActivityJson, now: number): string[] {
  let sleepsAt: string;
  if (a.sleeps_at !== null) {
    const t = Date.parse(a.sleeps_at);
    sleepsAt = Number.isNaN(t) ? a.sleeps_at : `${toSeconds(t)} (${t - now < 1000 ? "due now" : `in ${humanDuration(t - now)}`})`;
  } else {
    const why = whyNoSleep(a);
    sleepsAt = why ? `- (${why})` : "-";
  }
  const rows: [string, string][] = [
    ["vm", a.vm_id],
    ["state", a.state],
    ["last activity", a.last_activity_at === null ? "never" : past(a.last_activity_at, now)],
    ["idle since", a.idle_since === null ? "- (no routes)" : past(a.idle_since, now)],
    ["open connections", String(a.open_connections)],
    ["idle timeout", a.idle_timeout_s === 0 ? "off" : humanDuration(a.idle_timeout_s * 1000)],
    ["sleeps at", sleepsAt],
    ["sleep in progress", a.sleep ? `${a.sleep.phase} (reason: ${a.sleep.reason}) since ${past(a.sleep.started_at, now)}` : "-"],
  ];
  // Only when hatch-proxy cannot act on the VM (a key-scoped platform without its owner's key).
  if (a.sleep_blocked) rows.push(["sleep blocked", a.sleep_blocked]);
  if (a.platform_access && a.platform_access.status !== "ok") rows.push(["platform access", `${a.platform_access.status}: ${a.platform_access.detail ?? ""}`]);
  const width = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, value]) => `${k.padEnd(width)}  ${value}`);
}

const id = encodeURIComponent;

export const SLEEP_SUBCOMMANDS: Subcommand<ApiTarget>[] = [
  {
    name: "sleep",
    synopsis: "vms sleep <vm> [--action snapshot|stop]",
    about:
      "Put a running VM to sleep now, the way the idle sweeper does (through the route API): its routers leave Traefik, " +
      "requests in flight finish, then it is snapshotted or stopped; requests arriving meanwhile wake it afterwards. " +
      `Prints the VM once asleep (waits up to ${SLEEP_TIMEOUT_MS / 1000} s).`,
    positionals: ["vm"],
    options: { action: { type: "string", help: "snapshot or stop (default: the server's HATCH_IDLE_ACTION)" } },
    api: "route",
    async run({ target, args, values, fetch, print }) {
      const action = values.action;
      if (action !== undefined && !(ACTIONS as readonly unknown[]).includes(action)) {
        throw new UsageError(`vms sleep: --action must be "snapshot" or "stop", not ${JSON.stringify(action)}`);
      }
      const slow = { ...target, timeoutMs: Math.max(target.timeoutMs, SLEEP_TIMEOUT_MS) };
      const answer = await callApi(fetch, slow, "POST", `/vms/${id(args[0]!)}/sleep`, action === undefined ? undefined : { action });
      print(answer, () => vmsTable([answer.json as VmJson]));
    },
  },
  {
    name: "activity",
    synopsis: "vms activity <vm>",
    about: "Why a VM is or is not asleep (through the route API): last activity, open connections, and when the idle sweeper will put it to sleep.",
    positionals: ["vm"],
    options: {},
    api: "route",
    async run({ target, args, fetch, print }) {
      const answer = await callApi(fetch, target, "GET", `/vms/${id(args[0]!)}/activity`);
      print(answer, () => activityLines(answer.json as ActivityJson, Date.now()));
    },
  },
];
