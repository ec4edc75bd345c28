/** The CLI as people run it: `node bin/hatch-proxy.js …`, its exit code and both streams. */
import { execFile } from "node:child_process";
import { BIN } from "./front.ts";

export interface CliRun {
  /** The exit code; -1 when a signal (or the timeout) ended it. */
  code: number;
  out: string;
  err: string;
}

/**
 * Runs the CLI with only PATH, HOME and the variables given (nothing leaks in from the test's
 * environment), in `cwd` (default: the test's own).
 */
export function runCli(args: string[], opts: { cwd?: string; env?: Record<string, string>; timeoutMs?: number } = {}): Promise<CliRun> {
  const env = { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? opts.cwd ?? "/", ...opts.env };
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { cwd: opts.cwd, env, timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 << 20 }, (error, stdout, stderr) =>
      resolve({ code: error ? (typeof error.code === "number" ? error.code : -1) : 0, out: stdout, err: stderr }),
    );
  });
}
