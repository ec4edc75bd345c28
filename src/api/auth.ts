import { createHash, timingSafeEqual } from "node:crypto";
import { AppError } from "../errors.ts";

/** Who is calling. `userId` is '' in single-tenant mode (static keys); routes are then not scoped. */
export interface Principal {
  userId: string;
  /** True when keys are verified per user: routes and VMs are scoped to `userId`. */
  scoped: boolean;
  /** The caller's key, forwarded to the VM platform in scoped mode so it scopes VMs the same way. */
  key: string;
}

export interface Authenticator {
  /** Resolves the caller from the request headers, or throws a 401 AppError with Hatch's texts. */
  authenticate(headers: { authorization?: string | undefined; apiKey?: string | undefined }): Promise<Principal>;
}

const sha256 = (s: string) => createHash("sha256").update(s).digest();

/** Extracts the key from `Authorization: Bearer <key>` or `X-API-Key`, with Hatch's 401 texts. */
export function extractKey(headers: { authorization?: string | undefined; apiKey?: string | undefined }): string {
  const auth = headers.authorization;
  if (auth !== undefined && auth !== "") {
    const m = /^Bearer[ ]+(\S+)\s*$/i.exec(auth);
    if (!m) throw new AppError(401, "invalid authorization header");
    return m[1]!;
  }
  const key = headers.apiKey?.trim();
  if (!key) throw new AppError(401, "missing api key");
  return key;
}

/**
 * Static keys from HATCH_API_KEYS: each plain or `sha256:<hex>`. Every configured key is compared
 * (as a SHA-256 digest, in constant time) so timing says nothing about which one matched.
 */
export function createStaticKeyAuth(keys: readonly string[]): Authenticator {
  const digests = keys.map((k) => (k.startsWith("sha256:") ? Buffer.from(k.slice(7), "hex") : sha256(k)));
  return {
    async authenticate(headers) {
      const key = extractKey(headers);
      const given = sha256(key);
      let ok = false;
      for (const d of digests) ok = timingSafeEqual(d, given) || ok;
      if (!ok) throw new AppError(401, "invalid api key");
      return { userId: "", scoped: false, key };
    },
  };
}

export interface VerifyAuthOptions {
  url: string;
  timeoutMs?: number;
  /** How long a positive answer is trusted before asking again. */
  cacheTtlMs?: number;
  fetch?: typeof fetch;
  now?: () => number;
}

/**
 * Hatch's better-auth protocol: `POST url {"key"}` → `{"valid": bool, "userId": "..."}`. Any non-200 or
 * `valid: false` is an invalid key; an unreachable verifier is a 503 (we cannot tell). Positive answers
 * are cached briefly, keyed by the key's digest so the plain key is not kept.
 */
export function createVerifyAuth(opts: VerifyAuthOptions): Authenticator {
  const doFetch = opts.fetch ?? fetch;
  const ttl = opts.cacheTtlMs ?? 30_000;
  const now = opts.now ?? Date.now;
  const cache = new Map<string, { userId: string; until: number }>();
  return {
    async authenticate(headers) {
      const key = extractKey(headers);
      const id = sha256(key).toString("hex");
      const hit = cache.get(id);
      if (hit && hit.until > now()) return { userId: hit.userId, scoped: true, key };
      let res: Response;
      try {
        res = await doFetch(opts.url, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ key }),
          signal: AbortSignal.timeout(opts.timeoutMs ?? 5000),
        });
      } catch {
        throw new AppError(503, "authentication service unavailable");
      }
      if (res.status !== 200) {
        await res.body?.cancel();
        throw new AppError(401, "invalid api key");
      }
      const body = (await res.json().catch(() => undefined)) as { valid?: unknown; userId?: unknown } | undefined;
      if (body?.valid !== true || typeof body.userId !== "string" || !body.userId) throw new AppError(401, "invalid api key");
      if (cache.size > 10_000) cache.clear();
      cache.set(id, { userId: body.userId, until: now() + ttl });
      return { userId: body.userId, scoped: true, key };
    },
  };
}
