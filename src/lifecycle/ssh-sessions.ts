/**
 * SSH sessions to VMs, as Hatch's own idle monitor sees them: an ESTABLISHED entry in the kernel's
 * connection-tracking table whose destination port is a VM's `ssh_port` (the host port Hatch
 * forwards to the guest's port 22). Readable only where hatch-proxy runs in the Hatch host's
 * network namespace; elsewhere SSH sessions are not seen (and the README says so).
 */
import { readFile } from "node:fs/promises";

/** Destination ports of established connections in a conntrack table's text. */
export function establishedPorts(text: string): Set<number> {
  const ports = new Set<number>();
  for (const line of text.split("\n")) {
    if (!line.includes("ESTABLISHED")) continue;
    for (const m of line.matchAll(/\bdport=(\d+)/g)) ports.add(Number(m[1]));
  }
  return ports;
}

/** Reads `file` (e.g. /proc/net/nf_conntrack); undefined when it cannot be read. */
export async function readEstablishedPorts(file: string): Promise<Set<number> | undefined> {
  try {
    return establishedPorts(await readFile(file, "utf8"));
  } catch {
    return undefined;
  }
}
