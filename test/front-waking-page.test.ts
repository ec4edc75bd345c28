/** The waking page's content and the per-VM wake record it reads (its behaviour in a browser: browser-waking-page). */
import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { WAKING_PAGE_HEADERS, wakingPage } from "../src/wake/page.ts";
import { median, WakeHistory } from "../src/lifecycle/wake-history.ts";

const hash = (text: string) => `'sha256-${createHash("sha256").update(text).digest("base64")}'`;

describe("wakingPage", () => {
  it("shows the elapsed time and, once known, the VM's usual wake time", () => {
    const first = wakingPage("app", { elapsedMs: 1234 });
    expect(first).toContain('data-elapsed="1234"');
    expect(first).toContain(">1.2 s<");
    expect(first).toContain("This is the first wake of this VM seen here.");
    expect(first).not.toContain('id="bar"');
    const later = wakingPage("app", { elapsedMs: 15_600, recentMs: [900, 700, 5000] });
    expect(later).toContain(">16 s<");
    expect(later).toContain('data-usual="900"');
    expect(later).toContain("It usually takes about 0.9 s (the median of its last 3 wakes).");
    expect(later).toContain('id="bar"');
    expect(wakingPage("app", { elapsedMs: 0, recentMs: [800] })).toContain("(the median of its last wake)");
  });

  it("reloads by script (keeping the #fragment), with a meta refresh only for browsers without JavaScript", () => {
    const html = wakingPage("app", { elapsedMs: 0 });
    expect(html).toContain("location.reload()");
    expect(html.match(/http-equiv="refresh"/g)).toHaveLength(1);
    expect(html).toMatch(/<noscript><meta http-equiv="refresh" content="1"><\/noscript>/);
    expect(WAKING_PAGE_HEADERS).not.toHaveProperty("refresh");
  });

  it("loads nothing from elsewhere, and its policy allows exactly its own style and script", () => {
    const html = wakingPage("app", { elapsedMs: 10, recentMs: [1] });
    expect(html).not.toMatch(/\b(src|href)=|https?:\/\/|url\(|@import/);
    const style = /<style>([\s\S]*?)<\/style>/.exec(html)![1]!;
    const script = /<script>([\s\S]*?)<\/script>/.exec(html)![1]!;
    expect(WAKING_PAGE_HEADERS["content-security-policy"]).toBe(`default-src 'none'; style-src ${hash(style)}; script-src ${hash(script)}; base-uri 'none'; form-action 'none'`);
  });

  it("escapes the subdomain everywhere", () => {
    const html = wakingPage(`x"><script>alert(1)</script>`, { elapsedMs: 0 });
    expect(html).not.toContain("<script>alert");
    expect(html.match(/<script>/g)).toHaveLength(1);
  });
});

describe("WakeHistory", () => {
  it("keeps the last five durations per VM, only of wakes that brought the VM up", () => {
    const h = new WakeHistory();
    h.began("vm1", 1000);
    expect(h.startedAt("vm1")).toBe(1000);
    h.ended("vm1", false);
    expect(h.startedAt("vm1")).toBeUndefined();
    expect(h.durations("vm1")).toEqual([]);
    expect(h.lastUpAt("vm1")).toBeUndefined();
    for (const ms of [100, 200, 300, 400, 500, 600.4]) {
      h.began("vm1");
      h.ended("vm1", true, ms, 5000 + ms);
    }
    expect(h.durations("vm1")).toEqual([200, 300, 400, 500, 600]);
    expect(h.lastUpAt("vm1")).toBe(5600.4);
    // Up after a wake made elsewhere: when it came up, and no duration of ours.
    h.ended("vm2", true, undefined, 9000);
    expect([h.lastUpAt("vm2"), h.durations("vm2")]).toEqual([9000, []]);
  });

  it("forgets the least recently woken VM past its cap", () => {
    const h = new WakeHistory(5, 2);
    h.ended("a", true, 1);
    h.ended("b", true, 2);
    h.ended("a", true, 3);
    h.ended("c", true, 4);
    expect([h.durations("a"), h.durations("b"), h.durations("c")]).toEqual([[1, 3], [], [4]]);
    expect([h.lastUpAt("a") !== undefined, h.lastUpAt("b"), h.lastUpAt("c") !== undefined]).toEqual([true, undefined, true]);
  });

  it("median: the middle one, or the mean of the middle two", () => {
    expect(median([])).toBeUndefined();
    expect(median([5000, 700, 900])).toBe(900);
    expect(median([1, 2, 3, 10])).toBe(3);
  });
});
