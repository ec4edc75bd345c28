/** The VM platform as this project sees it: Hatch's VM API, or the built-in simulator. */

export const VM_STATES = ["starting", "running", "stopping", "stopped", "snapshotted", "error"] as const;
export type VmState = (typeof VM_STATES)[number];

/** Hatch's VM object (the fields this project reads; platforms may send more). */
export interface Vm {
  id: string;
  state: VmState;
  /** Absent for a VM made without a network (`enable_network: false`): it cannot be routed to. */
  guest_ip?: string;
  image_id?: string;
  vcpu_count?: number;
  mem_mib?: number;
  guest_mac?: string;
  ssh_port?: number;
  enable_network?: boolean;
  created_at?: string;
  updated_at?: string;
  [extra: string]: unknown;
}

/** States from which a request may wake the VM (when the route has auto_wake). */
export const SLEEPING_STATES: readonly VmState[] = ["snapshotted", "stopped"];

export interface CallOptions {
  /**
   * The caller's own API key, forwarded so the platform scopes VMs to that user (per-user auth).
   * Absent: the key of the VM's owner where hatch-proxy keeps one, else the service key (HATCH_API_KEY).
   */
  userKey?: string | undefined;
  signal?: AbortSignal | undefined;
}

export interface VmPlatform {
  /** "hatch" (REST client) or "simulator". */
  readonly kind: "hatch" | "simulator";
  /** The VM, or undefined when the platform says definitely that it does not exist (404). */
  get(id: string, opts?: CallOptions): Promise<Vm | undefined>;
  /** Every VM visible to the call's key (without one: every VM hatch-proxy follows). */
  list(opts?: CallOptions): Promise<Vm[]>;
  /**
   * Brings a sleeping VM to `running`: restore for `snapshotted`, start for `stopped`.
   * Resolves with the VM once the platform reports it running. Throws WakeError.
   */
  wake(id: string, opts?: CallOptions & { timeoutMs?: number }): Promise<Vm>;
  /**
   * Puts a running VM to sleep: `snapshot` (memory kept, fast restore) or `stop`. Resolves with the
   * VM in its new state. Throws SleepError (or PlatformUnavailableError when the platform cannot be asked).
   */
  sleep(id: string, action: SleepAction, opts?: CallOptions & { timeoutMs?: number }): Promise<Vm>;
  /** Whether a stopped VM can be started again (Hatch has no start call; the simulator has one unless told otherwise). */
  canStart?(): Promise<boolean>;
}

/**
 * Hatch answers a state conflict with a 500 and Go's text (`vm must be running to snapshot (current
 * state: stopped)`): such an answer is a conflict, not a failure of the platform.
 */
export function isStateConflictText(text: string): boolean {
  return /^vm must be [a-z ]+ to [a-z]+ \(current state: [a-z]+\)$/.test(text);
}

/** How a VM is put to sleep (HATCH_IDLE_ACTION). */
export type SleepAction = "snapshot" | "stop";

/**
 * A sleep the platform refused or failed: `not_found`, `conflict` (not running), `limit` (the VM has
 * as many snapshots as the platform keeps: Hatch's 403 `snapshot limit reached (10/10)`), `failed`,
 * `timeout`.
 */
export class SleepError extends Error {
  constructor(
    readonly reason: "not_found" | "conflict" | "limit" | "failed" | "timeout",
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "SleepError";
  }
}

/** The platform could not be asked (timeout, connection refused, 5xx): not an answer about the VM. */
export class PlatformUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "PlatformUnavailableError";
  }
}

/** The platform refused the key of the call (401): it said nothing about the VM. */
export class CredentialRejectedError extends PlatformUnavailableError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "CredentialRejectedError";
  }
}

/**
 * Why hatch-proxy holds no key that may act on a VM (a key-scoped platform answers a VM's calls only
 * for its owner): `no_credential` (the owner of its routes has not called hatch-proxy's API with a key
 * since), `credential_rejected` (the platform refused the owner's last key), `unowned` (routes without
 * an owner, and HATCH_API_KEY cannot see the VM), `no_credentials_key` (HATCH_CREDENTIALS_KEY unset).
 * Not an answer about the VM either: nothing is deleted because of it.
 */
export class VmAccessError extends PlatformUnavailableError {
  constructor(
    readonly reason: "no_credential" | "credential_rejected" | "unowned" | "no_credentials_key",
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "VmAccessError";
  }
}

/**
 * A wake that did not happen. `reason`: `not_found` (VM gone), `conflict` (state does not allow it,
 * e.g. "vm must be snapshotted to restore (current state: running)"), `unsupported` (the platform
 * cannot start a stopped VM), `failed` (the platform tried and failed), `timeout`.
 */
export class WakeError extends Error {
  constructor(
    readonly reason: "not_found" | "conflict" | "unsupported" | "failed" | "timeout",
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "WakeError";
  }
}

/** The cached view of VM states that the Traefik config and the sidecar read. */
export interface VmDirectory {
  /** Last known state of a VM (undefined: never seen, or gone). */
  peek(id: string): Vm | undefined;
  /** Every known VM. */
  all(): ReadonlyMap<string, Vm>;
  /** Asks the platform now and updates the cache (undefined: the VM is gone). */
  refreshOne(id: string): Promise<Vm | undefined>;
  /** Re-reads every VM from the platform. */
  refreshAll(): Promise<void>;
  /** Records a state this service caused (after a wake, etc.) without waiting for the next poll. */
  record(vm: Vm): void;
  /** Called after any change of any VM's state (or a VM appearing/disappearing). */
  onChange(listener: () => void): () => void;
  /** Monotonic counter bumped on every change (cheap cache key). */
  readonly version: number;
  /** True once one full refresh has succeeded. */
  readonly ready: boolean;
  /** Starts periodic polling. */
  start(): void;
  stop(): void;
}
