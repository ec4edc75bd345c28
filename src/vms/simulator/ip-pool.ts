/**
 * Guest IP allocation for simulated VMs: `<prefix>.1` … `<prefix>.254`, then the next third octet.
 *
 * Several simulators may run on one machine at once (parallel test files, a dev server). A VM's
 * TCP ports are closed while it sleeps, so "is the port free?" cannot tell whether an address is
 * taken. Each allocated address therefore holds a UDP socket on a fixed port as a lease, which
 * any simulator (in any process) sees as EADDRINUSE, and which never affects the TCP behaviour.
 */
import { createSocket, type Socket } from "node:dgram";

const LEASE_PORT = 65_535;
const PER_OCTET = 254;

export interface IpPool {
  /** A free address (lowest first), leased until `release`. */
  allocate(): Promise<string>;
  /** Leases an address read back from a state file; false when another simulator holds it. */
  claim(ip: string): Promise<boolean>;
  release(ip: string): void;
  releaseAll(): void;
}

/** A pool over `<prefix>.N` with `prefix` = three octets such as "127.0.1". */
export function createIpPool(prefix: string): IpPool {
  const m = /^127\.(\d{1,3})\.(\d{1,3})$/.exec(prefix);
  if (!m || Number(m[1]) > 255 || Number(m[2]) > 255) throw new Error(`ip prefix must be three loopback octets such as 127.0.1, got "${prefix}"`);
  const second = Number(m[1]);
  const firstThird = Number(m[2]);
  const leases = new Map<string, Socket | null>();
  const capacity = (256 - firstThird) * PER_OCTET;
  const ipAt = (i: number) => `127.${second}.${firstThird + Math.floor(i / PER_OCTET)}.${(i % PER_OCTET) + 1}`;

  const claim = async (ip: string): Promise<boolean> => {
    if (leases.has(ip)) return false;
    leases.set(ip, null); // reserve synchronously so concurrent allocations skip it
    const socket = await bindLease(ip);
    if (!socket) {
      leases.delete(ip);
      return false;
    }
    if (!leases.has(ip)) {
      // released while binding
      socket.close();
      return false;
    }
    leases.set(ip, socket);
    return true;
  };

  return {
    claim,
    async allocate() {
      for (let i = 0; i < capacity; i++) {
        const ip = ipAt(i);
        if (!leases.has(ip) && (await claim(ip))) return ip;
      }
      throw new Error(`no free guest IP left after ${prefix}.1`);
    },
    release(ip) {
      const socket = leases.get(ip);
      leases.delete(ip);
      socket?.close();
    },
    releaseAll() {
      for (const socket of leases.values()) socket?.close();
      leases.clear();
    },
  };
}

function bindLease(ip: string): Promise<Socket | undefined> {
  return new Promise((resolve) => {
    const socket = createSocket({ type: "udp4", reuseAddr: false });
    socket.once("error", () => {
      socket.close();
      resolve(undefined);
    });
    socket.bind({ address: ip, port: LEASE_PORT, exclusive: true }, () => {
      socket.removeAllListeners("error");
      socket.on("error", () => {});
      socket.unref();
      resolve(socket);
    });
  });
}
