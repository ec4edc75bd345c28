/**
 * The network the tests' simulators put VMs on: loopback by default; `bridge` when the suite runs
 * inside a network namespace of its own (scripts/netns-suites.mjs sets HATCH_TEST_SIM_NETWORK), as
 * Hatch's network behaves (a VM being snapshotted is a black hole, a snapshotted one unreachable).
 */
import type { SimulatorOptions } from "../../src/vms/simulator/index.ts";
import { bridgeSubnetFor } from "../../src/vms/simulator/network/subnet.ts";

export const simNetwork: "loopback" | "bridge" = process.env.HATCH_TEST_SIM_NETWORK === "bridge" ? "bridge" : "loopback";

/**
 * Simulator options for the network under test. Each test file's simulators use their own
 * loopback prefix `127.a.b`; on the bridge they get the subnet `10.a.b.0/24`, so two simulators of
 * one process never share a bridge subnet.
 */
export function simNetworkOptions(ipPrefix: string): Pick<SimulatorOptions, "network" | "subnet"> {
  return simNetwork === "bridge" ? { network: "bridge", subnet: bridgeSubnetFor(ipPrefix) } : {};
}
