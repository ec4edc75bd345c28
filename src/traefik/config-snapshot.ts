/** One built configuration as served: its bytes, strong ETags, and a YAML twin built on first use. */
import { createHash } from "node:crypto";
import { stringify as toYaml } from "yaml";
import type { Config } from "../config.ts";
import type { TraefikSettings } from "./config-builder.ts";

/** One built configuration; the same routes and states always give the same `json` and `etag`. */
export interface ConfigSnapshot {
  json: string;
  /** The same document as YAML (built on first use: most pollers never ask for it). */
  readonly yaml: string;
  /** Strong ETag (quoted) of `json`. */
  etag: string;
  /** Strong ETag (quoted) of `yaml`. */
  readonly yamlEtag: string;
  /** `json` as bytes, so serving a poll copies nothing. */
  body: Uint8Array<ArrayBuffer>;
  /** Epoch ms when these bytes were first built (not part of the body). */
  builtAt: number;
  routers: number;
}

/** The builder settings derived from the process configuration. */
export function traefikSettings(config: Config): TraefikSettings {
  return {
    baseDomain: config.baseDomain,
    entryPoints: config.traefikEntryPoints,
    wakeUrl: config.wakeUrl,
    wakeSecret: config.wakeSecret,
    certResolver: config.traefikCertResolver,
    apiUrl: config.routeApiUrl,
    platformUrl: config.traefikPlatformUrl,
    vmResponseTimeoutMs: config.vmResponseTimeoutMs,
  };
}

/** Strong ETag of a body: a quoted SHA-256 (base64url). */
export function etagOf(text: string): string {
  return `"${createHash("sha256").update(text).digest("base64url")}"`;
}

/** Wraps a built JSON document with its hash, bytes and a lazily built YAML twin. */
export function makeSnapshot(json: string, routers: number, builtAt: number): ConfigSnapshot {
  let yaml: string | undefined;
  let yamlEtag: string | undefined;
  return {
    json,
    etag: etagOf(json),
    body: new TextEncoder().encode(json),
    builtAt,
    routers,
    get yaml() {
      yaml ??= toYaml(JSON.parse(json), { lineWidth: 0 });
      return yaml;
    },
    get yamlEtag() {
      yamlEtag ??= etagOf(this.yaml);
      return yamlEtag;
    },
  };
}
