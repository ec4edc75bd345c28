/**
 * Seals the API keys hatch-proxy keeps for route owners with the operator's HATCH_CREDENTIALS_KEY:
 * AES-256-GCM with a fresh nonce per seal and the owner as associated data, so a sealed key copied
 * onto another owner's row does not open. Nothing here logs, and no error carries a key.
 */
import { createCipheriv, createDecipheriv, createHash, createHmac, randomBytes } from "node:crypto";

const VERSION = "v1";
const NONCE_BYTES = 12;
const TAG_BYTES = 16;

/** A sealed key that does not open: another operator key sealed it, or the row was altered. */
export class SealBrokenError extends Error {
  constructor(readonly owner: string) {
    super(`the kept key of a route owner does not open with HATCH_CREDENTIALS_KEY`);
    this.name = "SealBrokenError";
  }
}

export class CredentialVault {
  /** Names the operator key without revealing it (stored beside each sealed key). */
  readonly keyId: string;
  private readonly sealKey: Buffer;
  private readonly digestKey: Buffer;

  constructor(operatorKey: Buffer) {
    if (operatorKey.length !== 32) throw new Error("HATCH_CREDENTIALS_KEY must be 32 bytes");
    // Separate keys for sealing and for digests, both derived from the one the operator gives.
    this.sealKey = createHmac("sha256", operatorKey).update("hatch-proxy seal v1").digest();
    this.digestKey = createHmac("sha256", operatorKey).update("hatch-proxy digest v1").digest();
    this.keyId = createHash("sha256").update(operatorKey).update("hatch-proxy key id").digest("hex").slice(0, 16);
  }

  /** `v1.<nonce>.<ciphertext+tag>` (base64url), bound to `owner`. */
  seal(owner: string, key: string): string {
    const nonce = randomBytes(NONCE_BYTES);
    const cipher = createCipheriv("aes-256-gcm", this.sealKey, nonce);
    cipher.setAAD(Buffer.from(owner, "utf8"));
    const body = Buffer.concat([cipher.update(key, "utf8"), cipher.final(), cipher.getAuthTag()]);
    return `${VERSION}.${nonce.toString("base64url")}.${body.toString("base64url")}`;
  }

  /** The key sealed for `owner`; throws SealBrokenError when it does not open. */
  open(owner: string, sealed: string): string {
    const [version, nonce, body] = sealed.split(".");
    if (version !== VERSION || !nonce || !body) throw new SealBrokenError(owner);
    const bytes = Buffer.from(body, "base64url");
    if (bytes.length < TAG_BYTES) throw new SealBrokenError(owner);
    try {
      const decipher = createDecipheriv("aes-256-gcm", this.sealKey, Buffer.from(nonce, "base64url"));
      decipher.setAAD(Buffer.from(owner, "utf8"));
      decipher.setAuthTag(bytes.subarray(bytes.length - TAG_BYTES));
      return Buffer.concat([decipher.update(bytes.subarray(0, bytes.length - TAG_BYTES)), decipher.final()]).toString("utf8");
    } catch {
      throw new SealBrokenError(owner);
    }
  }

  /** A keyed digest of `key`: equal digests, same key; the database alone cannot test guesses against it. */
  digest(key: string): string {
    return createHmac("sha256", this.digestKey).update(key, "utf8").digest("hex");
  }
}
