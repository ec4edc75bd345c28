/**
 * The bridge network's safety check: it only ever runs in a network namespace that holds nothing
 * but `lo` and what this process's own bridge networks made, so it can never put an address on a
 * real network (a host's eth0, a container's interface, a CI runner's uplink).
 */
import { listLinks, type LinkInfo } from "./ip-command.ts";
import type { Subnet } from "./subnet.ts";

/** Interface names this process's bridge networks made and have not removed yet. */
export const madeByThisProcess = new Set<string>();

/**
 * Written as the alias of the bridge, so a refusal can tell a leftover of a killed simulator (which
 * cannot clean up after SIGKILL) from somebody else's interface, and say how to remove it.
 */
const MARKER = "hatch-proxy simulator bridge network, pid ";
export const markerAlias = () => MARKER + process.pid;

/** Resolves when the namespace is bare enough for a bridge on `subnet`; otherwise rejects with an Error that says why and what to do. */
export async function assertBareNamespace(subnet: Subnet): Promise<void> {
  const links = await listLinks();
  const foreign = links.filter((l) => l.ifname !== "lo" && !madeByThisProcess.has(l.ifname));
  if (foreign.length > 0) {
    const names = foreign.map((l) => l.ifname).join(", ");
    const hints = leftoverHints(foreign);
    throw new Error(
      `refusing to build the bridge network on ${subnet.cidr}: this network namespace holds interfaces other than lo (${names}), ` +
        `so it may be a real network. Run the simulator in a network namespace of its own, ` +
        `e.g. unshare -n sh -c 'ip link set lo up && exec npm start'.` +
        (hints.length > 0 ? " " + hints.join(" ") : ""),
    );
  }
  for (const link of links) {
    for (const a of link.addr_info ?? []) {
      if (a.family === "inet" && subnet.overlaps(a.local, a.prefixlen)) {
        const whose = link.ifname === "lo" ? "" : " (made by another bridge network of this process)";
        throw new Error(`refusing to build the bridge network on ${subnet.cidr}: it overlaps ${a.local}/${a.prefixlen} on ${link.ifname}${whose}`);
      }
    }
  }
}

/** What the refusal can say about interfaces marked by a simulator: whose they are and, for a dead one's, how to remove them. */
function leftoverHints(links: LinkInfo[]): string[] {
  const byPid = new Map<number, string[]>();
  for (const l of links) {
    if (!l.ifalias?.startsWith(MARKER)) continue;
    const pid = Number(l.ifalias.slice(MARKER.length));
    byPid.set(pid, [...(byPid.get(pid) ?? []), l.ifname]);
  }
  return [...byPid].map(([pid, names]) =>
    pidAlive(pid)
      ? `${names.join(", ")} belong to a running simulator (pid ${pid}).`
      : `${names.join(", ")} were left by a simulator that is no longer running (pid ${pid}); remove them with: ` +
        names.map((n) => `ip link del ${n}`).join("; ") +
        " (a veth's peer goes with it).",
  );
}

function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to another user.
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
