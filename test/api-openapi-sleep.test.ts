/**
 * The OpenAPI document of POST /vms/{vm_id}/sleep and GET /vms/{vm_id}/activity against what the
 * full stack (startStack: the sleep protocol wired in) answers: paths, methods, status codes, the
 * Activity schema's fields and the documented error texts.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rmSync } from "node:fs";
import { join } from "node:path";
import * as v from "valibot";
import { ActivitySchema } from "../src/api/vm-sleep.ts";
import { testConfig } from "../src/config.ts";
import { silentLogger } from "../src/log.ts";
import { startStack, type Stack } from "../src/stack.ts";
import { seededDataDir } from "./helpers/pglite-template.ts";

const KEY = "openapi-sleep-key";

type Responses = Record<string, { content?: Record<string, { schema?: unknown; example?: { error: string }; examples?: Record<string, { value: { error: string } }> }> }>;
type Operation = { security?: unknown[]; responses: Responses; requestBody?: { required: boolean; content: Record<string, { schema: unknown }> }; parameters?: { name: string }[] };
type Doc = {
  security: Record<string, unknown>[];
  components: { securitySchemes: Record<string, unknown>; schemas: Record<string, { required?: string[]; properties?: Record<string, unknown> }> };
  paths: Record<string, Record<string, Operation>>;
};

let stack: Stack;
let dir: string;
let api: string;
let doc: Doc;
let vmId: string;
/** What the API actually answered: "<method> <path template> <status>" → error text (or "" for 2xx). */
const seen = new Map<string, string[]>();

const call = async (method: "GET" | "POST", template: string, id: string, init: { body?: string; headers?: Record<string, string> } = {}) => {
  const res = await fetch(`${api}${template.replace("{vm_id}", id)}`, {
    method,
    headers: { authorization: `Bearer ${KEY}`, ...init.headers },
    ...(init.body !== undefined && { body: init.body }),
  });
  const json = (await res.json()) as Record<string, unknown>;
  const key = `${method.toLowerCase()} ${template} ${res.status}`;
  seen.set(key, [...(seen.get(key) ?? []), typeof json.error === "string" ? json.error : ""]);
  return { status: res.status, json };
};

beforeAll(async () => {
  dir = seededDataDir("hatch-openapi-sleep-");
  const config = testConfig({
    httpAddr: { host: "127.0.0.1", port: 0 },
    simAddr: { host: "127.0.0.1", port: 0 },
    dataDir: dir,
    apiKeys: [KEY],
    simIpPrefix: "127.0.61",
    simRestoreMs: 0,
    idleTimeoutMs: 0,
  });
  stack = await startStack(config, silentLogger, { api: true, simulator: true, sleeperOptions: { minDrainMs: 50, pollMs: 20 } });
  api = stack.api!.url;
  doc = (await (await fetch(`${api}/openapi.json`)).json()) as Doc;
  vmId = (await stack.simulator!.createVm()).id;
  const route = await fetch(`${api}/vms/${vmId}/routes`, {
    method: "POST",
    headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ target_port: 8080 }),
  });
  expect(route.status).toBe(201);
}, 30_000);

afterAll(async () => {
  await stack?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe("OpenAPI: the sleep and activity endpoints", () => {
  it("lists both paths with their methods, response codes and the route API's auth", () => {
    const sleep = doc.paths["/vms/{vm_id}/sleep"]!;
    const activity = doc.paths["/vms/{vm_id}/activity"]!;
    expect(Object.keys(sleep)).toEqual(["post"]);
    expect(Object.keys(activity)).toEqual(["get"]);
    expect(Object.keys(sleep.post!.responses).sort()).toEqual(["200", "400", "401", "404", "409", "413", "415", "502", "503"]);
    expect(Object.keys(activity.get!.responses).sort()).toEqual(["200", "401", "404", "503"]);
    for (const op of [sleep.post!, activity.get!]) {
      expect(op.parameters?.map((p) => p.name)).toEqual(["vm_id"]);
      // No operation-level override: the document's Bearer-or-X-API-Key requirement applies.
      expect(op.security ?? doc.security).toEqual([{ bearer: [] }, { apiKey: [] }]);
    }
    expect(doc.components.securitySchemes.apiKey).toEqual({ type: "apiKey", in: "header", name: "X-API-Key" });
  });

  it("documents the body and the answers with the schemas generated from the handlers' valibot schemas", () => {
    const post = doc.paths["/vms/{vm_id}/sleep"]!.post!;
    expect(post.requestBody).toEqual({ required: false, content: { "application/json": { schema: { $ref: "#/components/schemas/SleepRequest" } } } });
    expect(doc.components.schemas.SleepRequest).toMatchObject({ type: "object", properties: { action: { enum: ["snapshot", "stop"] } }, required: [] });
    expect(post.responses["200"]!.content!["application/json"]!.schema).toEqual({ $ref: "#/components/schemas/Vm" });
    const get = doc.paths["/vms/{vm_id}/activity"]!.get!;
    expect(get.responses["200"]!.content!["application/json"]!.schema).toEqual({ $ref: "#/components/schemas/Activity" });
    for (const [code, r] of Object.entries({ ...post.responses, ...get.responses })) {
      if (code === "200") continue;
      const media = r.content!["application/json"]!;
      expect(media.schema, code).toEqual({ $ref: "#/components/schemas/Error" });
      const texts = media.examples ? Object.values(media.examples).map((e) => e.value) : [media.example];
      for (const body of texts) expect(Object.keys(body!), code).toEqual(["error"]);
    }
  });

  it("the Activity schema's fields are exactly what GET /vms/{vm_id}/activity answers", async () => {
    const { status, json } = await call("GET", "/vms/{vm_id}/activity", vmId);
    expect(status).toBe(200);
    const schema = doc.components.schemas.Activity!;
    expect([...schema.required!].sort()).toEqual(Object.keys(json).sort());
    expect(Object.keys(schema.properties!).sort()).toEqual(Object.keys(json).sort());
    expect(v.safeParse(ActivitySchema, json).success).toBe(true);
    expect(json).toMatchObject({ vm_id: vmId, state: "running", last_activity_at: null, open_connections: 0, idle_timeout_s: 0, sleeps_at: null, sleep: null });
    expect(typeof json.idle_since).toBe("string");
  });

  it("POST /vms/{vm_id}/sleep answers the VM as the Vm schema has it; a second sleep is the documented 409", async () => {
    const done = await call("POST", "/vms/{vm_id}/sleep", vmId, { body: '{"action":"snapshot"}', headers: { "content-type": "application/json" } });
    expect(done.status).toBe(200);
    expect(done.json).toMatchObject({ id: vmId, state: "snapshotted" });
    for (const field of doc.components.schemas.Vm!.required!) expect(done.json).toHaveProperty(field);
    const again = await call("POST", "/vms/{vm_id}/sleep", vmId);
    expect(again.status).toBe(409);
    const examples = doc.paths["/vms/{vm_id}/sleep"]!.post!.responses["409"]!.content!["application/json"]!.examples!;
    expect(again.json.error).toBe(examples.not_running!.value.error);
  });

  it("every status the endpoints answered is documented, with the documented text where it is fixed", async () => {
    await call("POST", "/vms/{vm_id}/sleep", vmId, { body: '{"force":true}', headers: { "content-type": "application/json" } });
    await call("POST", "/vms/{vm_id}/sleep", vmId, { body: '{"action":"hibernate"}', headers: { "content-type": "application/json" } });
    await call("POST", "/vms/{vm_id}/sleep", vmId, { body: "{}", headers: { "content-type": "text/plain" } });
    await call("POST", "/vms/{vm_id}/sleep", "vm_ghost");
    await call("GET", "/vms/{vm_id}/activity", "vm_ghost");
    await call("GET", "/vms/{vm_id}/activity", vmId, { headers: { authorization: "Bearer wrong" } });
    await call("POST", "/vms/{vm_id}/sleep", vmId, { headers: { authorization: "" } });

    const expected = [
      "post /vms/{vm_id}/sleep 200", "post /vms/{vm_id}/sleep 409", "post /vms/{vm_id}/sleep 400", "post /vms/{vm_id}/sleep 415",
      "post /vms/{vm_id}/sleep 404", "post /vms/{vm_id}/sleep 401", "get /vms/{vm_id}/activity 200", "get /vms/{vm_id}/activity 404", "get /vms/{vm_id}/activity 401",
    ];
    expect([...seen.keys()].sort()).toEqual(expected.sort());
    for (const [key, errors] of seen) {
      const [method, path, status] = key.split(" ") as [string, string, string];
      const documented = doc.paths[path]![method]!.responses[status];
      expect(documented, key).toBeDefined();
      const media = documented!.content?.["application/json"];
      const texts = media?.examples ? Object.values(media.examples).map((e) => e.value.error) : media?.example ? [media.example.error] : [];
      if (["400", "404", "415"].includes(status)) for (const e of errors) expect(texts, key).toContain(e);
    }
    expect(seen.get("post /vms/{vm_id}/sleep 400")).toEqual(['unknown field "force"', 'action must be "snapshot" or "stop"']);
    expect(seen.get("post /vms/{vm_id}/sleep 401")).toEqual(["missing api key"]);
    expect(seen.get("get /vms/{vm_id}/activity 401")).toEqual(["invalid api key"]);
  });
});
