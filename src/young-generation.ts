/**
 * A ceiling on V8's young generation. V8 starts each of its two semi-spaces at 1 MB and doubles
 * them under allocation up to 16 MB, and keeps them: after a burst of work (1,000 routes created,
 * a wake storm) 32 MB of new space stayed resident until V8's memory reducer happened to run,
 * 25 to 100 s later, or not at all. Node 20 reads the maximum (--max-semi-space-size) only when
 * the process starts, so the ceiling works on the growth factor instead: after each GC, growth is
 * allowed while the new space is under the ceiling and stopped once it reaches it. Two route API
 * servers side by side under the same load (ten interleaved rounds) spent the same CPU per create
 * with this ceiling as with V8's default, and as with the new space pinned at its first 2 MB; the
 * ceiling keeps some room over the pin for what lives longer than a request in a busy process
 * (requests held while a VM wakes), which a pinned young generation would promote at once.
 */
import { PerformanceObserver } from "node:perf_hooks";
import { getHeapSpaceStatistics, setFlagsFromString } from "node:v8";

/** The default ceiling: semi-spaces of 4 MB (8 MB of new space). */
export const YOUNG_GENERATION_CEILING = 8 * 1024 * 1024;

const newSpaceSize = () => getHeapSpaceStatistics().find((s) => s.space_name === "new_space")?.space_size ?? 0;

let stop: (() => void) | undefined;

/** Keeps the new space at or under `ceiling` bytes from now on (one per process); returns the undo. */
export function capYoungGeneration(ceiling = YOUNG_GENERATION_CEILING): () => void {
  stop?.();
  let growing = true;
  const steer = () => {
    const grow = newSpaceSize() < ceiling;
    if (grow === growing) return;
    setFlagsFromString(`--semi-space-growth-factor=${grow ? 2 : 1}`);
    growing = grow;
  };
  const observer = new PerformanceObserver(steer);
  observer.observe({ entryTypes: ["gc"] });
  steer();
  stop = () => {
    observer.disconnect();
    if (!growing) setFlagsFromString("--semi-space-growth-factor=2");
    stop = undefined;
  };
  return stop;
}
