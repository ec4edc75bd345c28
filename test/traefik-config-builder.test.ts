import { fileURLToPath } from "node:url";
import { existsSync, readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { Ajv } from "ajv";
import { parse as parseYaml } from "yaml";
import {
  buildDynamicConfig,
  catchAllRule,
  routeObjectName,
  stableStringify,
  type RouteLike,
  type TraefikSettings,
} from "../src/traefik/config-builder.ts";
import { createConfigAssembler } from "../src/traefik/config-assembler.ts";
import { makeSnapshot } from "../src/traefik/config-snapshot.ts";
import type { Vm, VmState } from "../src/vms/platform.ts";

// shared/ sits beside the repository (also in CI's clone); TRAEFIK_SCHEMA overrides.
const SCHEMA_URL = "https://json.schemastore.org/traefik-v3-file-provider.json";
const SCHEMA_PATH =
  process.env.TRAEFIK_SCHEMA ?? fileURLToPath(new URL("../../shared/schemas/traefik-v3-file-provider.json", import.meta.url));
if (!existsSync(SCHEMA_PATH)) {
  const where = process.env.TRAEFIK_SCHEMA ? `TRAEFIK_SCHEMA=${process.env.TRAEFIK_SCHEMA}` : "../shared/schemas/traefik-v3-file-provider.json (beside this repository)";
  console.warn(`[traefik-config-builder] the SchemaStore lint is SKIPPED: no schema at ${where}. Save ${SCHEMA_URL} there, or set TRAEFIK_SCHEMA to a copy.`);
}
// The SchemaStore schema is a lint, used only where it exists; the real-Traefik suite is the authority.
const validate = existsSync(SCHEMA_PATH) ? new Ajv({ strict: false, allErrors: true }).compile(withV36Fields(JSON.parse(readFileSync(SCHEMA_PATH, "utf8")))) : undefined;

/**
 * The schema predates v3.6's `statusRewrites` on the errors middleware (read in Traefik's
 * pkg/config/dynamic/middlewares.go: map of status ranges to a status); teach it that one field.
 */
function withV36Fields(schema: any) {
  const errors = (schema.definitions ?? schema.$defs)?.errorsMiddleware;
  if (errors?.properties && !errors.properties.statusRewrites) {
    errors.properties.statusRewrites = { type: "object", additionalProperties: { type: "integer" } };
  }
  return schema;
}

/** Lints a produced document against the SchemaStore schema (no-op when the schema is absent). */
function lint(doc: unknown) {
  if (!validate) return;
  const ok = validate(JSON.parse(stableStringify(doc)));
  expect(validate.errors ?? [], "schema lint").toEqual([]);
  expect(ok).toBe(true);
}

const base: TraefikSettings = { baseDomain: "hatch.local", entryPoints: ["web"], wakeUrl: "http://127.0.0.1:9091" };
const vm = (id: string, state: VmState, guest_ip = "172.16.0.10"): Vm => ({ id, state, guest_ip });
const vmsOf = (...list: Vm[]) => new Map(list.map((v) => [v.id, v]));
const route = (id: string, vmId: string, subdomain: string, targetPort = 8080): RouteLike => ({ id, vmId, subdomain, targetPort });

describe("buildDynamicConfig", () => {
  const catchAll = {
    rule: "HostRegexp(`^[a-z0-9-]+\\.hatch\\.local$`)",
    service: "hatch-wake",
    entryPoints: ["web"],
    priority: 1,
  };
  const streams = {
    rule: "HostRegexp(`^[a-z0-9-]+\\.hatch\\.local$`) && (HeaderRegexp(`Upgrade`, `.`) || HeaderRegexp(`Accept`, `(?i)text/event-stream`))",
    service: "hatch-wake",
    entryPoints: ["web"],
    priority: 10_000,
  };
  const transports = { "hatch-vm": { forwardingTimeouts: { dialTimeout: "1s", idleConnTimeout: "1s" }, maxIdleConnsPerHost: 200 } };
  const retry = { "hatch-vm-retry": { retry: { attempts: 6, initialInterval: "500ms" } } };
  const fallback = {
    ...retry,
    "hatch-sleep-fallback": {
      errors: {
        query: "/.well-known/hatch-proxy/sleep-fallback?status={status}&url={url}",
        service: "hatch-wake",
        status: ["502", "504"],
        statusRewrites: { "502": 307, "504": 307 },
      },
    },
  };

  it("gives the direct routers' transport a response deadline when one is set, and none for 0", () => {
    const routes = [route("rt_run", "vm_a", "app")];
    const vms = vmsOf(vm("vm_a", "running"));
    const timed = buildDynamicConfig(routes, vms, { ...base, vmResponseTimeoutMs: 60_000 }).http.serversTransports;
    expect(timed).toEqual({ "hatch-vm": { forwardingTimeouts: { dialTimeout: "1s", idleConnTimeout: "1s", responseHeaderTimeout: "60000ms" }, maxIdleConnsPerHost: 200 } });
    expect(buildDynamicConfig(routes, vms, { ...base, vmResponseTimeoutMs: 0 }).http.serversTransports).toEqual(transports);
    // The assembler writes the same transport as the builder.
    const settings = { ...base, vmResponseTimeoutMs: 4_000 };
    expect(JSON.parse(createConfigAssembler(settings).assemble(routes, vms).json)).toEqual(buildDynamicConfig(routes, vms, settings));
  });

  it("gives running routes two routers (GET/HEAD with the sleep fallback, then any method) and a service, and sends everything else to the catch-all", () => {
    const routes = [
      route("rt_run", "vm_a", "app"),
      route("rt_run2", "vm_a", "app-admin", 3000),
      route("rt_snap", "vm_b", "sleepy"),
      route("rt_stop", "vm_c", "stopped"),
      route("rt_start", "vm_d", "booting"),
      route("rt_unknown", "vm_gone", "ghost"),
    ];
    const vms = vmsOf(vm("vm_a", "running"), vm("vm_b", "snapshotted"), vm("vm_c", "stopped"), vm("vm_d", "starting"));
    const doc = buildDynamicConfig(routes, vms, base);
    const getOnly = (host: string) => `Host(\`${host}\`) && (Method(\`GET\`) || Method(\`HEAD\`))`;
    expect(doc).toEqual({
      http: {
        middlewares: fallback,
        routers: {
          rt_run: { rule: "Host(`app.hatch.local`)", service: "rt_run", entryPoints: ["web"], middlewares: ["hatch-vm-retry"] },
          "rt_run-get": { rule: getOnly("app.hatch.local"), service: "rt_run", entryPoints: ["web"], middlewares: ["hatch-sleep-fallback"] },
          rt_run2: { rule: "Host(`app-admin.hatch.local`)", service: "rt_run2", entryPoints: ["web"], middlewares: ["hatch-vm-retry"] },
          "rt_run2-get": { rule: getOnly("app-admin.hatch.local"), service: "rt_run2", entryPoints: ["web"], middlewares: ["hatch-sleep-fallback"] },
          "hatch-streams": streams,
          "hatch-wake": catchAll,
        },
        serversTransports: transports,
        services: {
          rt_run: { loadBalancer: { servers: [{ url: "http://172.16.0.10:8080" }], passHostHeader: true, serversTransport: "hatch-vm" } },
          rt_run2: { loadBalancer: { servers: [{ url: "http://172.16.0.10:3000" }], passHostHeader: true, serversTransport: "hatch-vm" } },
          "hatch-wake": { loadBalancer: { servers: [{ url: "http://127.0.0.1:9091" }], passHostHeader: true } },
        },
      },
    });
    lint(doc);
  });

  it("has only the catch-all when no VM runs (a new route works at once through the sidecar)", () => {
    const doc = buildDynamicConfig([route("rt_a", "vm_a", "a")], vmsOf(vm("vm_a", "snapshotted")), base);
    expect(Object.keys(doc.http.routers)).toEqual(["hatch-streams", "hatch-wake"]);
    expect(Object.keys(doc.http.services)).toEqual(["hatch-wake"]);
    expect(doc.http.middlewares).toEqual(fallback);
    lint(doc);
  });

  it.each([
    ["hatch.local", "a.hatch.local"],
    ["my-base.example", "a.my-base.example"],
    ["x-1.y-2.z", "app-9.x-1.y-2.z"],
  ])("escapes base domain %s in the catch-all regexp", (domain, host) => {
    const rule = buildDynamicConfig([], new Map(), { ...base, baseDomain: domain }).http.routers["hatch-wake"]!.rule;
    expect(rule).toBe(catchAllRule(domain));
    const m = /^HostRegexp\(`(.*)`\)$/.exec(rule);
    expect(m).not.toBeNull();
    const re = new RegExp(m![1]!);
    expect(re.test(host)).toBe(true);
    // A dot must not match any character, and only one label may precede the base domain.
    expect(re.test(host.replace(/\.(?=[^.]*$)/, "X"))).toBe(false);
    expect(re.test(`b.${host}`)).toBe(false);
    expect(re.test(domain)).toBe(false);
    expect(re.test(`${host}.evil`)).toBe(false);
    expect(re.test(`UPPER.${domain}`)).toBe(false);
  });

  it("matches a.my-base.example and neither a.my-baseXexample nor a.b.my-base.example", () => {
    const rule = catchAllRule("my-base.example");
    expect(rule).toBe("HostRegexp(`^[a-z0-9-]+\\.my-base\\.example$`)");
    const re = new RegExp(/`(.*)`/.exec(rule)![1]!);
    expect(re.test("a.my-base.example")).toBe(true);
    expect(re.test("a.my-baseXexample")).toBe(false);
    expect(re.test("a.b.my-base.example")).toBe(false);
  });

  it("produces the same bytes for shuffled input", () => {
    const routes: RouteLike[] = [];
    const vms: Vm[] = [];
    for (let i = 0; i < 300; i++) {
      vms.push(vm(`vm_${i}`, i % 3 === 0 ? "running" : "snapshotted", `10.0.${i >> 8}.${i & 255}`));
      routes.push(route(`rt_${i.toString(36)}`, `vm_${i}`, `s${i}`, 1000 + i));
    }
    const first = stableStringify(buildDynamicConfig(routes, vmsOf(...vms), base));
    let seed = 42;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let round = 0; round < 5; round++) {
      const r2 = [...routes].sort(() => rnd() - 0.5);
      const v2 = [...vms].sort(() => rnd() - 0.5);
      expect(stableStringify(buildDynamicConfig(r2, vmsOf(...v2), base))).toBe(first);
    }
    expect(Object.keys(JSON.parse(first).http.routers)).toHaveLength(2 * 100 + 2);
    expect(makeSnapshot(first, 0, 1).etag).toBe(makeSnapshot(first, 0, 2).etag);
  });

  it("attaches routers to every configured entry point", () => {
    const doc = buildDynamicConfig([route("rt_a", "vm_a", "a")], vmsOf(vm("vm_a", "running")), {
      ...base,
      entryPoints: ["web", "websecure"],
      apiUrl: "http://127.0.0.1:8080",
    });
    for (const name of ["rt_a", "rt_a-get", "hatch-wake", "hatch-streams", "hatch-api"]) expect(doc.http.routers[name]!.entryPoints).toEqual(["web", "websecure"]);
    lint(doc);
  });

  it("adds TLS with the cert resolver and a wildcard domain to every router", () => {
    const doc = buildDynamicConfig([route("rt_a", "vm_a", "a")], vmsOf(vm("vm_a", "running")), {
      ...base,
      entryPoints: ["websecure"],
      certResolver: "le",
      apiUrl: "http://127.0.0.1:8080",
    });
    const tls = { certResolver: "le", domains: [{ main: "hatch.local", sans: ["*.hatch.local"] }] };
    expect(doc.http.routers.rt_a).toEqual({ rule: "Host(`a.hatch.local`)", service: "rt_a", entryPoints: ["websecure"], middlewares: ["hatch-vm-retry"], tls });
    for (const name of ["rt_a-get", "hatch-wake", "hatch-streams", "hatch-api"]) expect(doc.http.routers[name]!.tls).toEqual(tls);
    lint(doc);
  });

  it("has no TLS section without a cert resolver", () => {
    const json = stableStringify(buildDynamicConfig([route("rt_a", "vm_a", "a")], vmsOf(vm("vm_a", "running")), base));
    expect(json).not.toContain("tls");
  });

  it("adds the wake secret middleware to the routers to the sidecar only when a secret is set, and the secret (encoded) to the fallback query", () => {
    const doc = buildDynamicConfig([route("rt_a", "vm_a", "a")], vmsOf(vm("vm_a", "running")), { ...base, wakeSecret: "s3cret&x=1" });
    expect(doc.http.middlewares).toEqual({
      ...retry,
      "hatch-sleep-fallback": {
        // The errors middleware sends no custom header: the secret rides in the query, percent-encoded.
        errors: {
          query: "/.well-known/hatch-proxy/sleep-fallback?token=s3cret%26x%3D1&status={status}&url={url}",
          service: "hatch-wake",
          status: ["502", "504"],
          statusRewrites: { "502": 307, "504": 307 },
        },
      },
      "hatch-wake-auth": { headers: { customRequestHeaders: { "X-Hatch-Wake-Secret": "s3cret&x=1" } } },
    });
    expect(doc.http.routers["hatch-wake"]!.middlewares).toEqual(["hatch-wake-auth"]);
    expect(doc.http.routers["hatch-streams"]!.middlewares).toEqual(["hatch-wake-auth"]);
    // Direct routes go to the VM, never through the sidecar's secret.
    expect(doc.http.routers.rt_a!.middlewares).toEqual(["hatch-vm-retry"]);
    expect(doc.http.routers["rt_a-get"]!.middlewares).toEqual(["hatch-sleep-fallback"]);
    lint(doc);
  });

  it("publishes the route API on api.<base> above every other router, out of reach of any route", () => {
    const doc = buildDynamicConfig(
      [route("rt_api", "vm_a", "api"), route("rt_b", "vm_a", "b")],
      vmsOf(vm("vm_a", "running")),
      { ...base, apiUrl: "http://10.1.2.3:8080" },
    );
    expect(doc.http.routers["hatch-api"]).toEqual({
      rule: "Host(`api.hatch.local`) && !PathPrefix(`/traefik`)",
      service: "hatch-api",
      entryPoints: ["web"],
      priority: 20_000,
    });
    expect(doc.http.services["hatch-api"]).toEqual({ loadBalancer: { servers: [{ url: "http://10.1.2.3:8080" }], passHostHeader: true } });
    // A route named `api` (impossible through the API) gets no router to compete with it.
    expect(doc.http.routers.rt_api).toBeUndefined();
    expect(Object.keys(doc.http.routers).sort()).toEqual(["hatch-api", "hatch-streams", "hatch-wake", "rt_b", "rt_b-get"]);
    lint(doc);
  });

  it("names objects after the route id, hashing ids Traefik could misread", () => {
    expect(routeObjectName("rt_abc123")).toBe("rt_abc123");
    expect(routeObjectName("rt-abc")).toBe("rt-abc");
    // An id ending in -get would collide with another route's GET router.
    for (const id of ["rt@http", "rt.a", "hatch-wake", "hatch-api", "hatch-streams", "a b", "rt_x-get"]) {
      const name = routeObjectName(id);
      expect(name).toMatch(/^rt-x[0-9a-f]{24}$/);
      expect(routeObjectName(id)).toBe(name);
    }
    const doc = buildDynamicConfig([route("x@file", "vm_a", "a")], vmsOf(vm("vm_a", "running")), base);
    expect(stableStringify(doc)).not.toContain("@");
  });

  it.each([
    ["plain", {}],
    ["secret, TLS, api, two entry points", { wakeSecret: "x", certResolver: "le", apiUrl: "http://127.0.0.1:8080", entryPoints: ["websecure", "web"] }],
  ])("creates keys already sorted, so plain JSON.stringify is canonical (%s)", (_name, extra) => {
    const routes = ["zz", "aa", "m-m", "b_1", "B"].map((id, i) => route(`rt_${id}`, `vm_${i}`, `s${i}`));
    const vms = vmsOf(...routes.map((r) => vm(r.vmId, "running", `10.0.0.${r.vmId.length}`)));
    const doc = buildDynamicConfig(routes, vms, { ...base, ...extra });
    expect(JSON.stringify(doc)).toBe(stableStringify(doc));
  });

  it("brackets IPv6 guest addresses", () => {
    const doc = buildDynamicConfig([route("rt_a", "vm_a", "a", 80)], vmsOf(vm("vm_a", "running", "fd00::5")), base);
    expect(doc.http.services.rt_a!.loadBalancer.servers).toEqual([{ url: "http://[fd00::5]:80" }]);
  });
});

describe("stableStringify", () => {
  it("sorts keys at every depth and keeps array order", () => {
    expect(stableStringify({ b: 1, a: { d: [3, { z: 1, y: 2 }], c: "x" }, u: undefined })).toBe(
      '{"a":{"c":"x","d":[3,{"y":2,"z":1}]},"b":1}',
    );
    expect(stableStringify({ x: 'q"\\\n' })).toBe(JSON.stringify({ x: 'q"\\\n' }));
  });

  it("gives the YAML twin the same document", () => {
    const doc = buildDynamicConfig([route("rt_a", "vm_a", "a")], vmsOf(vm("vm_a", "running")), { ...base, wakeSecret: "s" });
    const snap = makeSnapshot(stableStringify(doc), 2, 0);
    expect(parseYaml(snap.yaml)).toEqual(JSON.parse(snap.json));
    expect(snap.yamlEtag).not.toBe(snap.etag);
  });
});

describe("createConfigAssembler", () => {
  const STATES: VmState[] = ["running", "running", "snapshotted", "stopped", "starting", "error"];
  const variants: [string, TraefikSettings][] = [
    ["plain", base],
    ["secret, TLS, api, two entry points", { ...base, wakeSecret: "s", certResolver: "le", apiUrl: "http://127.0.0.1:8080", entryPoints: ["websecure", "web"] }],
    ["api only, other domain", { ...base, baseDomain: "my-base.example", apiUrl: "http://10.0.0.1:8080" }],
  ];

  it.each(variants)("gives the builder's exact bytes through a series of changes (%s)", (_name, settings) => {
    let seed = 7;
    const rnd = (n: number) => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % n;
    const ids = ["rt_a", "rt_b", "rt-c", "x@file", "hatch-wake", "rt.dot", "rt_z9", "rt_api"];
    const vms = new Map<string, Vm>();
    for (let i = 0; i < 6; i++) vms.set(`vm_${i}`, vm(`vm_${i}`, STATES[rnd(STATES.length)]!, i === 5 ? "fd00::9" : `10.0.0.${i}`));
    let routes: RouteLike[] = ids.map((id, i) => route(id, `vm_${i % 7}`, id === "rt_api" ? "api" : `s${i}`, 1000 + i));
    const assembler = createConfigAssembler(settings);
    for (let step = 0; step < 60; step++) {
      const { json, routers } = assembler.assemble(routes, vms);
      const doc = buildDynamicConfig(routes, vms, settings);
      expect(json).toBe(JSON.stringify(doc));
      expect(routers).toBe(Object.keys(doc.http.routers).length);
      const id = `vm_${rnd(7)}`;
      switch (rnd(5)) {
        case 0:
          vms.set(id, vm(id, STATES[rnd(STATES.length)]!, vms.get(id)?.guest_ip ?? "10.0.0.77"));
          break;
        case 1:
          vms.set(id, vm(id, "running", `10.1.0.${rnd(250)}`));
          break;
        case 2:
          routes = routes.map((r) => (r.vmId === id ? { ...r, targetPort: 2000 + rnd(100) } : r));
          break;
        case 3:
          routes = routes.filter((_, i) => i !== rnd(routes.length + 1));
          break;
        default:
          routes = [...routes, route(`rt_n${step}`, id, `n${step}`)].sort(() => rnd(3) - 1);
      }
    }
  });
});
