import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { loadConfig, testConfig } from "../src/config.ts";
import { buildStaticConfig, formatAddr } from "../src/traefik/static-config.ts";

const committed = parse(readFileSync(fileURLToPath(new URL("../traefik/traefik.yml", import.meta.url)), "utf8"));

describe("traefik/traefik.yml", () => {
  const generated = buildStaticConfig(loadConfig({})) as any;

  it("agrees with buildStaticConfig(defaults) on entry points and the provider", () => {
    expect(committed.entryPoints).toEqual(generated.entryPoints);
    expect(committed.entryPoints.web.address).toBe(":9090");
    expect(committed.providers.http.endpoint).toBe("http://127.0.0.1:8080/traefik/config");
    expect(committed.providers).toEqual(generated.providers);
  });

  it("agrees on everything else too (the token header is the only documented difference)", () => {
    expect(committed).toEqual(generated);
  });

  it("keeps Traefik's API on loopback and without dashboard, and reports nothing home", () => {
    expect(committed.entryPoints.traefik.address).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(committed.api).toEqual({ insecure: true, dashboard: false });
    expect(committed.global).toEqual({ checkNewVersion: false, sendAnonymousUsage: false });
    expect(committed.metrics.prometheus.addRoutersLabels).toBe(true);
    expect(committed.accessLog).toEqual({ format: "json" });
  });
});

describe("buildStaticConfig", () => {
  it("follows the configuration", () => {
    const config = testConfig({
      proxyAddr: { host: "0.0.0.0", port: 80 },
      traefikEntryPoints: ["websecure", "web"],
      routeApiUrl: "http://10.0.0.2:8080",
      traefikToken: "tok",
    });
    const s = buildStaticConfig(config, { apiPort: 18081 }) as any;
    expect(s.entryPoints).toEqual({ websecure: { address: "0.0.0.0:80" }, traefik: { address: "127.0.0.1:18081" } });
    expect(s.providers.http).toEqual({
      endpoint: "http://10.0.0.2:8080/traefik/config",
      pollInterval: "1s",
      pollTimeout: "5s",
      headers: { Authorization: "Bearer tok" },
    });
    expect((buildStaticConfig(config, { providerUrl: "http://127.0.0.1:1/x" }) as any).providers.http.endpoint).toBe("http://127.0.0.1:1/x");
  });

  it("formats listen addresses the way Traefik reads them", () => {
    expect(formatAddr({ host: undefined, port: 9090 })).toBe(":9090");
    expect(formatAddr({ host: "127.0.0.1", port: 1 })).toBe("127.0.0.1:1");
    expect(formatAddr({ host: "::1", port: 2 })).toBe("[::1]:2");
  });
});
