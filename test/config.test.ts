import { describe, expect, it } from "vitest";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { ConfigError, formatDuration, loadConfig, parseAddr, parseBytes, parseDuration } from "../src/config.ts";

describe("value parsers", () => {
  it("reads Go durations", () => {
    expect(parseDuration("60s")).toBe(60_000);
    expect(parseDuration("1m30s")).toBe(90_000);
    expect(parseDuration("250ms")).toBe(250);
    expect(parseDuration("1h")).toBe(3_600_000);
    expect(parseDuration("1.5s")).toBe(1500);
    expect(parseDuration("0")).toBe(0);
    for (const bad of ["60", "s", "1d", "-1s", "1 s", ""]) expect(parseDuration(bad), bad).toBeUndefined();
    expect(formatDuration(90_000)).toBe("1m30s");
    expect(formatDuration(60_000)).toBe("1m");
    expect(formatDuration(250)).toBe("250ms");
  });

  it("reads listen addresses and sizes", () => {
    expect(parseAddr(":8080")).toEqual({ host: undefined, port: 8080 });
    expect(parseAddr("127.0.0.1:9091")).toEqual({ host: "127.0.0.1", port: 9091 });
    expect(parseAddr("[::1]:80")).toEqual({ host: "::1", port: 80 });
    for (const bad of ["8080", ":70000", "host:", "a b:1"]) expect(parseAddr(bad), bad).toBeUndefined();
    expect(parseBytes("10MiB")).toBe(10 * 1024 * 1024);
    expect(parseBytes("64KiB")).toBe(65536);
    expect(parseBytes("123")).toBe(123);
    expect(parseBytes("10 parsecs")).toBeUndefined();
  });
});

describe("loadConfig", () => {
  it("gives Hatch's defaults and derives the URLs that must agree", () => {
    const c = loadConfig({});
    expect(c.httpAddr).toEqual({ host: undefined, port: 8080 });
    expect(c.proxyAddr.port).toBe(9090);
    expect(c.baseDomain).toBe("hatch.local");
    expect(c.wakeTimeoutMs).toBe(60_000);
    expect(c.databaseUrl).toBeUndefined();
    expect(c.wakeUrl).toBe("http://127.0.0.1:9091");
    expect(c.routeApiUrl).toBe("http://127.0.0.1:8080");
    const moved = loadConfig({ HATCH_WAKE_ADDR: "127.0.0.5:7000", HATCH_HTTP_ADDR: ":7001" });
    expect(moved.wakeUrl).toBe("http://127.0.0.5:7000");
    expect(moved.routeApiUrl).toBe("http://127.0.0.1:7001");
    // Traefik sends api.<base>'s VM calls straight to a platform only when one is named: never to
    // the built-in simulator, which checks no key (the route API relays them after its own check).
    expect(c.traefikPlatformUrl).toBeUndefined();
    expect(loadConfig({ HATCH_API_URL: "http://hatchd:8080" }).traefikPlatformUrl).toBe("http://hatchd:8080");
    expect(loadConfig({ HATCH_API_URL: "http://hatchd:8080", HATCH_TRAEFIK_PLATFORM_URL: "http://10.0.0.2:8080" }).traefikPlatformUrl).toBe("http://10.0.0.2:8080");
  });

  it("lists every bad variable with its value and the accepted form, hiding secrets", () => {
    let err: unknown;
    try {
      loadConfig({ HATCH_PROXY_WAKE_TIMEOUT: "sixty", HATCH_HTTP_ADDR: "8080", HATCH_API_KEYS: "sha256:nothex", DATABASE_URL: "mysql://x" });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems).toEqual([
      'HATCH_HTTP_ADDR="8080": expected an address such as :8080 or 127.0.0.1:8080',
      'HATCH_PROXY_WAKE_TIMEOUT="sixty": expected a Go duration such as 60s, 1m30s or 250ms',
      'DATABASE_URL="mysql://x": expected a postgres:// or postgresql:// URL',
      "HATCH_API_KEYS=<hidden>: expected comma-separated keys, each plain or sha256:<64 lowercase hex digits>",
    ]);
  });

  it("per-user keys need HATCH_CREDENTIALS_KEY (32 bytes, hex or base64); HATCH_SIM_USERS pairs keys with users, hidden in errors", () => {
    const verify = { HATCH_BETTER_AUTH_VERIFY_URL: "http://auth:3000/verify" };
    expect(() => loadConfig(verify)).toThrow(/HATCH_CREDENTIALS_KEY: required with HATCH_BETTER_AUTH_VERIFY_URL .*openssl rand -hex 32/);
    const hex = "ab".repeat(32);
    expect(loadConfig({ ...verify, HATCH_CREDENTIALS_KEY: hex }).credentialsKey).toEqual(Buffer.from(hex, "hex"));
    expect(() => loadConfig({ ...verify, HATCH_CREDENTIALS_KEY: hex, HATCH_API_KEYS: "k" })).toThrow("HATCH_API_KEYS and HATCH_BETTER_AUTH_VERIFY_URL: set one of them");
    const b64 = Buffer.alloc(32, 7).toString("base64");
    expect(loadConfig({ HATCH_CREDENTIALS_KEY: b64 }).credentialsKey).toEqual(Buffer.alloc(32, 7));
    for (const bad of ["short", "ab".repeat(31), Buffer.alloc(16).toString("base64")]) {
      expect(() => loadConfig({ HATCH_CREDENTIALS_KEY: bad }), bad).toThrow("HATCH_CREDENTIALS_KEY=<hidden>: expected 32 random bytes");
    }
    expect(loadConfig({}).authCacheTtlMs).toBe(30_000);
    expect(loadConfig({ HATCH_AUTH_CACHE_TTL: "0" }).authCacheTtlMs).toBe(0);
    expect([...loadConfig({ HATCH_SIM_USERS: "ka:alice, kb:bob,svc:ops" }).simUsers!]).toEqual([
      ["ka", "alice"],
      ["kb", "bob"],
      ["svc", "ops"],
    ]);
    for (const bad of ["ka", "ka:alice,ka:bob", "k a:alice", ":alice", "ka:"]) {
      expect(() => loadConfig({ HATCH_SIM_USERS: bad }), bad).toThrow("HATCH_SIM_USERS=<hidden>: expected comma-separated key:user pairs");
    }
  });

  it("stops the process with one line per bad variable and exit code 78", () => {
    const main = fileURLToPath(new URL("../bin/hatch-proxy.js", import.meta.url));
    const r = spawnSync(process.execPath, [main, "api"], {
      env: { ...process.env, HATCH_PROXY_BASE_DOMAIN: "Bad_Domain", HATCH_WAKE_MAX_WAITERS: "0" },
      encoding: "utf8",
      timeout: 30_000,
    });
    expect(r.status).toBe(78);
    expect(r.stderr).toContain('HATCH_PROXY_BASE_DOMAIN="Bad_Domain": expected a DNS name such as hatch.local');
    expect(r.stderr).toContain('HATCH_WAKE_MAX_WAITERS="0": expected a whole number from 1 to 1000000');
    expect(r.stdout).toBe("");
  });
});
