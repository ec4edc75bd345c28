/**
 * A TCP relay between the code under test and Postgres that a test can break the way networks and
 * restarts break: stall the path (a black hole: bytes neither delivered nor refused, as when packets
 * are dropped; delivered once healed, as TCP would retransmit them), or lose the server side of
 * every open connection while the client side stays open (a pooled connection left over from before
 * a database restart, which fails on its next use). The real network is never touched.
 */
import { connect, createServer, type AddressInfo, type Server, type Socket } from "node:net";

export class PgPath {
  private server: Server | undefined;
  private readonly pairs = new Set<{ client: Socket; upstream: Socket | undefined }>();
  private stalled = false;
  private waiting: (() => void)[] = [];
  /** Connections accepted so far (each is a new connection of the pool). */
  accepted = 0;

  constructor(private readonly target: { host: string; port: number }) {}

  async start(): Promise<string> {
    this.server = createServer((client) => this.accept(client));
    await new Promise<void>((r) => this.server!.listen(0, "127.0.0.1", () => r()));
    return `127.0.0.1:${(this.server!.address() as AddressInfo).port}`;
  }

  private accept(client: Socket): void {
    this.accepted += 1;
    const pair: { client: Socket; upstream: Socket | undefined } = { client, upstream: undefined };
    this.pairs.add(pair);
    client.on("error", () => {});
    client.once("close", () => {
      pair.upstream?.destroy();
      this.pairs.delete(pair);
    });
    const relay = () => {
      if (client.destroyed) return;
      const upstream = connect(this.target.port, this.target.host);
      pair.upstream = upstream;
      upstream.on("error", () => client.destroy());
      upstream.once("close", () => {
        if (pair.upstream === upstream) client.destroy();
      });
      client.pipe(upstream);
      upstream.pipe(client);
      if (this.stalled) this.pause(pair);
    };
    // A new connection during a stall gets no further than the TCP handshake, as with a dropped SYN-ACK.
    if (this.stalled) {
      client.pause();
      this.waiting.push(relay);
    } else relay();
  }

  private pause(pair: { client: Socket; upstream: Socket | undefined }): void {
    pair.client.pause();
    pair.upstream?.pause();
  }

  /** Stops moving bytes in both directions, on open and new connections. */
  stall(): void {
    this.stalled = true;
    for (const p of this.pairs) this.pause(p);
  }

  /** Moves bytes again; what was sent during the stall arrives now. */
  heal(): void {
    this.stalled = false;
    for (const p of this.pairs) {
      p.client.resume();
      p.upstream?.resume();
    }
    for (const relay of this.waiting.splice(0)) relay();
  }

  /**
   * The server forgets every open connection; their client sides stay open and silent until used,
   * then fail: with a reset (`how: "reset"`) or a plain close (`"close"`).
   */
  loseServerSide(how: "reset" | "close"): void {
    for (const p of this.pairs) {
      const up = p.upstream;
      p.upstream = undefined;
      p.client.unpipe();
      up?.unpipe();
      up?.destroy();
      p.client.removeAllListeners("data");
      p.client.on("error", () => {});
      p.client.once("data", () => (how === "reset" ? p.client.resetAndDestroy() : p.client.end()));
      p.client.resume();
    }
  }

  /** Connections open through the relay now. */
  get open(): number {
    return this.pairs.size;
  }

  async close(): Promise<void> {
    for (const p of this.pairs) {
      p.client.destroy();
      p.upstream?.destroy();
    }
    await new Promise<void>((r) => this.server?.close(() => r()) ?? r());
  }
}
