/** VmPlatform over Hatch's REST VM API (GET /vms, GET /vms/:id, POST /vms/:id/restore|start|snapshot|stop). */
import * as v from "valibot";
import { CredentialRejectedError, isStateConflictText, PlatformUnavailableError, SleepError, VM_STATES, WakeError, type CallOptions, type Vm, type VmPlatform, type VmState } from "./platform.ts";

export interface HatchClientOptions {
  /** Base URL of Hatch's API, e.g. http://127.0.0.1:8080 (no trailing slash needed). */
  baseUrl: string;
  /** Service key; a call's `userKey` takes its place. */
  apiKey?: string | undefined;
  /** Timeout of each get/list call, and of a whole wake unless the call gives its own. */
  timeoutMs: number;
  fetch?: typeof fetch | undefined;
  /** How often a wake re-reads a VM that another caller is already waking. Default 250 ms. */
  pollMs?: number | undefined;
}

const VmSchema = v.looseObject({
  id: v.pipe(v.string(), v.minLength(1)),
  state: v.string(),
  guest_ip: v.optional(v.string()),
});
// Go encodes an empty slice as null.
const VmListSchema = v.nullable(v.array(VmSchema));
const ErrorSchema = v.object({ error: v.string() });

const MAX_ERROR_TEXT = 300;

interface Answer {
  status: number;
  body: unknown;
}

class CallTimeout extends Error {}

/** A VmPlatform (kind "hatch") speaking Hatch's VM API; never puts the key into an error text. */
export function createHatchClient(opts: HatchClientOptions): VmPlatform {
  const base = opts.baseUrl.replace(/\/+$/, "");
  const doFetch = opts.fetch ?? fetch;
  const pollMs = opts.pollMs ?? 250;

  /** One HTTP call under `signal` (the caller's deadline); JSON body or undefined. */
  const call = async (method: "GET" | "POST", path: string, key: string | undefined, deadline: AbortSignal, signal?: AbortSignal): Promise<Answer> => {
    const headers: Record<string, string> = { accept: "application/json" };
    if (key) headers.authorization = `Bearer ${key}`;
    const combined = signal ? AbortSignal.any([deadline, signal]) : deadline;
    try {
      const res = await doFetch(base + path, { method, headers, signal: combined });
      const text = await res.text();
      let body: unknown;
      try {
        body = text ? JSON.parse(text) : undefined;
      } catch {
        body = undefined;
      }
      return { status: res.status, body };
    } catch (err) {
      if (deadline.aborted) throw new CallTimeout();
      if (signal?.aborted) throw err;
      throw new PlatformUnavailableError(scrub(`VM platform unavailable: ${method} ${path} failed (${networkReason(err)})`, key, opts.apiKey), { cause: err });
    }
  };

  const scrubKey = (text: string, key: string | undefined) => scrub(text, key, opts.apiKey);

  const readVm = (a: Answer, what: string, key: string | undefined): Vm => {
    const parsed = v.safeParse(VmSchema, a.body);
    if (!parsed.success) throw new PlatformUnavailableError(scrubKey(`VM platform unavailable: invalid VM object from ${what}`, key));
    return normalise(parsed.output);
  };

  const unexpected = (a: Answer, what: string, key: string | undefined) => {
    const text = scrubKey(`VM platform unavailable: ${what} answered ${a.status}${errorText(a) ? `: ${errorText(a)}` : ""}`, key);
    // A refused key is not an outage: the caller decides what it means for the VM (nothing, here).
    return a.status === 401 ? new CredentialRejectedError(text) : new PlatformUnavailableError(text);
  };

  const get = async (id: string, key: string | undefined, deadline: AbortSignal, signal?: AbortSignal): Promise<Vm | undefined> => {
    const path = `/vms/${encodeURIComponent(id)}`;
    const a = await call("GET", path, key, deadline, signal);
    if (a.status === 404) return undefined;
    if (a.status !== 200) throw unexpected(a, `GET ${path}`, key);
    return readVm(a, `GET ${path}`, key);
  };

  const timeoutError = (what: string, ms: number) => new PlatformUnavailableError(`VM platform unavailable: ${what} timed out after ${ms} ms`);

  return {
    kind: "hatch",

    /** Hatch has no start call; the simulator's API says it has one (its x-hatch-simulator header). */
    async canStart() {
      const res = await doFetch(`${base}/vms`, { headers: opts.apiKey ? { authorization: `Bearer ${opts.apiKey}` } : {}, signal: AbortSignal.timeout(opts.timeoutMs) });
      await res.body?.cancel();
      return res.headers.get("x-hatch-simulator") === "start";
    },

    async get(id, callOpts) {
      const key = keyOf(callOpts, opts.apiKey);
      try {
        return await get(id, key, AbortSignal.timeout(opts.timeoutMs), callOpts?.signal);
      } catch (err) {
        if (err instanceof CallTimeout) throw timeoutError(`GET /vms/${encodeURIComponent(id)}`, opts.timeoutMs);
        throw err;
      }
    },

    async list(callOpts) {
      const key = keyOf(callOpts, opts.apiKey);
      let a: Answer;
      try {
        a = await call("GET", "/vms", key, AbortSignal.timeout(opts.timeoutMs), callOpts?.signal);
      } catch (err) {
        if (err instanceof CallTimeout) throw timeoutError("GET /vms", opts.timeoutMs);
        throw err;
      }
      if (a.status !== 200) throw unexpected(a, "GET /vms", key);
      const parsed = v.safeParse(VmListSchema, a.body);
      if (!parsed.success) throw new PlatformUnavailableError("VM platform unavailable: invalid VM list from GET /vms");
      return (parsed.output ?? []).map(normalise);
    },

    async wake(id, callOpts) {
      const key = keyOf(callOpts, opts.apiKey);
      const timeoutMs = callOpts?.timeoutMs ?? opts.timeoutMs;
      const deadline = AbortSignal.timeout(timeoutMs);
      const signal = callOpts?.signal;
      const vmPath = `/vms/${encodeURIComponent(id)}`;

      const failed = (why: string, cause?: unknown) => new WakeError("failed", scrubKey(`failed to wake vm: ${why}`, key), { cause });

      // Another caller's wake is in flight: wait for its outcome rather than fail with 409.
      const awaitRunning = async (): Promise<Vm> => {
        for (;;) {
          await delay(pollMs, AbortSignal.any(signal ? [deadline, signal] : [deadline]));
          const vm = await get(id, key, deadline, signal);
          if (!vm) throw new WakeError("not_found", "vm not found");
          if (vm.state === "running") return vm;
          if (vm.state !== "starting") throw failed(`vm is ${vm.state} after a wake by another caller`);
        }
      };

      const attempt = async (): Promise<Vm> => {
        const vm = await get(id, key, deadline, signal);
        if (!vm) throw new WakeError("not_found", "vm not found");
        if (vm.state === "running") return vm;
        if (vm.state === "starting") return awaitRunning();
        if (vm.state !== "snapshotted" && vm.state !== "stopped") {
          throw new WakeError("conflict", `vm must be snapshotted to restore (current state: ${vm.state})`);
        }
        const op = vm.state === "snapshotted" ? "restore" : "start";
        const a = await call("POST", `${vmPath}/${op}`, key, deadline, signal);
        if (a.status >= 200 && a.status < 300) {
          const woke = readVmOr(a);
          if (woke?.state === "running") return woke;
          return awaitRunning();
        }
        if (op === "start" && (a.status === 404 || a.status === 405)) {
          // Hatch has no start call: a 404 here is the missing endpoint unless the VM itself is gone.
          if (a.status === 404 && !(await get(id, key, deadline, signal))) throw new WakeError("not_found", "vm not found");
          throw new WakeError("unsupported", "cannot start a stopped VM on this platform");
        }
        if (a.status === 401) throw unexpected(a, `POST ${vmPath}/${op}`, key);
        if (a.status === 404) throw new WakeError("not_found", "vm not found");
        if (a.status === 409 || (a.status === 500 && isStateConflictText(errorText(a)))) {
          const now = await get(id, key, deadline, signal);
          if (now?.state === "running") return now;
          if (now?.state === "starting") return awaitRunning();
          throw new WakeError("conflict", scrubKey(errorText(a) || `${op} refused (409)`, key));
        }
        throw failed(errorText(a) || `${op} answered ${a.status}`);
      };

      const readVmOr = (a: Answer): Vm | undefined => {
        const parsed = v.safeParse(VmSchema, a.body);
        return parsed.success ? normalise(parsed.output) : undefined;
      };

      try {
        return await attempt();
      } catch (err) {
        if (err instanceof WakeError || err instanceof CredentialRejectedError) throw err;
        if (deadline.aborted) throw new WakeError("timeout", `vm did not wake within ${timeoutMs} ms`, { cause: err });
        if (signal?.aborted) throw new WakeError("failed", "failed to wake vm: aborted", { cause: err });
        if (err instanceof PlatformUnavailableError) throw failed(err.message, err);
        throw failed("unexpected error", err);
      }
    },

    async sleep(id, action, callOpts) {
      const key = keyOf(callOpts, opts.apiKey);
      const timeoutMs = callOpts?.timeoutMs ?? opts.timeoutMs;
      const deadline = AbortSignal.timeout(timeoutMs);
      const vmPath = `/vms/${encodeURIComponent(id)}`;
      try {
        const a = await call("POST", `${vmPath}/${action}`, key, deadline, callOpts?.signal);
        if (a.status === 401) throw unexpected(a, `POST ${vmPath}/${action}`, key);
        if (a.status === 404) throw new SleepError("not_found", "vm not found");
        if (a.status === 409 || (a.status === 500 && isStateConflictText(errorText(a)))) throw new SleepError("conflict", scrubKey(errorText(a) || `${action} refused (409)`, key));
        if (a.status === 403 && /^snapshot limit reached/.test(errorText(a))) throw new SleepError("limit", errorText(a));
        if (a.status < 200 || a.status >= 300) throw new SleepError("failed", scrubKey(`failed to ${action} vm: ${errorText(a) || `answered ${a.status}`}`, key));
        // A snapshot answers with the snapshot object, stop with the VM: read the VM either way.
        const vm = await get(id, key, deadline, callOpts?.signal);
        if (!vm) throw new SleepError("not_found", "vm not found");
        return vm;
      } catch (err) {
        if (err instanceof SleepError) throw err;
        if (deadline.aborted) throw new SleepError("timeout", `vm did not ${action} within ${timeoutMs} ms`, { cause: err });
        throw err;
      }
    },
  };
}

function keyOf(callOpts: CallOptions | undefined, apiKey: string | undefined): string | undefined {
  return callOpts?.userKey ?? apiKey;
}

function normalise(raw: v.InferOutput<typeof VmSchema>): Vm {
  const known = (VM_STATES as readonly string[]).includes(raw.state);
  // An unknown state is neither routable nor wakeable; keep what the platform said for diagnosis.
  return known ? { ...raw, state: raw.state as VmState } : { ...raw, state: "error", platform_state: raw.state };
}

function errorText(a: Answer): string {
  const parsed = v.safeParse(ErrorSchema, a.body);
  return parsed.success ? parsed.output.error.slice(0, MAX_ERROR_TEXT) : "";
}

function networkReason(err: unknown): string {
  const cause = (err as { cause?: { code?: string } })?.cause;
  if (cause?.code) return cause.code;
  return err instanceof Error ? err.message : "network error";
}

/** Removes any API key from a text that may end up in a response or a log line. */
function scrub(text: string, ...keys: (string | undefined)[]): string {
  let out = text;
  for (const k of keys) if (k && k.length >= 4) out = out.split(k).join("[redacted]");
  return out;
}

function delay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(new CallTimeout());
    const onAbort = () => {
      clearTimeout(t);
      reject(new CallTimeout());
    };
    const t = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
