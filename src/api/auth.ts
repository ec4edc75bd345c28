import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../config.ts";
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
  /** How long a positive answer is trusted before asking again (HATCH_AUTH_CACHE_TTL); 0 = every call asks. */
  cacheTtlMs?: number;
  fetch?: typeof fetch;
  now?: () => number;
}

/** An authenticator that asks a verifier, and can say whether that verifier answers (for /readyz). */
export interface VerifyAuthenticator extends Authenticator {
  /** Undefined when the verifier answered lately (or answers a probe now), else why not. */
  readiness(): Promise<string | undefined>;
}

type Verdict = { userId: string } | { invalid: true };

/** How long the verifier's last answer (or silence) stands for /readyz before it is probed again. */
const READINESS_FRESH_MS = 5000;

/**
 * Hatch's better-auth protocol: `POST url {"key"}` → `{"valid": bool, "userId": "..."}`. Any non-200 or
 * `valid: false` is an invalid key; an unreachable verifier is a 503 (we cannot tell). Positive answers
 * are cached for `cacheTtlMs`, keyed by the key's digest so the plain key is not kept, and concurrent
 * calls with one key share one verifier call. A revoked key keeps working until its cached answer
 * expires, at most `cacheTtlMs`.
 */
export function createVerifyAuth(opts: VerifyAuthOptions): VerifyAuthenticator {
  const doFetch = opts.fetch ?? fetch;
  const ttl = opts.cacheTtlMs ?? 30_000;
  const timeoutMs = opts.timeoutMs ?? 5000;
  const now = opts.now ?? Date.now;
  const cache = new Map<string, { userId: string; until: number }>();
  const inFlight = new Map<string, Promise<Verdict>>();
  let last: { at: number; problem: string | undefined } | undefined;
  let probing: Promise<string | undefined> | undefined;

  const heard = (problem: string | undefined) => {
    last = { at: now(), problem };
  };

  /** One verifier call; its outcome also tells /readyz whether the verifier answers. */
  const ask = async (key: string): Promise<Verdict> => {
    let res: Response;
    try {
      res = await doFetch(opts.url, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ key }),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      heard(unreachable(err, timeoutMs));
      throw new AppError(503, "authentication service unavailable");
    }
    heard(res.status >= 500 ? `answered ${res.status}` : undefined);
    if (res.status !== 200) {
      await res.body?.cancel();
      return { invalid: true };
    }
    const body = (await res.json().catch(() => undefined)) as { valid?: unknown; userId?: unknown } | undefined;
    if (body?.valid !== true || typeof body.userId !== "string" || !body.userId) return { invalid: true };
    return { userId: body.userId };
  };

  return {
    async authenticate(headers) {
      const key = extractKey(headers);
      const id = sha256(key).toString("hex");
      const hit = cache.get(id);
      if (hit && hit.until > now()) return { userId: hit.userId, scoped: true, key };
      let pending = inFlight.get(id);
      if (!pending) {
        pending = ask(key).finally(() => inFlight.delete(id));
        inFlight.set(id, pending);
      }
      const verdict = await pending;
      if ("invalid" in verdict) {
        cache.delete(id);
        throw new AppError(401, "invalid api key");
      }
      if (ttl > 0) {
        if (cache.size > 10_000) cache.clear();
        cache.set(id, { userId: verdict.userId, until: now() + ttl });
      }
      return { userId: verdict.userId, scoped: true, key };
    },
    async readiness() {
      if (last && now() - last.at < READINESS_FRESH_MS) return last.problem && verifierProblem(last.problem);
      // A probe with no key: any answer below 500 says the verifier is there.
      probing ??= ask("")
        .then(
          () => undefined,
          () => undefined,
        )
        .then(() => last?.problem && verifierProblem(last.problem))
        .finally(() => (probing = undefined));
      return probing;
    },
  };
}

const verifierProblem = (why: string) => `key verifier (HATCH_BETTER_AUTH_VERIFY_URL) unreachable: ${why}`;

function unreachable(err: unknown, timeoutMs: number): string {
  if ((err as Error)?.name === "TimeoutError") return `no answer within ${timeoutMs} ms`;
  const code = (err as { cause?: { code?: string } })?.cause?.code;
  return code ?? "connection failed";
}

/**
 * The API key source. HATCH_API_KEYS wins, then the better-auth verify URL; with neither, a random
 * key is generated once into `<data dir>/api-key` (mode 600) so the API is never open by default.
 */
export function configureAuth(config: Config): { auth: Authenticator; generatedKey?: string; keyFile?: string } {
  if (config.apiKeys) return { auth: createStaticKeyAuth(config.apiKeys) };
  if (config.authVerifyUrl) return { auth: createVerifyAuth({ url: config.authVerifyUrl, cacheTtlMs: config.authCacheTtlMs }) };
  const keyFile = join(config.dataDir, "api-key");
  let key = existsSync(keyFile) ? readFileSync(keyFile, "utf8").trim() : "";
  if (!key) {
    mkdirSync(config.dataDir, { recursive: true });
    key = `hk_${randomBytes(24).toString("base64url")}`;
    writeFileSync(keyFile, `${key}\n`, { mode: 0o600 });
  }
  chmodSync(keyFile, 0o600);
  return { auth: createStaticKeyAuth([key]), generatedKey: key, keyFile };
}
