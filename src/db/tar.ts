/**
 * Extracts a gzipped tar of regular files and directories (what PGlite's dumpDataDir writes) into
 * a directory, streaming: a few chunks in memory at a time, where PGlite's own loader holds the
 * whole archive, and keeps it for the life of the database.
 */
import { closeSync, mkdirSync, openSync, writeFileSync, writeSync } from "node:fs";
import { createReadStream } from "node:fs";
import { dirname, join, normalize, sep } from "node:path";
import { createGunzip } from "node:zlib";

const BLOCK = 512;

/** The entry's path relative to the target (`/a`, `./a` and `a` are all `a`), refusing any that would leave it. */
function relative(name: string): string {
  const rel = normalize(name.replace(/^\/+/, ""));
  if (rel === ".." || rel.startsWith(`..${sep}`)) throw new Error(`tar entry ${JSON.stringify(name)} leaves the target directory`);
  return rel;
}

const text = (b: Buffer, from: number, len: number) => b.toString("utf8", from, from + len).replace(/\0.*$/s, "");

/**
 * Extracts `file` into `dest`. Files named in `last` are written after everything else, so that a
 * copy cut short (a crash) is recognizably incomplete: PGlite's data directory counts as a
 * database only once PG_VERSION is there.
 */
export async function extractTarGz(file: string, dest: string, last: readonly string[] = []): Promise<void> {
  let pending: Buffer = Buffer.alloc(0);
  let entry: { fd: number | undefined; left: number; pad: number } | undefined;
  const held: [string, Buffer[], number][] = [];
  let ended = false;
  for await (const chunk of createReadStream(file).pipe(createGunzip())) {
    pending = pending.length ? Buffer.concat([pending, chunk as Buffer]) : (chunk as Buffer);
    for (;;) {
      if (entry) {
        const take = Math.min(entry.left, pending.length);
        if (take > 0) {
          if (entry.fd !== undefined) writeSync(entry.fd, pending, 0, take);
          else held.at(-1)![1].push(Buffer.from(pending.subarray(0, take)));
          pending = pending.subarray(take);
          entry.left -= take;
        }
        if (entry.left > 0) break;
        const pad = Math.min(entry.pad, pending.length);
        pending = pending.subarray(pad);
        entry.pad -= pad;
        if (entry.pad > 0) break;
        if (entry.fd !== undefined) closeSync(entry.fd);
        entry = undefined;
      }
      if (ended || pending.length < BLOCK) break;
      const header = pending.subarray(0, BLOCK);
      pending = pending.subarray(BLOCK);
      if (header.every((b) => b === 0)) {
        ended = true;
        break;
      }
      const prefix = header.toString("latin1", 257, 262) === "ustar" ? text(header, 345, 155) : "";
      const name = prefix ? `${prefix}/${text(header, 0, 100)}` : text(header, 0, 100);
      const size = parseInt(text(header, 124, 12).trim() || "0", 8);
      const mode = parseInt(text(header, 100, 8).trim() || "644", 8) & 0o777;
      const type = String.fromCharCode(header[156]!);
      const rel = relative(name);
      const path = join(dest, rel);
      if (type === "5") {
        mkdirSync(path, { recursive: true, mode: mode || 0o700 });
        continue;
      }
      if (type !== "0" && type !== "\0") throw new Error(`tar entry ${JSON.stringify(name)} has type ${JSON.stringify(type)}: only files and directories are supported`);
      mkdirSync(dirname(path), { recursive: true });
      const deferred = last.includes(rel);
      if (deferred) held.push([path, [], mode]);
      entry = { fd: deferred ? undefined : openSync(path, "w", mode || 0o600), left: size, pad: (BLOCK - (size % BLOCK)) % BLOCK };
    }
  }
  if (entry) throw new Error(`${file} ends in the middle of an entry`);
  for (const [path, chunks, mode] of held) writeFileSync(path, Buffer.concat(chunks), { mode: mode || 0o600 });
}
