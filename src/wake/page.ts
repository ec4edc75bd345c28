/** The small self-reloading page browsers get while their VM wakes. */
import { createHash } from "node:crypto";
import type { IncomingMessage } from "node:http";
import { median } from "../lifecycle/wake-history.ts";

/** True for a top-level browser navigation: a GET that accepts HTML and is not a sub-resource fetch. */
export function wantsWakingPage(req: IncomingMessage): boolean {
  if (req.method !== "GET") return false;
  const accept = req.headers.accept;
  if (!accept || !accept.includes("text/html")) return false;
  // Browsers that send Fetch Metadata tell us when this is an iframe/XHR/image: only documents get the page.
  const dest = req.headers["sec-fetch-dest"];
  return dest === undefined || dest === "document";
}

const ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Escapes text for HTML content and attribute values. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c]!);
}

/** What the page can say about this wake. */
export interface WakeProgress {
  /** How long the wake has been running (ms). */
  elapsedMs: number;
  /** This VM's last wake durations (ms), as this process saw them. */
  recentMs?: readonly number[];
}

/** Pause before the page asks again; the server then holds the request until the VM answers or HATCH_WAKE_PAGE_AFTER passes. */
export const RELOAD_AFTER_MS = 250;

const STYLE = `body{font:16px/1.5 system-ui,sans-serif;display:grid;place-items:center;min-height:90vh;margin:0;color:#222;background:#fafafa}
main{max-width:32rem;padding:1.5rem}h1{font-size:1.4rem;font-weight:600;margin:0 0 .5rem}
.clock{font:600 2.5rem/1.2 ui-monospace,monospace;margin:.5rem 0}
.bar{height:.4rem;background:#e4e4e4;border-radius:.2rem;overflow:hidden}.bar i{display:block;height:100%;width:0;background:#3b7ddd;transition:width .1s linear}
.note{color:#666;font-size:.9rem}`;

// Static, so the Content-Security-Policy can name it by hash; the numbers come from data attributes.
// location.reload() always fetches the document again and keeps path, query and fragment: a
// refresh to the same URL with a #fragment is only a jump inside the page, and nothing reloads.
const SCRIPT = `(function(){var m=document.querySelector("main"),t0=Date.now()-Number(m.dataset.elapsed),u=Number(m.dataset.usual)||0;
var c=document.getElementById("clock"),b=document.getElementById("bar"),l=document.getElementById("late");
function tick(){var ms=Date.now()-t0;c.textContent=(ms/1000).toFixed(1)+" s";
if(u){b.style.width=Math.min(95,ms/u*100)+"%";if(ms>2*u+1000)l.hidden=false;}}
tick();setInterval(tick,100);setTimeout(function(){location.reload();},${RELOAD_AFTER_MS});})();`;

const sha256 = (text: string) => `'sha256-${createHash("sha256").update(text).digest("base64")}'`;

/** Headers sent with the waking page: a 503 that must not be cached, says when to retry, and loads nothing from elsewhere. */
export const WAKING_PAGE_HEADERS = {
  "content-type": "text/html; charset=utf-8",
  "cache-control": "no-store",
  "retry-after": "1",
  "content-security-policy": `default-src 'none'; style-src ${sha256(STYLE)}; script-src ${sha256(SCRIPT)}; base-uri 'none'; form-action 'none'`,
} as const;

const seconds = (ms: number) => `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;

/**
 * The page's HTML: how long this wake has run (counting on in the page), how long the VM's own
 * recent wakes took, and a reload every RELOAD_AFTER_MS until the VM answers. Without JavaScript,
 * a meta refresh reloads every second (which cannot refetch a URL with a #fragment).
 */
export function wakingPage(subdomain: string, progress: WakeProgress): string {
  const name = escapeHtml(subdomain);
  const recent = progress.recentMs ?? [];
  const usual = median(recent);
  const usualText =
    usual === undefined
      ? "This is the first wake of this VM seen here."
      : `It usually takes about ${seconds(usual)} (the median of its last ${recent.length === 1 ? "wake" : `${recent.length} wakes`}).`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<noscript><meta http-equiv="refresh" content="1"></noscript>
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>waking ${name}…</title>
<style>${STYLE}</style>
</head>
<body>
<main data-elapsed="${Math.max(0, Math.round(progress.elapsedMs))}" data-usual="${usual ?? 0}">
<h1>waking ${name}…</h1>
<p>The VM behind this address was asleep and is starting. This page reloads by itself and shows the app as soon as it answers.</p>
<div class="clock" id="clock">${seconds(progress.elapsedMs)}</div>
${usual === undefined ? "" : `<div class="bar"><i id="bar"></i></div>\n`}<p class="note">${usualText}</p>
<p class="note" id="late" hidden>Longer than usual: still trying until the wake timeout.</p>
</main>
<script>${SCRIPT}</script>
</body>
</html>
`;
}
