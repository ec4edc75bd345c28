/**
 * The bridge network's IPv4 subnet and the guest addresses handed out in it: the first address is
 * the bridge's (the guests' gateway, as Hatch's 172.16.0.1 on fcbr0), the rest up to the last
 * before broadcast go to guests, lowest free first.
 */

const MIN_PREFIX = 16;
const MAX_PREFIX = 29;

export const ipToInt = (ip: string): number => ip.split(".").reduce((n, o) => n * 256 + Number(o), 0);
export const intToIp = (n: number): string => [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join(".");
const isIpv4 = (s: string) => /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.test(s) && s.split(".").every((o) => Number(o) <= 255 && String(Number(o)) === o);

/**
 * The bridge subnet that stands for a loopback prefix `127.a.b`: `10.a.b.0/24`. Tests and benchmarks
 * give each simulator a prefix of its own; on the bridge this keeps their subnets apart the same way.
 */
export const bridgeSubnetFor = (loopbackPrefix: string): string => {
  const [, a, b] = loopbackPrefix.split(".");
  return `10.${a}.${b}.0/24`;
};

/** A parsed `a.b.c.d/len` with len 16–29 (a /16 already holds 65,533 guests; below /29 no guest fits beside the bridge). */
export class Subnet {
  readonly network: number;
  readonly prefixLength: number;

  constructor(readonly cidr: string) {
    const [addr, len, ...rest] = cidr.split("/");
    const prefixLength = Number(len);
    if (rest.length > 0 || addr === undefined || !isIpv4(addr) || !/^\d+$/.test(len ?? "") || prefixLength < MIN_PREFIX || prefixLength > MAX_PREFIX) {
      throw new Error(`bridge subnet must be an IPv4 network a.b.c.d/len with len ${MIN_PREFIX}–${MAX_PREFIX}, got "${cidr}"`);
    }
    const network = ipToInt(addr);
    if (network % 2 ** (32 - prefixLength) !== 0) {
      throw new Error(`bridge subnet "${cidr}" has host bits set; the network is ${intToIp(network - (network % 2 ** (32 - prefixLength)))}/${prefixLength}`);
    }
    this.network = network;
    this.prefixLength = prefixLength;
  }

  /** The bridge's own address (first usable). */
  get gateway(): string {
    return intToIp(this.network + 1);
  }

  get firstGuest(): number {
    return this.network + 2;
  }

  /** The last guest address (the one before broadcast). */
  get lastGuest(): number {
    return this.network + 2 ** (32 - this.prefixLength) - 2;
  }

  contains(ip: string): boolean {
    if (!isIpv4(ip)) return false;
    const n = ipToInt(ip);
    return n >= this.network && n < this.network + 2 ** (32 - this.prefixLength);
  }

  /** True when `ip` may be given to a guest (inside, not the network, bridge or broadcast address). */
  isGuestAddress(ip: string): boolean {
    if (!this.contains(ip)) return false;
    const n = ipToInt(ip);
    return n >= this.firstGuest && n <= this.lastGuest;
  }

  /** True when the two networks share an address. */
  overlaps(ip: string, prefixLength: number): boolean {
    if (!isIpv4(ip)) return false;
    const len = Math.min(prefixLength, this.prefixLength);
    const size = 2 ** (32 - len);
    return Math.floor(ipToInt(ip) / size) === Math.floor(this.network / size);
  }
}

/** Guest addresses of one subnet held by this process's VMs (in memory: the bridge and its guests live and die with the process). */
export class GuestAddressPool {
  private readonly held = new Set<number>();

  constructor(private readonly subnet: Subnet) {}

  /** The lowest free guest address, now held. */
  allocate(): string {
    for (let n = this.subnet.firstGuest; n <= this.subnet.lastGuest; n++) {
      if (!this.held.has(n)) {
        this.held.add(n);
        return intToIp(n);
      }
    }
    throw new Error(`no free guest address left in ${this.subnet.cidr}`);
  }

  /** Holds a given address (a VM reloaded from a state file keeps its IP); false when it is already held. */
  claim(ip: string): boolean {
    if (!this.subnet.isGuestAddress(ip)) throw new Error(`${ip} is not a guest address of ${this.subnet.cidr} (${intToIp(this.subnet.firstGuest)}–${intToIp(this.subnet.lastGuest)})`);
    const n = ipToInt(ip);
    if (this.held.has(n)) return false;
    this.held.add(n);
    return true;
  }

  release(ip: string): void {
    if (this.subnet.contains(ip)) this.held.delete(ipToInt(ip));
  }

  /**
   * The lowest guest address outside `inUse`, held whether or not it already was: Hatch after a
   * hatchd restart, whose allocator forgets the addresses snapshotted VMs keep (HATCH_SIM_REUSE_IPS).
   */
  lowestOutside(inUse: ReadonlySet<string>): string {
    for (let n = this.subnet.firstGuest; n <= this.subnet.lastGuest; n++) {
      const ip = intToIp(n);
      if (inUse.has(ip)) continue;
      this.held.add(n);
      return ip;
    }
    throw new Error(`no free guest address left in ${this.subnet.cidr}`);
  }
}
