/**
 * The ports a simulated VM serves. Its guest address is a loopback address of the host, so any
 * other port of it reaches whatever the host runs there (a service bound to 0.0.0.0 answers on
 * every 127.x address): a route must never be dialed there. A real VM's guest network is its own
 * boundary, so this applies only to VMs that list their ports, which the simulator's do.
 */
import type { Vm } from "./platform.ts";

/** False when `vm` is a simulated VM (it lists `guest_ports`) that does not serve `port`. */
export function servesPort(vm: Vm, port: number): boolean {
  const ports = vm.guest_ports;
  return !Array.isArray(ports) || ports.includes(port);
}
