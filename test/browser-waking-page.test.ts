/**
 * The waking page in a real browser (Debian's Chromium over the DevTools protocol), through the
 * public front of `npm start` (Traefik when there is one): a URL with a #fragment, as hash-routed
 * single-page apps use, must end on the app, with path, query and fragment kept. A Refresh to the
 * same URL only jumped to the fragment, and the page said "waking" forever.
 */
import { rmSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { chromiumBinary, launchChromium, type Browser } from "./helpers/browser.ts";
import { traefikBinary } from "./helpers/env.ts";
import { killTraefiks, startProduct, stopProcess, waitFor, type Product } from "./helpers/front.ts";

const chromium = chromiumBinary();
if (!chromium) console.warn("[browser-waking-page] no Chromium at /usr/bin/chromium (apt-get install chromium): the browser test is SKIPPED");
const traefik = traefikBinary();

describe.skipIf(!chromium)(`the waking page in Chromium, through ${traefik ? "Traefik" : "the embedded proxy"}`, () => {
  let product: Product;
  let browser: Browser;
  let vmId: string;
  let sim: string;

  beforeAll(async () => {
    product = await startProduct({
      ipPrefix: "127.0.147",
      env: {
        ...(traefik ? { HATCH_PROXY_FRONT: "traefik", TRAEFIK_BIN: traefik } : { HATCH_PROXY_FRONT: "embedded" }),
        // Long enough for the page (shown after HATCH_WAKE_PAGE_AFTER, 1 s) to reload a few times.
        HATCH_SIM_RESTORE_MS: "2500",
      },
    });
    sim = `http://127.0.0.1:${product.ports.sim}`;
    vmId = ((await (await fetch(`${sim}/vms`, { method: "POST" })).json()) as { id: string }).id;
    const res = await fetch(`${product.apiUrl}/vms/${vmId}/routes`, {
      method: "POST",
      headers: { authorization: `Bearer ${product.key()}`, "content-type": "application/json" },
      body: JSON.stringify({ subdomain: "spa", target_port: 8080 }),
    });
    expect(res.status).toBe(201);
    browser = await launchChromium(chromium!);
    await browser.page.send("Page.enable");
  }, 90_000);

  afterAll(async () => {
    // The product first: whatever happens to the browser, its Traefik must not outlive the test.
    if (product) {
      await stopProcess(product.child);
      killTraefiks(product.dir);
      rmSync(product.dir, { recursive: true, force: true });
    }
    await browser?.close();
  });

  /** Puts the VM to sleep the way the idle sweeper does: answered once asleep and gone from Traefik's routers. */
  async function putToSleep() {
    const r = await fetch(`${product.apiUrl}/vms/${vmId}/sleep`, { method: "POST", headers: { authorization: `Bearer ${product.key()}` } });
    expect(r.status, await r.clone().text()).toBe(200);
    expect(((await r.json()) as { state: string }).state).toBe("snapshotted");
  }

  /** Opens `url` and follows what the tab shows until the app's answer is there; what it saw on the way. */
  async function visit(url: string) {
    const started = performance.now();
    await browser.page.send("Page.navigate", { url });
    const seen = new Set<string>();
    let last: { href: string; title: string; text: string } | undefined;
    const look = async () => {
      last = (await browser.page.evaluate<typeof last>("({ href: location.href, title: document.title, text: document.body ? document.body.innerText : '' })")) ?? last;
      if (last?.title.startsWith("waking")) seen.add(last.text);
      return last?.text.includes('"vm_id"') ?? false;
    };
    await waitFor(look, "the app to show in the tab", 20_000, 50).catch((err: Error) => {
      throw new Error(`${err.message}; the tab shows ${JSON.stringify(last)}`);
    });
    console.info(`[browser-waking-page] ${url}: the app after ${Math.round(performance.now() - started)} ms, the waking page seen in ${seen.size} states (its clock ticks)`);
    return { final: last!, waking: [...seen] };
  }

  it("reaches the app for a URL with a #fragment, keeping path, query and fragment", async () => {
    await putToSleep();
    const url = `http://spa.hatch.local:${product.ports.proxy}/app/inbox?folder=42#/message/7`;
    const { final, waking } = await visit(url);
    expect(waking.length, "the waking page was shown").toBeGreaterThan(0);
    expect(waking.join("\n")).toMatch(/\d+\.\d s/);
    expect(final.href).toBe(url);
    expect(JSON.parse(final.text)).toMatchObject({ vm_id: vmId, method: "GET", path: "/app/inbox", query: { folder: "42" } });
  }, 45_000);

  it("tells how long this VM usually takes, from its own last wake", async () => {
    await putToSleep();
    const url = `http://spa.hatch.local:${product.ports.proxy}/#/second`;
    const { final, waking } = await visit(url);
    expect(waking.join("\n")).toMatch(/usually takes about \d+\.\d s \(the median of its last wake\)/);
    expect(final.href).toBe(url);
    expect(JSON.parse(final.text)).toMatchObject({ vm_id: vmId, path: "/" });
  }, 45_000);
});
