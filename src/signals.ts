/**
 * Runs a service until SIGINT/SIGTERM, then stops it within a budget; a second signal exits at
 * once. Used by every long-lived command (`start`, `api`, `wake`, `sim`).
 */
import type { Logger } from "./log.ts";

/** What a service command leaves running: its graceful stop. */
export type Running = () => Promise<void>;

/**
 * Registers a synchronous last resort that ends a child process which must not outlive a forced
 * exit (our Traefik). Registered as soon as the child can exist, so a forced exit in the middle of
 * the start does not leave it behind either.
 */
export type AtForcedExit = (kill: () => void) => void;

/** The longest a shutdown may take; past it the process exits anyway (and says so). */
const SHUTDOWN_BUDGET_MS = 5000;

/**
 * Starts with `start`, then waits for SIGINT/SIGTERM and stops within SHUTDOWN_BUDGET_MS; a second
 * signal exits at once. The handlers are in place before the start: a signal that comes while it
 * runs (or the moment the banner is out) stops what was started once the start is done, instead of
 * killing the process with nothing stopped.
 */
export async function runUntilSignal(log: Logger, start: (atForcedExit: AtForcedExit) => Promise<Running>): Promise<number> {
  let running: Running | undefined;
  const lastResorts: (() => void)[] = [];
  let pending: NodeJS.Signals | undefined;
  let stopping = false;
  let finish: (code: number) => void = () => {};
  const finished = new Promise<number>((resolve) => (finish = resolve));
  const forceExit = (code: number) => {
    for (const kill of lastResorts) kill();
    process.exit(code);
  };
  const stop = (r: Running, signal: NodeJS.Signals) => {
    const overdue = setTimeout(() => {
      log.error("shutdown did not finish in time: exiting now", { budget_ms: SHUTDOWN_BUDGET_MS });
      forceExit(1);
    }, SHUTDOWN_BUDGET_MS);
    overdue.unref();
    const began = Date.now();
    r().then(
      () => {
        clearTimeout(overdue);
        log.info("stopped", { ms: Date.now() - began, signal });
        finish(0);
      },
      (err) => {
        clearTimeout(overdue);
        log.error("shutdown failed", { error: err });
        finish(1);
      },
    );
  };
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn("second signal: exiting now", { signal });
      forceExit(130);
    }
    stopping = true;
    log.info("stopping: closing connections; requests in flight get a moment to finish", { signal, budget_ms: SHUTDOWN_BUDGET_MS, ...(!running && { after_start: true }) });
    if (running) stop(running, signal);
    else pending = signal;
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  running = await start((kill) => lastResorts.push(kill));
  if (pending) stop(running, pending);
  return finished;
}

