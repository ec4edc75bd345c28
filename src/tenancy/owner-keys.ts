/**
 * The API keys hatch-proxy keeps for route owners, so it can follow, wake and sleep their VMs on a
 * platform that answers a VM's calls only for its owner (Hatch has no admin key). A key is taken
 * when its owner calls the route API (after the verifier accepted it), replaced when they call with
 * another one, sealed in the database with HATCH_CREDENTIALS_KEY, and dropped with the owner's last
 * route (the database does that: drizzle/0005). Keys live in memory only as long as they are used.
 */
import type { Database } from "../db/client.ts";
import { getCredential, ownerHasRoutes, routedOwners, storeCredential, type StoredCredential } from "../db/credentials.repo.ts";
import type { Logger } from "../log.ts";
import { VmAccessError } from "../vms/platform.ts";
import { CredentialVault, SealBrokenError } from "./vault.ts";

/** A key read from the database is trusted this long before it is read again (another replica may have replaced it). */
const KEY_TTL_MS = 60_000;
/** A key the platform refused is not sent again for this long (unless its owner brings another). */
const REJECTED_TTL_MS = 60_000;
const MAX_CACHED = 100_000;

export interface OwnerView {
  owner: string;
  /** The VMs the owner's routes name. */
  vmIds: string[];
  /** The owner's key, or why there is none to use. */
  access: { key: string } | { problem: VmAccessError };
}

interface Cached {
  digest: string;
  key: string;
  at: number;
}

export interface OwnerKeysOptions {
  database: Database;
  /** Undefined when HATCH_CREDENTIALS_KEY is unset: nothing is kept, and owners' VMs cannot be reached. */
  vault: CredentialVault | undefined;
  log: Logger;
  now?: () => number;
}

export class OwnerKeys {
  private readonly keys = new Map<string, Cached>();
  private readonly refused = new Map<string, { digest: string; at: number }>();
  private readonly brokenLogged = new Set<string>();
  private readonly now: () => number;

  constructor(private readonly opts: OwnerKeysOptions) {
    this.now = opts.now ?? Date.now;
  }

  /** False when HATCH_CREDENTIALS_KEY is unset. */
  get enabled(): boolean {
    return this.opts.vault !== undefined;
  }

  /**
   * Keeps `key` for `owner` (a call the verifier accepted), replacing an older one, if the owner has a
   * route. `created`: the owner has just created one (always written). Never throws: a key not kept
   * now is kept at the owner's next call.
   */
  async offer(owner: string, key: string, created = false): Promise<void> {
    const vault = this.opts.vault;
    if (!vault || !owner) return;
    const digest = vault.digest(key);
    const now = this.now();
    const cached = this.keys.get(owner);
    if (cached?.digest === digest && now - cached.at < KEY_TTL_MS) return;
    try {
      // A read first: most calls of a user without routes then write nothing. (Not remembered: their
      // routes may be imported or made by another replica a moment later.)
      if (!created && !(await ownerHasRoutes(this.opts.database, owner))) return;
      const kept = await storeCredential(this.opts.database, { owner, sealed: vault.seal(owner, key), keyDigest: digest, keyId: vault.keyId });
      if (!kept) {
        this.keys.delete(owner);
        return;
      }
      this.trim(this.keys);
      this.keys.set(owner, { digest, key, at: now });
      if (this.refused.get(owner)?.digest !== digest) this.refused.delete(owner);
      if (cached?.digest !== digest) this.opts.log.info("route owner's key kept", { owner, replaced: cached !== undefined });
    } catch (err) {
      this.opts.log.warn("route owner's key not kept; kept at their next call", { owner, err });
    }
  }

  /** The key to act for `owner` with, or the VmAccessError that says why there is none. */
  async keyOf(owner: string): Promise<{ key: string } | { problem: VmAccessError }> {
    const vault = this.opts.vault;
    if (!vault) return { problem: noCredentialsKey() };
    const cached = this.keys.get(owner);
    if (cached && this.now() - cached.at < KEY_TTL_MS) return this.usable(owner, cached);
    let stored: StoredCredential | undefined;
    try {
      stored = await getCredential(this.opts.database, owner);
    } catch (err) {
      // The database is away: the key read last is still the owner's best.
      if (cached) return this.usable(owner, cached);
      throw err;
    }
    if (!stored) {
      this.keys.delete(owner);
      return { problem: noCredential() };
    }
    const opened = this.openStored(stored);
    if (!opened) return { problem: noCredential() };
    return this.usable(owner, opened);
  }

  /** Every owner with routes, the VMs they route and their key (one query: the VM sync's view). */
  async owners(): Promise<OwnerView[]> {
    const rows = await routedOwners(this.opts.database);
    return rows.map((r) => {
      if (!this.opts.vault) return { owner: r.owner, vmIds: r.vmIds, access: { problem: noCredentialsKey() } };
      if (!r.credential) return { owner: r.owner, vmIds: r.vmIds, access: { problem: noCredential() } };
      const cached = this.keys.get(r.owner);
      const entry = cached?.digest === r.credential.keyDigest ? { ...cached, at: this.now() } : this.openStored(r.credential);
      if (!entry) return { owner: r.owner, vmIds: r.vmIds, access: { problem: noCredential() } };
      this.keys.set(r.owner, entry);
      return { owner: r.owner, vmIds: r.vmIds, access: this.usable(r.owner, entry) };
    });
  }

  /** The platform refused `owner`'s `key`: it is not sent again until they bring another (or a minute passes). */
  refusedBy(owner: string, key: string): void {
    const vault = this.opts.vault;
    if (!vault) return;
    const digest = vault.digest(key);
    if (this.refused.get(owner)?.digest !== digest) this.opts.log.warn("the VM platform refused a route owner's kept key; their VMs wait for their next call with a current key", { owner });
    this.trim(this.refused);
    this.refused.set(owner, { digest, at: this.now() });
    // Another replica may hold a newer key: read it again next time.
    const cached = this.keys.get(owner);
    if (cached) this.keys.set(owner, { ...cached, at: 0 });
  }

  private usable(owner: string, entry: Cached): { key: string } | { problem: VmAccessError } {
    const refused = this.refused.get(owner);
    if (refused && refused.digest === entry.digest && this.now() - refused.at < REJECTED_TTL_MS) return { problem: credentialRejected() };
    return { key: entry.key };
  }

  private openStored(c: StoredCredential): Cached | undefined {
    try {
      const entry = { digest: c.keyDigest, key: this.opts.vault!.open(c.owner, c.sealed), at: this.now() };
      this.trim(this.keys);
      this.keys.set(c.owner, entry);
      this.brokenLogged.delete(c.owner);
      return entry;
    } catch (err) {
      if (!(err instanceof SealBrokenError)) throw err;
      if (!this.brokenLogged.has(c.owner)) {
        this.brokenLogged.add(c.owner);
        this.opts.log.warn("a route owner's kept key does not open (sealed with another HATCH_CREDENTIALS_KEY?); replaced at their next call", {
          owner: c.owner,
          sealed_by: c.keyId,
          current_key: this.opts.vault!.keyId,
        });
      }
      return undefined;
    }
  }

  private trim(map: Map<string, unknown>): void {
    if (map.size >= MAX_CACHED) map.clear();
  }
}

/** The answers a route gets when hatch-proxy holds no key that may act on its VM. */
export const noCredential = () =>
  new VmAccessError(
    "no_credential",
    "hatch-proxy holds no key for this vm: the platform acts on a vm only for its owner, and the route's owner has not called hatch-proxy's API with their key since the route was made (any call with their key fixes it)",
  );
export const credentialRejected = () =>
  new VmAccessError(
    "credential_rejected",
    "the VM platform refused the key this route's owner last used with hatch-proxy: the owner calls hatch-proxy's API once with a current key",
  );
export const noCredentialsKey = () =>
  new VmAccessError("no_credentials_key", "hatch-proxy keeps no keys for route owners (HATCH_CREDENTIALS_KEY is unset), and the platform acts on a vm only for its owner");
export const unowned = () =>
  new VmAccessError(
    "unowned",
    "this route has no owner and HATCH_API_KEY cannot see its vm: the vm's owner claims the route by listing its routes with their key (GET /vms/{id}/routes)",
  );
