/** A stand-in for Hatch's better-auth verify endpoint: `POST {"key"}` → `{"valid", "userId"}`. */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";

export interface TestVerifier {
  url: string;
  /** Key → user id; change it to add or revoke keys. */
  users: Map<string, string>;
  /** Calls answered so far. */
  readonly calls: number;
  /** Delay before each answer (a slow verifier). */
  holdMs: number;
  close(): Promise<void>;
}

/** Starts the endpoint on a free loopback port; `users` maps each valid key to its user. */
export async function startVerifier(users: Iterable<[string, string]>): Promise<TestVerifier> {
  const state = { calls: 0, holdMs: 0, users: new Map(users) };
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      state.calls++;
      let key: unknown;
      try {
        key = (JSON.parse(body) as { key?: unknown }).key;
      } catch {
        key = undefined;
      }
      const userId = typeof key === "string" ? state.users.get(key) : undefined;
      setTimeout(() => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(userId ? { valid: true, userId } : { valid: false })), state.holdMs);
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/verify`,
    users: state.users,
    get calls() {
      return state.calls;
    },
    get holdMs() {
      return state.holdMs;
    },
    set holdMs(ms: number) {
      state.holdMs = ms;
    },
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}
