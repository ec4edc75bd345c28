/**
 * The interfaces of a bridge network, as `ip` commands: the bridge with its anchor, and one veth
 * pair per linked VM. Every name is recorded in madeByThisProcess before it is made (host ends
 * through reserveHostVethName), so a half-made interface is still recognised (and removed) as ours.
 */
import { deleteLink, ip, ipBatch } from "./ip-command.ts";
import { madeByThisProcess, markerAlias } from "./namespace-guard.ts";
import type { Subnet } from "./subnet.ts";

/** The names of one bridge's interfaces (see bridgeNameError for why they cannot collide). */
export const anchorNames = (bridge: string) => [`${bridge}a`, `${bridge}b`] as const;

/** The lowest free host-end name `<bridge>v<n>`, now recorded as ours (reserved before any await, so concurrent links cannot pick the same). */
export function reserveHostVethName(bridge: string): string {
  for (let i = 0; ; i++) {
    const name = `${bridge}v${i}`;
    if (!madeByThisProcess.has(name)) {
      madeByThisProcess.add(name);
      return name;
    }
  }
}

/**
 * Why a bridge name is refused, or undefined. Letters then digits: the names derived from it
 * (`<bridge>a`, `<bridge>b`, `<bridge>v<n>`) then never look like another valid bridge name, so two
 * bridge networks of one process cannot claim each other's interfaces; at most 8 characters
 * leaves room for `v<n>` in the kernel's 15.
 */
export function bridgeNameError(name: string): string | undefined {
  return /^[a-z]{1,6}[0-9]{1,2}$/.test(name) ? undefined : `bridge name must be 1–6 lowercase letters then 1–2 digits (e.g. hsbr0), got "${name}"`;
}

/**
 * A locally administered MAC from the subnet. Set explicitly because a Linux bridge otherwise takes
 * the lowest MAC among its ports and changes it as VMs come and go, leaving guests with a stale
 * gateway address.
 */
function bridgeMac(subnet: Subnet): string {
  const o = [16, 8, 0].map((s) => Math.floor(subnet.network / 2 ** s) % 256);
  return ["02", "68", "73", ...o.map((n) => n.toString(16).padStart(2, "0"))].join(":");
}

/** A guest MAC derived from its IP, as the simulator reports guest_mac (06:00 + the four octets), stable across relinks. */
export function guestMac(ip: string): string {
  return ["06", "00", ...ip.split(".").map((o) => Number(o).toString(16).padStart(2, "0"))].join(":");
}

/**
 * Makes the bridge, up, with the subnet's first address, and its anchor: a veth pair with one end
 * on the bridge and both ends up. Without the anchor the bridge loses its carrier whenever no VM
 * link is up (one paused VM is enough), and on carrier loss the kernel flushes the bridge's ARP
 * table, so a connect to a paused VM would fail after ARP (~3 s, EHOSTUNREACH) instead of hanging
 * as it does on Hatch. (A dummy interface would do, but not every kernel has the dummy driver.)
 */
export async function createBridge(bridge: string, subnet: Subnet): Promise<void> {
  const [a, b] = anchorNames(bridge);
  for (const n of [bridge, a, b]) madeByThisProcess.add(n);
  await ipBatch([
    `link add ${bridge} address ${bridgeMac(subnet)} type bridge forward_delay 0 stp_state 0`,
    // No IPv6 link-local addresses: nothing here speaks IPv6, and they would only add chatter.
    `link set ${bridge} addrgenmode none`,
    `link set ${bridge} alias "${markerAlias()}"`,
    `addr add ${subnet.gateway}/${subnet.prefixLength} dev ${bridge}`,
    `link add ${a} type veth peer name ${b}`,
    // Marked too (not its peer, which goes with it), so a refusal can name all there is to remove.
    `link set ${a} alias "${markerAlias()}"`,
    `link set ${a} addrgenmode none`,
    `link set ${b} addrgenmode none`,
    `link set ${a} master ${bridge} up`,
    `link set ${b} up`,
    `link set ${bridge} up`,
  ]);
}

/** Removes the bridge and its anchor; what is already gone is skipped. Throws after trying all when one could not be removed. */
export async function removeBridge(bridge: string): Promise<void> {
  const errors: string[] = [];
  // Deleting one end of a veth pair removes both.
  const [a, b] = anchorNames(bridge);
  for (const [link, goes] of [[a, [a, b]], [bridge, [bridge]]] as const) {
    try {
      await deleteLink(link);
      for (const n of goes) madeByThisProcess.delete(n);
    } catch (err) {
      errors.push((err as Error).message);
    }
  }
  if (errors.length > 0) throw new Error(`bridge ${bridge} not fully removed: ${errors.join("; ")}`);
}

export interface VethSpec {
  bridge: string;
  subnet: Subnet;
  hostIf: string;
  netnsPid: number;
  ip: string;
  mac: string;
}

/**
 * A veth pair from the bridge to the guest namespace, configured on both sides (eth0 with the
 * guest's address and a default route via the bridge) but with the host end still down: the caller
 * brings it up once the guest listens, so no connect can meet a guest that refuses.
 */
export async function createGuestLink(s: VethSpec): Promise<void> {
  await ipBatch([
    `link add ${s.hostIf} type veth peer name eth0 address ${s.mac} netns ${s.netnsPid}`,
    `link set ${s.hostIf} addrgenmode none`,
    `link set ${s.hostIf} master ${s.bridge}`,
  ]);
  await ipBatch(
    [
      "link set lo up",
      "link set eth0 addrgenmode none",
      `addr add ${s.ip}/${s.subnet.prefixLength} dev eth0`,
      "link set eth0 up",
      `route add default via ${s.subnet.gateway}`,
    ],
    s.netnsPid,
  );
}

/** Sets the host end of a guest link up (frames pass) or down (frames are dropped both ways, sockets untouched). */
export const setHostEnd = (hostIf: string, up: boolean) => ip("link", "set", hostIf, up ? "up" : "down");

/**
 * Forgets the bridge's ARP entry for a guest that has just come (back) up. Connects made while it
 * was unreachable leave a FAILED entry behind, which the kernel only probes again a second later:
 * without this, the first connect after a restore waited about half a second for ARP.
 */
export const forgetNeighbour = (bridge: string, ipAddr: string) => ip("neigh", "flush", "to", ipAddr, "dev", bridge);

/**
 * Deletes a guest link (both ends) and forgets the bridge's ARP entry for its address. The kernel
 * keeps a REACHABLE entry for 15–45 s after the last confirmation; while it lasts, a connect to the
 * address is a black hole rather than the "no route to host" after ~3 s of ARP that Hatch shows for
 * a snapshotted VM (its measurement), so the entry goes with the link.
 */
export async function removeGuestLink(bridge: string, hostIf: string, ipAddr: string): Promise<void> {
  await deleteLink(hostIf);
  madeByThisProcess.delete(hostIf);
  await ip("neigh", "flush", "to", ipAddr, "dev", bridge);
}
