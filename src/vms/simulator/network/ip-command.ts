/**
 * The bridge network's only way to change the kernel's network state: the `ip` and `nsenter`
 * commands (iproute2, util-linux), run as child processes so no native module is needed.
 */
import { spawn } from "node:child_process";

const COMMAND_TIMEOUT_MS = 10_000;

/** A network command that failed; the message names the command and what it printed. */
export class NetworkCommandError extends Error {
  constructor(
    readonly command: string,
    readonly stderr: string,
    why: string,
  ) {
    super(`${command}: ${why}`);
    this.name = "NetworkCommandError";
  }
}

/** Runs `cmd args…` (stdin from `input`), resolving with its stdout; rejects on a non-zero exit or a timeout. */
export function run(cmd: string, args: readonly string[], input?: string): Promise<string> {
  const shown = [cmd, ...args].join(" ");
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), COMMAND_TIMEOUT_MS);
    child.once("error", (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const why = err.code === "ENOENT" ? `${cmd} is not installed (the bridge network needs iproute2 and util-linux)` : err.message;
      reject(new NetworkCommandError(shown, stderr, why));
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) return resolve(stdout);
      const why = signal ? `killed by ${signal} (after ${COMMAND_TIMEOUT_MS} ms?)` : `exit ${code}`;
      reject(new NetworkCommandError(shown, stderr, `${why}: ${stderr.trim() || "(no output)"}`));
    });
    // A command that exits before reading its input must not turn into an unhandled EPIPE.
    child.stdin.on("error", () => {});
    child.stdin.end(input ?? "");
  });
}

/** `ip args…` in this process's network namespace. */
export const ip = (...args: string[]) => run("ip", args);

/**
 * Several `ip` commands in one process (`ip -batch -`), stopping at the first that fails; with
 * `netnsPid`, inside that process's network namespace (through nsenter).
 */
export function ipBatch(lines: readonly string[], netnsPid?: number): Promise<string> {
  const input = lines.join("\n") + "\n";
  if (netnsPid === undefined) return run("ip", ["-batch", "-"], input);
  return run("nsenter", ["-t", String(netnsPid), "-n", "ip", "-batch", "-"], input);
}

/** A link as `ip -j addr show` describes it (the fields used here). */
export interface LinkInfo {
  ifname: string;
  ifalias?: string;
  addr_info?: { family: string; local: string; prefixlen: number }[];
}

/** Every link of this network namespace with its alias (`ip -j link`) and addresses (`ip -j addr`, which omits aliases). */
export async function listLinks(): Promise<LinkInfo[]> {
  const [links, addrs] = await Promise.all([ip("-j", "link", "show"), ip("-j", "addr", "show")]);
  const byName = new Map((JSON.parse(addrs) as LinkInfo[]).map((l) => [l.ifname, l.addr_info ?? []]));
  return (JSON.parse(links) as LinkInfo[]).map((l) => ({ ...l, addr_info: byName.get(l.ifname) ?? [] }));
}

/** Deletes a link; one already gone (its namespace ended, or an earlier try removed it) is not an error. */
export async function deleteLink(name: string): Promise<void> {
  try {
    await ip("link", "del", name);
  } catch (err) {
    if (err instanceof NetworkCommandError && /Cannot find device|does not exist/i.test(err.stderr)) return;
    throw err;
  }
}
