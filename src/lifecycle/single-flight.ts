/**
 * The wake bookkeeping, free of sockets so it can be unit-tested: one shared promise per key
 * (a VM wakes once however many requests arrive) and a bounded count of requests held per key.
 */

/** What the function behind a flight can see while it runs. */
export interface Flight {
  readonly key: string;
  /** How many callers have shared this flight so far (the first one included). */
  readonly joined: number;
}

/**
 * Concurrent `run(key, fn)` calls share one execution of `fn`. The entry is dropped as soon as it
 * settles, so a failure is never cached: the next call after a failed wake tries again.
 */
export class SingleFlight<T> {
  private readonly flights = new Map<string, { promise: Promise<T>; info: { key: string; joined: number } }>();

  /** Joins the flight for `key`, starting it with `fn` when none is running. */
  run(key: string, fn: (flight: Flight) => Promise<T>): Promise<T> {
    const current = this.flights.get(key);
    if (current) {
      current.info.joined += 1;
      return current.promise;
    }
    const info = { key, joined: 1 };
    // The entry must exist before fn runs, so a synchronous re-entry from fn joins instead of forking.
    let settle!: { resolve: (v: T) => void; reject: (e: unknown) => void };
    const promise = new Promise<T>((resolve, reject) => (settle = { resolve, reject }));
    this.flights.set(key, { promise, info });
    const forget = () => {
      if (this.flights.get(key)?.promise === promise) this.flights.delete(key);
    };
    let started: Promise<T>;
    try {
      started = Promise.resolve(fn(info));
    } catch (err) {
      started = Promise.reject(err);
    }
    started.then(
      (v) => {
        forget();
        settle.resolve(v);
      },
      (e) => {
        forget();
        settle.reject(e);
      },
    );
    return promise;
  }

  /** True while a flight for `key` is running. */
  has(key: string): boolean {
    return this.flights.has(key);
  }

  /** Number of flights running. */
  get size(): number {
    return this.flights.size;
  }
}

/**
 * Counts the requests held per key and refuses one more past `max` (the waiter cap per VM).
 * `onChange` gets the total across keys (the waiters gauge).
 */
export class HoldCounter {
  private readonly counts = new Map<string, number>();
  private sum = 0;

  constructor(
    private readonly max: number,
    private readonly onChange: (total: number) => void = () => {},
  ) {}

  /** Takes a slot for `key`; returns its (idempotent) release, or undefined when `key` is full. */
  acquire(key: string): (() => void) | undefined {
    const n = this.counts.get(key) ?? 0;
    if (n >= this.max) return undefined;
    this.counts.set(key, n + 1);
    this.sum += 1;
    this.onChange(this.sum);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.counts.get(key) ?? 1) - 1;
      if (left > 0) this.counts.set(key, left);
      else this.counts.delete(key);
      this.sum -= 1;
      this.onChange(this.sum);
    };
  }

  /** Requests currently held for `key`. */
  count(key: string): number {
    return this.counts.get(key) ?? 0;
  }

  /** Requests currently held across all keys. */
  get total(): number {
    return this.sum;
  }
}
