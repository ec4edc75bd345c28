/**
 * One process per directory: PGlite has no locking of its own (two processes writing one data
 * directory corrupt it), and the simulator rewrites its state file as soon as it loads it. A
 * directory carries `hatch-proxy.pid` while a process uses it.
 *
 * A pid alone does not name a process for long: node is PID 1 in a container and gets PID 1 again
 * after a restart, and any pid is reused eventually. So a lock counts as held only when its process
 * is alive, is not this process (unless this process took it), and started before the lock file
 * was written (a process that started later cannot have written it).
 */
import { mkdirSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export const LOCK_FILE = "hatch-proxy.pid";

/** Thrown when another live process holds the directory. */
export class DataDirInUseError extends Error {
  constructor(
    readonly dir: string,
    readonly pid: number,
    what = `the embedded database in ${dir}`,
  ) {
    super(
      `${what} is in use by process ${pid}; ${what.startsWith("the embedded database") ? "PGlite serves one process only: " : ""}` +
        "stop that process, use another HATCH_DATA_DIR, or set DATABASE_URL to share PostgreSQL between processes " +
        `(if process ${pid} is not hatch-proxy, delete ${join(dir, LOCK_FILE)})`,
    );
    this.name = "DataDirInUseError";
  }
}

// Lock files this process holds: a lock carrying our own pid is ours only if it is listed here.
const held = new Set<string>();

/**
 * Takes `<dir>/hatch-proxy.pid`, or throws DataDirInUseError naming the live holder. A lock left by
 * a process that is gone, by an earlier life of this pid, or by a pid now used by a younger
 * process, is taken over. Returns the release (which removes the file only while it is ours).
 */
export function lockDirectory(dir: string, what?: string): () => void {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, LOCK_FILE);
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      writeFileSync(file, `${process.pid}\n`, { flag: "wx" });
      held.add(file);
      return () => release(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    const seen = readHolder(file);
    if (!seen) continue;
    if (holds(file, seen.pid, seen.writtenAt)) throw new DataDirInUseError(dir, seen.pid, what);
    setAside(file, seen.text);
  }
  throw new DataDirInUseError(dir, readHolder(file)?.pid ?? 0, what);
}

function release(file: string): void {
  held.delete(file);
  try {
    if (readFileSync(file, "utf8").trim() === String(process.pid)) unlinkSync(file);
  } catch {
    // Already gone: nothing to release.
  }
}

function readHolder(file: string): { pid: number; text: string; writtenAt: number } | undefined {
  try {
    const text = readFileSync(file, "utf8");
    return { pid: Number(text.trim()), text, writtenAt: statSync(file).mtimeMs };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

/** True when `pid` is a live process that can have written a lock at `writtenAt`. */
function holds(file: string, pid: number, writtenAt: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  if (pid === process.pid) return held.has(file);
  if (!isAlive(pid)) return false;
  const started = startedAt(pid);
  // Clock ticks and the boot time's whole seconds make the start time approximate.
  return started === undefined || started <= writtenAt + 2000;
}

/**
 * Moves a stale lock out of the way. Two processes may find the same stale file: the one whose
 * rename moved a fresh lock instead (taken by the other meanwhile) puts it back.
 */
function setAside(file: string, staleText: string): void {
  const aside = `${file}.${process.pid}.stale`;
  try {
    renameSync(file, aside);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  if (readFileSync(aside, "utf8") !== staleText) {
    try {
      renameSync(aside, file);
      return;
    } catch {
      // Fall through: remove our copy either way.
    }
  }
  unlinkSync(aside);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** When `pid` started (epoch ms), from /proc; undefined where there is no /proc. */
function startedAt(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Field 22 (starttime, in clock ticks since boot), counted after the command name's ")".
    const ticks = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]);
    const boot = Number(/^btime (\d+)$/m.exec(readFileSync("/proc/stat", "utf8"))?.[1]);
    // /proc reports in USER_HZ, 100 per second on Linux.
    return Number.isFinite(ticks) && Number.isFinite(boot) ? boot * 1000 + ticks * 10 : undefined;
  } catch {
    return undefined;
  }
}
