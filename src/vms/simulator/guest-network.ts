/**
 * The seam between the simulator's state machine and the network its VMs sit on: which address a
 * VM gets, and how its guest servers come up (a boot), freeze (a snapshot begins) and go away (a
 * sleep or a delete). Two networks:
 * - loopback (the default, no root needed): each VM on a host address 127.x.y.N; a sleeping VM
 *   refuses connections at once, and a snapshot is instant;
 * - bridge: each VM in a network namespace of its own on a Linux bridge, as on Hatch: a VM being
 *   snapshotted is a black hole, a snapshotted one unreachable after seconds of ARP
 *   (network/bridge.ts).
 */
import type { Server } from "node:net";
import type { Logger } from "../../log.ts";
import { openGuestServers } from "./guest-server.ts";
import { createIpPool, type IpPool } from "./ip-pool.ts";
import { BridgeNetwork } from "./network/bridge.ts";
import type { Entry } from "./vm-entry.ts";

export interface GuestNetwork {
  readonly kind: "loopback" | "bridge";
  /**
   * A guest address for a new VM, held until released. With `reuseOutside` (HATCH_SIM_REUSE_IPS),
   * the lowest address outside that set (the running VMs'), even one a sleeping VM keeps.
   */
  allocate(reuseOutside?: ReadonlySet<string>): Promise<string>;
  /** Holds a saved VM's address again; false when another VM or simulator holds it. */
  claim(ip: string): Promise<boolean>;
  release(ip: string): void;
  /**
   * A restore has begun: what can be made ahead is made (on the bridge, the VM's namespace, link
   * and servers, the link kept down), so `open` at the end of the restore only brings it up.
   */
  prepare?(e: Entry): Promise<void>;
  /** The VM boots: its guest servers listen on its address. */
  open(e: Entry): Promise<void>;
  /** A snapshot begins: the VM stops answering but keeps its connections (frozen) and its address. */
  pause(e: Entry): Promise<void>;
  /** The VM sleeps: nothing listens for it any more. */
  close(e: Entry): Promise<void>;
  /** The VM is deleted. */
  forget(e: Entry): Promise<void>;
  /** Lets every address and link go (the simulator closes). */
  shutdown(): Promise<void>;
}

/** Closes the VM's guest servers (every socket cut), waiting for servers of an earlier close too. */
async function closeServers(e: Entry): Promise<void> {
  const servers = e.servers;
  e.servers = undefined;
  e.bootedAt = undefined;
  if (servers) {
    const closing = servers.close();
    e.closing = closing;
    await closing;
    if (e.closing === closing) e.closing = undefined;
  } else if (e.closing) {
    await e.closing;
  }
}

/** Opens the VM's guest servers (on its address, or on `listening` handles), counting the boot. */
async function openServers(e: Entry, listening?: Parameters<typeof openGuestServers>[3]): Promise<void> {
  // Servers of an earlier boot still shutting down hold the same ports: wait for them.
  if (e.closing) await e.closing;
  const boot = e.rec.boot_count + 1;
  e.servers = await openGuestServers({ vmId: e.rec.id, ip: e.rec.guest_ip ?? "", boot }, e.rec.guest_ports, e.traffic, listening);
  e.rec.boot_count = boot;
  e.bootedAt = performance.now();
}

/** VMs on host loopback addresses `<prefix>.N`. */
export class LoopbackNetwork implements GuestNetwork {
  readonly kind = "loopback" as const;
  private readonly pool: IpPool;

  constructor(prefix: string) {
    this.pool = createIpPool(prefix);
  }

  allocate(): Promise<string> {
    return this.pool.allocate();
  }

  claim(ip: string): Promise<boolean> {
    return this.pool.claim(ip);
  }

  release(ip: string): void {
    this.pool.release(ip);
  }

  open(e: Entry): Promise<void> {
    return openServers(e);
  }

  /** Loopback has nothing to freeze: its snapshot is instant. */
  async pause(): Promise<void> {}

  close(e: Entry): Promise<void> {
    return closeServers(e);
  }

  forget(e: Entry): Promise<void> {
    return closeServers(e);
  }

  async shutdown(): Promise<void> {
    this.pool.releaseAll();
  }
}

/** Bridges made by this process so far: the next one is named after the count. */
let bridgesMade = 0;

/** VMs in network namespaces of their own on a bridge (Hatch's network); see network/bridge.ts. */
export class BridgeGuestNetwork implements GuestNetwork {
  readonly kind = "bridge" as const;
  /** How many VMs hold each address (two, once HATCH_SIM_REUSE_IPS gave a sleeping VM's away). */
  private readonly holders = new Map<string, number>();

  private constructor(private readonly bridge: BridgeNetwork) {}

  /**
   * Makes the bridge, or refuses unless this network namespace holds nothing but lo (see
   * BridgeNetwork.create). Simulators of one process (tests) each get a bridge of their own.
   */
  static async create(subnet: string, log: Logger): Promise<BridgeGuestNetwork> {
    const bridgeName = `hsbr${bridgesMade++ % 100}`;
    return new BridgeGuestNetwork(await BridgeNetwork.create({ subnet, log, bridgeName }));
  }

  async allocate(reuseOutside?: ReadonlySet<string>): Promise<string> {
    const ip = reuseOutside ? this.bridge.reuse(reuseOutside) : this.bridge.allocate();
    this.holders.set(ip, (this.holders.get(ip) ?? 0) + 1);
    return ip;
  }

  async claim(ip: string): Promise<boolean> {
    if (!this.bridge.claim(ip)) return false;
    this.holders.set(ip, 1);
    return true;
  }

  release(ip: string): void {
    const n = (this.holders.get(ip) ?? 1) - 1;
    if (n > 0) return void this.holders.set(ip, n);
    this.holders.delete(ip);
    this.bridge.release(ip);
  }

  /** VMs whose link and servers a restore made ahead, down until open(). */
  private readonly prepared = new Set<string>();

  async prepare(e: Entry): Promise<void> {
    // A second restore meanwhile replaces the first one's guest (Hatch: it deletes its tap).
    if (e.servers) await closeServers(e);
    if (!this.bridge.describe(e.rec.id)) return;
    await this.link(e, () => this.bridge.relink(e.rec.id, e.rec.guest_ports, true));
    this.prepared.add(e.rec.id);
  }

  async open(e: Entry): Promise<void> {
    const id = e.rec.id;
    if (this.prepared.delete(id) && e.servers) return this.bridge.resume(id);
    await this.link(e, () =>
      this.bridge.describe(id) ? this.bridge.relink(id, e.rec.guest_ports) : this.bridge.attach(id, e.rec.guest_ip!, e.rec.guest_ports, { mac: e.rec.guest_mac }),
    );
  }

  /** Links the VM with `make` and serves its ports on the listeners it hands over; all or nothing. */
  private async link(e: Entry, make: () => Promise<Map<number, Server>>): Promise<void> {
    if (e.servers) await closeServers(e);
    const listening = await make();
    try {
      await openServers(e, listening);
    } catch (err) {
      for (const s of listening.values()) s.close();
      await this.bridge.unlink(e.rec.id).catch(() => {});
      throw err;
    }
  }

  pause(e: Entry): Promise<void> {
    return this.bridge.pause(e.rec.id);
  }

  async close(e: Entry): Promise<void> {
    this.prepared.delete(e.rec.id);
    // The link goes first (Hatch deletes the tap): nothing the closing sockets send reaches anyone.
    if (this.bridge.describe(e.rec.id)?.state !== "unlinked") await this.bridge.unlink(e.rec.id).catch(() => {});
    await closeServers(e);
  }

  async forget(e: Entry): Promise<void> {
    await this.bridge.detach(e.rec.id);
    await closeServers(e);
  }

  shutdown(): Promise<void> {
    return this.bridge.close();
  }
}
