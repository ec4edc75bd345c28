/** What keeps a running Traefik honest: the hang watch that pings it, and the backoff between restarts. */
import { formatMs } from "./traefik-process.ts";

/** How often a running Traefik is pinged by the hang watch, and how long one ping may take. */
const WATCH_EVERY_MS = 1000;
const WATCH_PING_TIMEOUT_MS = 2000;
/** A run that lasted this long was healthy: the next crash restarts after the first delay again. */
const HEALTHY_RUN_MS = 60_000;

/**
 * Pings a running Traefik every second. A process that is alive but silent for the hang timeout
 * (stopped, deadlocked, starved) routes nothing and would never exit on its own: `onHang` hears of
 * it once, with why, and kills it; its exit then restarts it.
 */
export class HangWatch {
  private timer: NodeJS.Timeout | undefined;
  private okAt = 0;

  constructor(private readonly hangTimeoutMs: number) {}

  /** When the last ping was answered (Date.now() scale). */
  get lastPingOk(): number {
    return this.okAt;
  }

  /** Watches `apiUrl` while `current()` says this watch still matters. */
  start(apiUrl: string, current: () => boolean, onHang: (why: string) => void): void {
    this.okAt = Date.now();
    const tick = async () => {
      if (!current()) return;
      // A slow answer under load is still an answer: only silence for the whole timeout is a hang.
      const ok = await fetch(`${apiUrl}/ping`, { signal: AbortSignal.timeout(WATCH_PING_TIMEOUT_MS) }).then((r) => r.ok, () => false);
      if (!current()) return;
      if (ok) this.okAt = Date.now();
      else if (Date.now() - this.okAt >= this.hangTimeoutMs) return onHang(`answered no ping for ${formatMs(Date.now() - this.okAt)}`);
      this.timer = setTimeout(tick, WATCH_EVERY_MS).unref();
    };
    this.timer = setTimeout(tick, WATCH_EVERY_MS).unref();
  }

  stop(): void {
    clearTimeout(this.timer);
  }
}

/** The pause before each restart: doubled after each failure up to `max`, back to `first` after a healthy run. */
export class RestartBackoff {
  /** Restarts so far. */
  restarts = 0;
  private nextMs: number;
  private upSince = 0;

  constructor(private readonly delays: { first: number; max: number }) {
    this.nextMs = delays.first;
  }

  /** The pause the next restart will wait. */
  get next(): number {
    return this.nextMs;
  }

  /** A Traefik is up from now. */
  up(): void {
    this.upSince = Date.now();
  }

  /** It went down: a run that lasted HEALTHY_RUN_MS starts the backoff over. */
  down(): void {
    if (Date.now() - this.upSince >= HEALTHY_RUN_MS) this.nextMs = this.delays.first;
  }

  /** The pause for the restart being scheduled now; the one after it doubles. */
  take(): number {
    const delay = this.nextMs;
    this.nextMs = Math.min(this.delays.max, this.nextMs * 2);
    return delay;
  }
}

export interface RestartLoopDeps {
  backoff: RestartBackoff;
  /** True while the front is down and waiting to be restarted (a stop ends the loop). */
  isDown(): boolean;
  /** Moves the port if it was taken, then launches a Traefik that routes with our config (or rejects). */
  relaunch(): Promise<void>;
  /** The new Traefik routes: the front is up again. */
  onUp(restart: number, downMs: number): void;
  log: { error(msg: string, fields?: Record<string, unknown>): void };
}

/** Restarts a front that went down, after the backoff's pause, again and again until one routes or the front is stopped. */
export class RestartLoop {
  /** Why the front is down, for /readyz. */
  reason = "";
  private downSince = 0;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;

  constructor(private readonly deps: RestartLoopDeps) {}

  /** The front went down at `since` (Date.now() scale) because of `why`: restart it after the pause. */
  begin(why: string, since: number): void {
    this.downSince = since;
    this.schedule(why);
  }

  /** No more restarts; resolves once a restart under way has given up or finished. */
  async cancel(): Promise<void> {
    clearTimeout(this.timer);
    await this.running?.catch(() => {});
  }

  /** Synchronous cancel (a forced exit). */
  cancelNow(): void {
    clearTimeout(this.timer);
  }

  private schedule(why: string): void {
    const delay = this.deps.backoff.take();
    this.reason = `${why}; restart ${this.deps.backoff.restarts + 1} in ${formatMs(delay)}`;
    this.timer = setTimeout(() => {
      this.running = this.restart(why).finally(() => (this.running = undefined));
    }, delay);
  }

  private async restart(why: string): Promise<void> {
    if (!this.deps.isDown()) return;
    const n = ++this.deps.backoff.restarts;
    this.reason = `${why}; restarting (restart ${n})`;
    try {
      await this.deps.relaunch();
    } catch (err) {
      if (!this.deps.isDown()) return;
      this.deps.log.error("traefik restart failed", { restart: n, error: err, next_in_ms: this.deps.backoff.next });
      this.schedule(`traefik restart ${n} failed: ${(err as Error).message}`);
      return;
    }
    // A stop may have come while it started: that Traefik is stopped there.
    if (!this.deps.isDown()) return;
    this.deps.onUp(n, Date.now() - this.downSince);
  }
}
