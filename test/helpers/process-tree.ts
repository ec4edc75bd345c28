/**
 * A process and every process under it, from /proc (Linux): which of them are alive, and their
 * resident memory together (what a user's `npm start` costs the machine, whichever of its
 * processes holds the memory). Used by the tests and by the footprint benchmark.
 */
import { readdirSync, readFileSync } from "node:fs";

/** `root` and its descendants, from each process's parent pid. */
export function treePids(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)]);
    } catch {
      // exited while we looked
    }
  }
  const pids = [root];
  for (let i = 0; i < pids.length; i++) pids.push(...(children.get(pids[i]!) ?? []));
  return pids;
}

/** True while `pid` runs (a zombie waiting to be reaped has stopped running). */
export function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/** The sum of VmRSS over the tree, in bytes (0 once it has exited). */
export function treeRss(root: number): number {
  let kb = 0;
  for (const pid of treePids(root)) {
    try {
      kb += Number(/^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0);
    } catch {
      // exited while we looked
    }
  }
  return kb * 1024;
}

/** Samples a tree's RSS every `everyMs` and keeps the peak (a short peak can fall between two samples). */
export class RssSampler {
  peak = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly root: number,
    everyMs = 25,
  ) {
    this.timer = setInterval(() => this.sample(), everyMs);
    this.sample();
  }

  /** The RSS now (also counted towards the peak). */
  sample(): number {
    const rss = treeRss(this.root);
    this.peak = Math.max(this.peak, rss);
    return rss;
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

/** Megabytes (10^6 bytes, as the goals are written), one decimal. */
export const mb = (bytes: number) => (bytes / 1e6).toFixed(1);
