/** The small self-refreshing page browsers get while their VM wakes. */
import type { IncomingMessage } from "node:http";

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

/** The page's HTML; it reloads itself every second until the VM answers the reload. */
export function wakingPage(subdomain: string): string {
  const name = escapeHtml(subdomain);
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="1">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>waking ${name}…</title>
<style>body{font:16px/1.5 system-ui,sans-serif;display:grid;place-items:center;min-height:90vh;margin:0;color:#333}</style>
</head>
<body>
<main><h1>waking ${name}…</h1><p>The VM behind this address was asleep. This page reloads until it answers.</p></main>
</body>
</html>
`;
}

/** Headers sent with the waking page: a 503 that must not be cached and says when to retry. */
export const WAKING_PAGE_HEADERS = {
  "content-type": "text/html; charset=utf-8",
  "cache-control": "no-store",
  "retry-after": "1",
  refresh: "1",
} as const;
