/**
 * A headless Chromium (Debian's package, /usr/bin/chromium) driven over the DevTools protocol with
 * the `ws` client: no browser download, nothing but the binary. `*.hatch.local` resolves to
 * 127.0.0.1 inside it.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";

export const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";

/** The Chromium binary, or undefined; in CI (CI=true) a missing one is an error, never a skip. */
export function chromiumBinary(): string | undefined {
  try {
    accessSync(CHROMIUM, constants.X_OK);
    return CHROMIUM;
  } catch {
    if (process.env.CI === "true") throw new Error(`CI=true but no Chromium at ${CHROMIUM} (.ci/run installs Debian's chromium package)`);
    return undefined;
  }
}

export interface Page {
  /** Sends one DevTools command to the page and resolves with its result. */
  send<T = any>(method: string, params?: Record<string, unknown>): Promise<T>;
  /** Evaluates an expression in the page; its value (undefined while the page is between documents). */
  evaluate<T = unknown>(expression: string): Promise<T | undefined>;
}

export interface Browser {
  page: Page;
  close(): Promise<void>;
}

/** Starts Chromium with a fresh profile and attaches to its first tab. */
export async function launchChromium(bin: string): Promise<Browser> {
  const profile = mkdtempSync(join(tmpdir(), "hatch-chromium-"));
  const tmp = join(profile, "tmp");
  mkdirSync(tmp);
  const child: ChildProcess = spawn(
    bin,
    [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      `--user-data-dir=${profile}`,
      "--remote-debugging-port=0",
      "--host-resolver-rules=MAP *.hatch.local 127.0.0.1",
      "about:blank",
    ],
    // Its own process group: close() ends the renderers and helpers with it, which otherwise go on
    // writing into the profile after the browser process has exited (and leave it behind).
    // Its temporary files (the singleton socket's directory) inside the profile, removed with it.
    { stdio: ["ignore", "ignore", "pipe"], detached: true, env: { ...process.env, TMPDIR: tmp } },
  );
  let err = "";
  const endpoint = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`Chromium did not open its DevTools port within 20 s:\n${err}`)), 20_000);
    child.stderr!.on("data", (c) => {
      err += c;
      const m = /DevTools listening on (ws:\/\/\S+)/.exec(err);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`Chromium exited (${code}) before opening its DevTools port:\n${err}`));
    });
  });
  const http = new URL(endpoint);
  const targets = (await (await fetch(`http://${http.host}/json/list`)).json()) as { type: string; webSocketDebuggerUrl: string }[];
  const tab = targets.find((t) => t.type === "page");
  if (!tab) throw new Error("Chromium has no page target");
  const ws = new WebSocket(tab.webSocketDebuggerUrl, { perMessageDeflate: false });
  await new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve());
    ws.once("error", reject);
  });
  // Chromium going away (close(), or a crash the next command reports) is not an error of its own.
  ws.on("error", () => {});
  let nextId = 1;
  const pending = new Map<number, { resolve: (v: any) => void; reject: (e: Error) => void }>();
  ws.on("message", (data) => {
    const msg = JSON.parse(String(data)) as { id?: number; result?: unknown; error?: { message: string } };
    if (msg.id === undefined) return;
    const p = pending.get(msg.id);
    pending.delete(msg.id);
    if (msg.error) p?.reject(new Error(msg.error.message));
    else p?.resolve(msg.result);
  });
  const send = <T>(method: string, params: Record<string, unknown> = {}) =>
    new Promise<T>((resolve, reject) => {
      const id = nextId++;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error(`DevTools ${method} did not answer within 10 s`));
      }, 10_000);
      pending.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      ws.send(JSON.stringify({ id, method, params }));
    });
  const page: Page = {
    send,
    async evaluate<T>(expression: string) {
      try {
        const r = await send<{ result: { value?: T } }>("Runtime.evaluate", { expression, returnByValue: true });
        return r.result.value;
      } catch {
        // The context went away with a navigation: ask again later.
        return undefined;
      }
    },
  };
  return {
    page,
    async close() {
      ws.close();
      const group = -child.pid!;
      const signalGroup = (signal: NodeJS.Signals | 0) => {
        try {
          process.kill(group, signal);
          return true;
        } catch {
          return false; // no process left in the group
        }
      };
      signalGroup("SIGTERM");
      const deadline = Date.now() + 5000;
      while (signalGroup(0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      signalGroup("SIGKILL");
      // Chromium's crash handler may still be writing there for a moment: retry, and never fail a
      // test's cleanup over a temporary profile.
      try {
        rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
      } catch {
        // left in the temp directory
      }
    },
  };
}
