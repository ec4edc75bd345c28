/**
 * A guest network for the simulator that is as unkind as Hatch's: each VM lives in a network
 * namespace of its own, on a veth joined to a Linux bridge, so a sleeping VM is unreachable rather
 * than refused. A VM's lifecycle maps onto it as Hatch's does onto its taps: attach (create) →
 * pause (snapshot begins: black hole) → unlink (tap deleted: ARP fails) → relink (restore) →
 * detach (delete). Hatch's behaviour is described in shared/reference/hatch.md, last section.
 */
import type { Server } from "node:net";
import type { Logger } from "../../../log.ts";
import { GuestLink } from "./guest-link.ts";
import { GuestNamespace } from "./guest-namespace.ts";
import { KeyedQueue } from "./keyed-queue.ts";
import { anchorNames, bridgeNameError, createBridge, guestMac, removeBridge } from "./links.ts";
import { assertBareNamespace, madeByThisProcess } from "./namespace-guard.ts";
import { GuestAddressPool, Subnet } from "./subnet.ts";

export const DEFAULT_BRIDGE_SUBNET = "10.213.0.0/24";
export const DEFAULT_BRIDGE_NAME = "hsbr0";

export interface BridgeNetworkOptions {
  /** IPv4 network, /16–/29; the bridge takes its first address, guests the rest. */
  subnet?: string | undefined;
  bridgeName?: string | undefined;
  log: Logger;
}

/** linked: reachable; paused: frames dropped both ways, sockets frozen, connects hang; unlinked: no link, connects fail after ARP. */
export type GuestLinkState = "linked" | "paused" | "unlinked";

/** A linked VM's listening servers by guest port; each is the caller's to serve (`http.Server#listen(server)`) and to close. */
export type GuestListeners = Map<number, Server>;

/** What the network knows of one attached VM. */
export interface GuestLinkInfo {
  vmId: string;
  ip: string;
  mac: string;
  state: GuestLinkState;
  /** The host end of its veth, while linked or paused. */
  hostIf: string | undefined;
  /** The namespace helper's pid, while linked or paused. */
  netnsPid: number | undefined;
}

interface Guest {
  ip: string;
  mac: string;
  link: GuestLink | undefined;
}

/** Bridges open in this process: two networks must not share one. */
const openBridges = new Set<string>();

/** Hatch's guest network for simulated VMs, on one bridge; built with BridgeNetwork.create. */
export class BridgeNetwork {
  private readonly guests = new Map<string, Guest>();
  private readonly queue = new KeyedQueue();
  private readonly pool: GuestAddressPool;
  private closed = false;
  private closing: Promise<void> | undefined;

  private constructor(
    readonly bridge: string,
    readonly subnet: Subnet,
    private readonly log: Logger,
  ) {
    this.pool = new GuestAddressPool(subnet);
  }

  /** Makes the bridge, or refuses (saying why) unless this network namespace holds nothing but lo and this process's own bridge networks. */
  static async create(opts: BridgeNetworkOptions): Promise<BridgeNetwork> {
    const subnet = new Subnet(opts.subnet ?? DEFAULT_BRIDGE_SUBNET);
    const bridge = opts.bridgeName ?? DEFAULT_BRIDGE_NAME;
    const bad = bridgeNameError(bridge);
    if (bad) throw new Error(bad);
    if (openBridges.has(bridge)) throw new Error(`bridge ${bridge} is in use by an open bridge network of this process`);
    openBridges.add(bridge);
    try {
      // Left by a network of this process whose close failed: ours, so cleared before the check.
      if ([bridge, ...anchorNames(bridge)].some((n) => madeByThisProcess.has(n))) await removeBridge(bridge);
      await assertBareNamespace(subnet);
      await createBridge(bridge, subnet).catch(async (err: unknown) => {
        await removeBridge(bridge).catch(() => {});
        throw new Error(`cannot create bridge ${bridge} (needs root, or CAP_NET_ADMIN in this namespace): ${(err as Error).message}`);
      });
    } catch (err) {
      openBridges.delete(bridge);
      throw err;
    }
    opts.log.info("simulator bridge network up", { bridge, subnet: subnet.cidr, gateway: subnet.gateway });
    return new BridgeNetwork(bridge, subnet, opts.log);
  }

  /** The lowest free guest address, held until release. */
  allocate(): string {
    return this.pool.allocate();
  }

  /** Holds a given guest address (a VM reloaded from a state file); false when it is already held. */
  claim(ip: string): boolean {
    return this.pool.claim(ip);
  }

  release(ip: string): void {
    this.pool.release(ip);
  }

  /** The lowest guest address no VM in `inUse` holds, even one another (sleeping) VM keeps (HATCH_SIM_REUSE_IPS). */
  reuse(inUse: ReadonlySet<string>): string {
    return this.pool.lowestOutside(inUse);
  }

  /** The VM's link as the network sees it, or undefined when it is not attached. */
  describe(vmId: string): GuestLinkInfo | undefined {
    const g = this.guests.get(vmId);
    if (!g) return undefined;
    return { vmId, ip: g.ip, mac: g.mac, state: g.link?.state ?? "unlinked", hostIf: g.link?.hostIf, netnsPid: g.link?.netnsPid };
  }

  /**
   * Gives the VM a namespace and link (eth0 = ip, default route via the bridge) and answers one
   * listening server per port, bound to ip:port inside it. `mac` defaults to 06:00 + ip's octets.
   */
  attach(vmId: string, ip: string, ports: readonly number[], opts: { mac?: string } = {}): Promise<GuestListeners> {
    return this.queue.run(vmId, async () => {
      this.assertOpen();
      if (this.guests.has(vmId)) throw new Error(`vm ${vmId} is already attached to ${this.bridge}`);
      if (!this.subnet.isGuestAddress(ip)) throw new Error(`${ip} is not a guest address of ${this.subnet.cidr}`);
      const mac = opts.mac ?? guestMac(ip);
      if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac)) throw new Error(`guest mac must be six hex octets joined by ":", got "${mac}"`);
      const g: Guest = { ip, mac, link: undefined };
      const listeners = await this.link(vmId, g, ports);
      this.guests.set(vmId, g);
      return listeners;
    });
  }

  /** As Hatch pausing a VM to snapshot it: frames dropped both ways; open connections freeze (no FIN, no RST), new connects hang. */
  pause(vmId: string): Promise<void> {
    return this.change(vmId, async (g) => {
      if (!g.link) throw new Error(`vm ${vmId} has no link to pause`);
      if (g.link.state === "linked") await g.link.pause();
    });
  }

  /** Undoes pause. Hatch never resumes a paused VM; this is for a simulated snapshot that fails before its link goes. */
  resume(vmId: string): Promise<void> {
    return this.change(vmId, async (g) => {
      if (g.link?.state !== "paused") throw new Error(`vm ${vmId} is ${g.link?.state ?? "unlinked"}, not paused`);
      await g.link.resume();
    });
  }

  /**
   * As Hatch after the snapshot (Firecracker gone, tap deleted): the link goes, and a connect to the
   * address fails with EHOSTUNREACH after ~3 s of ARP. The helper ends too: a snapshotted VM runs
   * nothing, and relink must start from a namespace where nothing from before can answer.
   */
  unlink(vmId: string): Promise<void> {
    return this.change(vmId, (g) => this.cut(g));
  }

  /**
   * As Hatch's restore: a fresh namespace and link with the same address and MAC, and new listening
   * servers. Connections from before stay in the old namespace, which has no link, so their peers
   * get a reset at their next retransmit. A VM still linked or paused is unlinked first.
   * `paused`: made during the restore, the link stays down until resume().
   */
  relink(vmId: string, ports: readonly number[], paused = false): Promise<GuestListeners> {
    return this.change(vmId, async (g) => {
      await this.cut(g);
      return this.link(vmId, g, ports, paused);
    });
  }

  /** Removes the VM's link and forgets it (the VM was deleted); unknown ids are ignored. Its address stays held until release. */
  detach(vmId: string): Promise<void> {
    return this.queue.run(vmId, async () => {
      const g = this.guests.get(vmId);
      if (!g) return;
      await this.cut(g);
      this.guests.delete(vmId);
    });
  }

  /**
   * Removes every link, helper and the bridge once the operations in flight are done. Idempotent;
   * a close that failed part way may be called again. (After a SIGKILL of the process, the helpers
   * exit as their IPC channel closes and their veths go with their namespaces; the bridge and its
   * anchor stay until this network namespace ends or `ip link del <bridge>` and `<bridge>a`.)
   */
  close(): Promise<void> {
    this.closed = true;
    this.closing ??= this.teardown().catch((err: unknown) => {
      this.closing = undefined;
      throw err;
    });
    return this.closing;
  }

  private async teardown(): Promise<void> {
    await this.queue.drain();
    await GuestNamespace.dropSpare();
    const errors: string[] = [];
    for (const [vmId, g] of this.guests) {
      await this.cut(g).then(
        () => this.guests.delete(vmId),
        (err: Error) => errors.push(`vm ${vmId}: ${err.message}`),
      );
    }
    if (errors.length === 0) {
      await removeBridge(this.bridge).then(
        () => openBridges.delete(this.bridge),
        (err: Error) => errors.push(err.message),
      );
    }
    if (errors.length > 0) throw new Error(`bridge network ${this.bridge} not fully closed: ${errors.join("; ")}`);
    this.log.info("simulator bridge network closed", { bridge: this.bridge });
  }

  private async link(vmId: string, g: Guest, ports: readonly number[], paused = false): Promise<GuestListeners> {
    assertPorts(ports);
    const started = performance.now();
    const { link, listeners } = await GuestLink.open({ bridge: this.bridge, subnet: this.subnet, ip: g.ip, mac: g.mac }, ports, paused).catch((err: Error) => {
      throw new Error(`cannot link vm ${vmId} (${g.ip}) to ${this.bridge}: ${err.message}`);
    });
    g.link = link;
    const twins = [...this.guests].filter(([id, o]) => id !== vmId && o.ip === g.ip && o.link).map(([id]) => id);
    if (twins.length > 0) this.log.warn("two linked guests share one address (as on Hatch after a hatchd restart)", { vm_id: vmId, ip: g.ip, also: twins });
    this.log.debug("simulated vm linked", { vm_id: vmId, ip: g.ip, host_if: link.hostIf, netns_pid: link.netnsPid, ms: Math.round(performance.now() - started) });
    return listeners;
  }

  private async cut(g: Guest): Promise<void> {
    const link = g.link;
    if (!link) return;
    await link.remove();
    g.link = undefined;
  }

  private change<T>(vmId: string, op: (g: Guest) => Promise<T>): Promise<T> {
    return this.queue.run(vmId, async () => {
      this.assertOpen();
      const g = this.guests.get(vmId);
      if (!g) throw new Error(`vm ${vmId} is not attached to ${this.bridge}`);
      return op(g);
    });
  }

  private assertOpen() {
    if (this.closed) throw new Error(`bridge network ${this.bridge} is closed`);
  }
}

/** Throws unless `ports` are distinct integers 1–65535 (at least one). */
function assertPorts(ports: readonly number[]): void {
  const ok = ports.length > 0 && ports.every((p) => Number.isInteger(p) && p >= 1 && p <= 65535) && new Set(ports).size === ports.length;
  if (!ok) throw new Error(`guest ports must be distinct integers between 1 and 65535, got ${JSON.stringify(ports)}`);
}
