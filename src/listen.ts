import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { addrToUrl, type ListenAddr } from "./config.ts";

/** A listening server and how to stop it. */
export interface Listening {
  /** A URL a client on this machine can dial (wildcard binds map to loopback). */
  url: string;
  port: number;
  /** Stops accepting, ends idle keep-alive connections, and cuts the rest after the grace period. */
  close(): Promise<void>;
}

/** Listens on `addr` (port 0: any free port); resolves once bound, rejects on EADDRINUSE and the like. */
export async function listen(server: Server, addr: ListenAddr, opts: { graceMs?: number; backlog?: number } = {}): Promise<Listening> {
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host: addr.host, port: addr.port, backlog: opts.backlog }, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const graceMs = opts.graceMs ?? 10_000;
  return {
    url: addrToUrl({ host: addr.host, port }),
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
        if (graceMs <= 0) server.closeAllConnections();
        else setTimeout(() => server.closeAllConnections(), graceMs).unref();
      }),
  };
}
