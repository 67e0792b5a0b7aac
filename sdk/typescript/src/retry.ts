/** Exponential backoff with full jitter: before retry `k` (from 1) a publisher waits a random
 * time up to `min(maxDelayMs, initialMs × 2^(k-1))`. Retrying is always safe: a SignedEvent's
 * bytes never change, and ATP records one event per id. */
export interface Retry {
  attempts: number;
  initialMs: number;
  maxDelayMs: number;
}

export const DEFAULT_RETRY: Retry = { attempts: 8, initialMs: 100, maxDelayMs: 5000 };

export function backoffMs(r: Retry, k: number): number {
  return Math.random() * Math.min(r.maxDelayMs, r.initialMs * 2 ** Math.max(k - 1, 0));
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
