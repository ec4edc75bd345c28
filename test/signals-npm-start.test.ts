/**
 * A signal to the process a user or a service manager started, `npm start`'s own npm (not the
 * whole process group, as Ctrl-C sends): every process of the product stops within 7 s, the
 * Traefik it runs included, and the data directory is free for the next start. It used to stop
 * npm and its shell only: the product went on serving, holding the data directory.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { traefikBinary } from "./helpers/env.ts";
import { freePorts, killTraefiks, REPO, traefikPids, waitFor } from "./helpers/front.ts";
import { seedPglite } from "./helpers/pglite-template.ts";
import { running, treePids } from "./helpers/process-tree.ts";

const bin = traefikBinary();
const front: Record<string, string> = bin ? { HATCH_PROXY_FRONT: "traefik", TRAEFIK_BIN: bin } : { HATCH_PROXY_FRONT: "embedded" };
if (!bin) console.warn("[signals-npm-start] no Traefik binary: SIGTERM is tested with the embedded proxy only");

const cases: [NodeJS.Signals, Record<string, string>, string][] = [
  ["SIGTERM", front, "127.0.147"],
  ["SIGINT", { HATCH_PROXY_FRONT: "embedded" }, "127.0.148"],
];

describe.each(cases)("%s to npm start's pid", (signal, env, ipPrefix) => {
  let child: ChildProcess | undefined;
  let dir: string | undefined;
  let product: number[] = [];
  afterEach(() => {
    if (child?.exitCode === null) child.kill("SIGKILL");
    // A failure leaves the product running without its npm: end it by pid.
    for (const pid of product.filter(running)) process.kill(pid, "SIGKILL");
    if (dir) {
      killTraefiks(dir);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("stops every process of the product within 7 s and frees the data directory", { timeout: 90_000 }, async () => {
    dir = mkdtempSync(join(tmpdir(), "hatch-npm-start-"));
    seedPglite(join(dir, "data", "pglite"));
    const ports = await freePorts();
    let out = "";
    const npm = (child = spawn("npm", ["start"], {
      cwd: REPO,
      env: {
        ...process.env,
        HATCH_DATA_DIR: join(dir, "data"),
        HATCH_HTTP_ADDR: `127.0.0.1:${ports.api}`,
        HATCH_PROXY_ADDR: `127.0.0.1:${ports.proxy}`,
        HATCH_WAKE_ADDR: `127.0.0.1:${ports.wake}`,
        HATCH_SIM_ADDR: `127.0.0.1:${ports.sim}`,
        HATCH_SIM_IP_PREFIX: ipPrefix,
        ...env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    }));
    npm.stdout!.on("data", (c) => (out += c));
    npm.stderr!.on("data", (c) => (out += c));
    await waitFor(() => out.includes("Try it:") || npm.exitCode !== null, "npm start's banner", 60_000);
    expect(npm.exitCode, out).toBeNull();
    expect((await fetch(`http://127.0.0.1:${ports.api}/readyz`)).status).toBe(200);

    product = [...new Set([...treePids(npm.pid!), ...traefikPids(dir)])];
    // npm and node at least, and the Traefik it runs when there is one.
    expect(product.length).toBeGreaterThanOrEqual(bin && env.TRAEFIK_BIN ? 3 : 2);
    process.kill(npm.pid!, signal);
    await waitFor(() => product.every((pid) => !running(pid)), `every process of the product to stop (${product.join(", ")})`, 7000, 50);
    expect(traefikPids(dir)).toEqual([]);
    expect(existsSync(join(dir, "data", "hatch-proxy.pid"))).toBe(false);
  });
});
