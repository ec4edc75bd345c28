/**
 * The seam between the simulator's state machine and the network its VMs sit on: which address a
 * VM gets, and how its guest servers come up (a boot) and go away (a sleep or a delete). The
 * loopback network here gives each VM an address 127.x.y.N of the host, where a sleeping VM
 * refuses connections at once.
 */
import type { Logger } from "../../log.ts";
import { openGuestServers } from "./guest-server.ts";
import { createIpPool, type IpPool } from "./ip-pool.ts";
import type { Entry } from "./vm-entry.ts";

export interface GuestNetwork {
  /** A free guest address for a new VM, held until released. */
  allocate(): Promise<string>;
  /** Holds a saved VM's address again; false when another simulator holds it. */
  claim(ip: string): Promise<boolean>;
  release(ip: string): void;
  /** The VM boots: its guest servers listen on its address. */
  open(e: Entry): Promise<void>;
  /** The VM sleeps or goes away: nothing listens for it any more. */
  close(e: Entry): Promise<void>;
  /** Lets every address go (the simulator closes). */
  releaseAll(): void;
}

/** VMs on host loopback addresses `<prefix>.N`. */
export class LoopbackNetwork implements GuestNetwork {
  private readonly pool: IpPool;

  constructor(prefix: string, _log?: Logger) {
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

  releaseAll(): void {
    this.pool.releaseAll();
  }

  async open(e: Entry): Promise<void> {
    // Servers of an earlier boot still shutting down hold the same ports: wait for them.
    if (e.closing) await e.closing;
    const boot = e.rec.boot_count + 1;
    e.servers = await openGuestServers({ vmId: e.rec.id, ip: e.rec.guest_ip, boot }, e.rec.guest_ports, e.traffic);
    e.rec.boot_count = boot;
    e.bootedAt = performance.now();
  }

  async close(e: Entry): Promise<void> {
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
}
