/**
 * A simulated VM's network namespace, held by a small helper process. Node cannot enter another
 * network namespace, so the helper is born in a fresh one (`unshare -n node -e …`), creates each
 * listening socket there and hands it to us over its IPC channel: a socket keeps the namespace it
 * was created in, so the simulator process serves the guest's ports while the kernel routes their
 * traffic through the guest's own eth0.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { Server, Socket } from "node:net";

/**
 * The helper, as plain CommonJS with no project imports so it runs the same from src/ and from a
 * compiled dist/. It exits when the channel closes, which is also what happens when the simulator
 * dies (even by SIGKILL): a helper never outlives its simulator.
 */
const HELPER_SCRIPT = `
const net = require("node:net");
process.on("disconnect", () => process.exit(0));
process.on("message", (m) => {
  if (!m || m.op !== "listen") return;
  const server = net.createServer();
  server.once("error", (err) => process.send({ id: m.id, error: String(err.code || err.message) }));
  server.listen({ host: m.host, port: m.port, exclusive: true }, () => {
    // Our copy must close once the parent has its own, or this process would accept connections too.
    process.send({ id: m.id, ok: true }, server, () => server.close());
  });
});
process.send({ op: "ready", pid: process.pid });
`;

const START_TIMEOUT_MS = 10_000;
const LISTEN_TIMEOUT_MS = 5_000;
const END_GRACE_MS = 2_000;

interface Reply {
  id?: number;
  op?: string;
  pid?: number;
  ok?: boolean;
  error?: string;
}

/** The helper started in advance for the next link (see take). */
let spare: Promise<GuestNamespace> | undefined;

/** A helper process alive in its own network namespace; `pid` names the namespace for `ip … netns` and `nsenter`. */
export class GuestNamespace {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (s: Server) => void; reject: (e: Error) => void }>();
  private stderr = "";
  private readonly exit: Promise<void>;
  private gone = false;

  private constructor(
    private readonly child: ChildProcess,
    readonly pid: number,
  ) {
    this.exit = new Promise((resolve) => child.once("exit", () => resolve()));
    child.stderr?.setEncoding("utf8").on("data", (d: string) => (this.stderr = (this.stderr + d).slice(-2000)));
    child.on("message", (msg: Reply, handle: unknown) => this.onReply(msg, handle));
    child.once("exit", (code, signal) => {
      this.gone = true;
      const err = new Error(`guest namespace helper (pid ${pid}) exited (${signal ?? `code ${code}`})${this.stderr ? `: ${this.stderr.trim()}` : ""}`);
      for (const w of this.waiting.values()) w.reject(err);
      this.waiting.clear();
    });
    // An idle helper must not keep the simulator alive: requests ref the channel while they wait.
    child.unref();
    child.channel?.unref();
    if (child.stderr instanceof Socket) child.stderr.unref();
  }

  /**
   * A helper ready at once: the one started in advance when there is one (a new one is then
   * started for next time). Starting a helper costs a Node start-up (~0.2 s); without a spare, every
   * restore would pay it after its restore time instead of before.
   */
  static async take(): Promise<GuestNamespace> {
    const ready = spare;
    spare = GuestNamespace.start();
    spare.catch(() => {});
    const ns = await ready?.catch(() => undefined);
    return ns && !ns.gone ? ns : GuestNamespace.start();
  }

  /** Ends the helper started in advance, if any (the network closes). */
  static async dropSpare(): Promise<void> {
    const s = spare;
    spare = undefined;
    await (await s?.catch(() => undefined))?.end();
  }

  /** Starts a helper in a fresh network namespace (needs CAP_SYS_ADMIN, as `unshare -n` does). */
  static start(): Promise<GuestNamespace> {
    // NODE_OPTIONS may load a TypeScript loader or a debugger meant for the simulator, not for this script.
    const { NODE_OPTIONS: _dropped, ...env } = process.env;
    const child = spawn("unshare", ["-n", process.execPath, "-e", HELPER_SCRIPT], { stdio: ["ignore", "ignore", "pipe", "ipc"], env });
    return new Promise((resolve, reject) => {
      let stderr = "";
      const onStderr = (d: string) => (stderr += d);
      const onError = (err: Error) => fail(err.message);
      const onExit = (code: number | null, signal: string | null) => fail(`exited (${signal ?? `code ${code}`})`);
      const settle = () => {
        clearTimeout(timer);
        child.off("error", onError).off("exit", onExit);
        child.stderr?.off("data", onStderr);
      };
      const fail = (why: string) => {
        settle();
        child.kill("SIGKILL");
        reject(new Error(`cannot start a guest network namespace (unshare -n node): ${why}${stderr ? `: ${stderr.trim()}` : ""}`));
      };
      const timer = setTimeout(() => fail(`no answer within ${START_TIMEOUT_MS} ms`), START_TIMEOUT_MS);
      child.stderr?.setEncoding("utf8").on("data", onStderr);
      child.on("error", onError).on("exit", onExit);
      child.once("message", (msg: Reply) => {
        if (msg?.op !== "ready" || typeof msg.pid !== "number") return fail(`unexpected first message ${JSON.stringify(msg)}`);
        settle();
        child.on("error", () => {}); // a kill of a helper that has just exited is not worth a crash
        resolve(new GuestNamespace(child, msg.pid));
      });
    });
  }

  /** A server listening on host:port inside this namespace, now owned by the caller. */
  listen(host: string, port: number): Promise<Server> {
    if (this.gone) return Promise.reject(new Error(`guest namespace helper (pid ${this.pid}) has exited`));
    const id = this.nextId++;
    this.child.channel?.ref();
    return new Promise<Server>((resolve, reject) => {
      const timer = setTimeout(() => settle(new Error(`guest namespace helper (pid ${this.pid}) did not listen on ${host}:${port} within ${LISTEN_TIMEOUT_MS} ms`)), LISTEN_TIMEOUT_MS);
      const settle = (r: Server | Error) => {
        clearTimeout(timer);
        this.waiting.delete(id);
        if (this.waiting.size === 0) this.child.channel?.unref();
        if (r instanceof Error) reject(r);
        else resolve(r);
      };
      this.waiting.set(id, { resolve: settle, reject: settle });
      this.child.send({ op: "listen", id, host, port });
    });
  }

  private onReply(msg: Reply, handle: unknown) {
    const w = msg?.id === undefined ? undefined : this.waiting.get(msg.id);
    if (!w) {
      if (handle instanceof Server) handle.close(); // a reply that came after its timeout
      return;
    }
    if (msg.ok && handle instanceof Server) w.resolve(handle);
    else w.reject(new Error(`cannot listen in the guest namespace: ${msg.error ?? "no server handle in the reply"}`));
  }

  /** Ends the helper (SIGTERM, then SIGKILL after a grace period) and resolves once it has exited. */
  async end(): Promise<void> {
    if (this.gone) return;
    this.child.kill("SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<"late">((r) => (timer = setTimeout(() => r("late"), END_GRACE_MS)));
    if ((await Promise.race([this.exit, late])) === "late") {
      this.child.kill("SIGKILL");
      await this.exit;
    }
    clearTimeout(timer);
  }
}
