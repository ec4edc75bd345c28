/**
 * One VM's link to the bridge while it has one: the namespace helper and the veth pair, from the
 * moment its listeners exist until the link is removed (Hatch: Firecracker and its tap).
 */
import type { Server } from "node:net";
import { GuestNamespace } from "./guest-namespace.ts";
import { createGuestLink, forgetNeighbour, removeGuestLink, reserveHostVethName, setHostEnd } from "./links.ts";
import type { Subnet } from "./subnet.ts";

export interface GuestLinkSpec {
  bridge: string;
  subnet: Subnet;
  ip: string;
  mac: string;
}

export class GuestLink {
  private paused = false;

  private constructor(
    private readonly spec: GuestLinkSpec,
    readonly hostIf: string,
    private readonly ns: GuestNamespace,
  ) {}

  /**
   * A fresh namespace and veth for the guest, with one listening server per port inside it. The
   * host end comes up only once every port listens, so nothing ever finds the guest refusing;
   * `paused`: it stays down (made during a restore, up with resume() when the restore ends).
   * All or nothing: on failure, what was made is removed.
   */
  static async open(spec: GuestLinkSpec, ports: readonly number[], paused = false): Promise<{ link: GuestLink; listeners: Map<number, Server> }> {
    const ns = await GuestNamespace.take();
    const link = new GuestLink(spec, reserveHostVethName(spec.bridge), ns);
    const listeners = new Map<number, Server>();
    try {
      await createGuestLink({ ...spec, hostIf: link.hostIf, netnsPid: ns.pid });
      for (const port of ports) listeners.set(port, await ns.listen(spec.ip, port));
      if (paused) link.paused = true;
      else await link.up();
      return { link, listeners };
    } catch (err) {
      for (const s of listeners.values()) s.close();
      await link.remove().catch(() => {}); // the first error says more than a failed cleanup
      throw err;
    }
  }

  get netnsPid(): number {
    return this.ns.pid;
  }

  get state(): "linked" | "paused" {
    return this.paused ? "paused" : "linked";
  }

  /** Host end down: frames are dropped both ways while every socket stays as it is. */
  async pause(): Promise<void> {
    await setHostEnd(this.hostIf, false);
    this.paused = true;
  }

  async resume(): Promise<void> {
    await this.up();
    this.paused = false;
  }

  /** Host end up, and no ARP entry left from while the guest could not be reached. */
  private async up(): Promise<void> {
    await setHostEnd(this.hostIf, true);
    await forgetNeighbour(this.spec.bridge, this.spec.ip);
  }

  /** Deletes the veth pair (and the bridge's ARP entry for the guest), then ends the helper, even when the first step failed. */
  async remove(): Promise<void> {
    try {
      await removeGuestLink(this.spec.bridge, this.hostIf, this.spec.ip);
    } finally {
      await this.ns.end();
    }
  }
}
