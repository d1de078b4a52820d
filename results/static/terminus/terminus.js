/**
 * terminus.js: the reference browser client for the Terminus jobs API. It is an ES module with
 * no dependencies, served at /static/terminus/terminus.js.
 *
 * The contract: a watch ends. watchJob() resolves when the job succeeds, rejects when it fails
 * or is cancelled, and rejects with a distinct error when the server cannot be reached after a
 * bounded number of tries. It never spins forever.
 *
 *   import { submitJob, watchJob, JobFailedError, ServerUnreachableError } from "/static/terminus/terminus.js";
 *
 *   const job = await submitJob("diagnostics.fail", { mode: "times", times: 2 });
 *   try {
 *     const done = await watchJob(job.id, { onUpdate: (job) => render(job) });
 *     show(done.result);                          // status "succeeded"
 *   } catch (error) {
 *     if (error instanceof JobFailedError) showError(error.job);   // "failed" or "cancelled"
 *     else if (error instanceof ServerUnreachableError) showOffline(error);
 *     else throw error;                           // JobNotFoundError, AuthenticationError, ApiError, AbortError
 *   }
 *
 * watchJob(id, options) -> Promise<job>
 *   GET {baseUrl}/api/jobs/{id}/ until the job is terminal.
 *   - Long poll (default): the first request is answered at once; each later one carries
 *     `?wait=30` and the last ETag, and the server holds it until the job changes, so the client
 *     asks again at once after an answer. If the server answers "unchanged" early
 *     (a server or proxy that does not hold), the client waits Retry-After first.
 *   - Short poll (`longPoll: false`): waits the server's Retry-After (1 s while running; up to
 *     30 s until a retry is due) between requests.
 *   - Sends the last ETag in If-None-Match; a 304 costs no body.
 *   - On network errors, timeouts, 408/425/429 and 5xx it backs off exponentially with jitter
 *     (base 0.5 s, cap 8 s, or the server's Retry-After if longer). After `maxErrors` (5)
 *     failures in a row it rejects with ServerUnreachableError. Any answer resets the count.
 *   - 404 rejects with JobNotFoundError, 401/403 with AuthenticationError and any other 4xx with
 *     ApiError (its `body` is the API's {"detail", "errors"}). None of them is retried.
 *   - `signal` (AbortSignal) stops the watch at once. The promise rejects with signal.reason,
 *     an "AbortError" DOMException unless you gave a reason.
 *   options: onUpdate(job, {etag}) runs on every new representation (an exception it throws ends
 *   the watch). onRetry({attempt, maxErrors, delayMs, error}) runs before each backoff wait, and
 *   onRecover() when an answer arrives after failures. Also: signal, longPoll (true), wait (30),
 *   baseUrl (""), fetch (globalThis.fetch), headers ({}), credentials ("same-origin"),
 *   maxErrors (5), backoffBaseMs (500), backoffMaxMs (8000), requestTimeoutMs (15000; a long
 *   poll gets wait seconds more).
 *
 * submitJob(type, payload, options) -> Promise<job>   POST /api/jobs/ (202, or 200 for a repeated key)
 * cancelJob(id, options) -> Promise<job>               POST /api/jobs/{id}/cancel/
 * listJobs(options) -> Promise<{results, next, previous}>   GET /api/jobs/ (newest first)
 *   options: baseUrl, fetch, headers, credentials, signal, and csrfToken for POSTs. The CSRF
 *   token defaults to the `csrftoken` cookie, which session authentication needs. submitJob also
 *   takes idempotencyKey, queue and countdown; cancelJob takes reason; listJobs takes pageSize,
 *   status and type. These calls do not retry: one failed request rejects (ApiError,
 *   AuthenticationError, or ServerUnreachableError when there is no answer).
 */

export const DEFAULTS = Object.freeze({
  longPoll: true,
  wait: 30,
  maxErrors: 5,
  backoffBaseMs: 500,
  backoffMaxMs: 8000,
  requestTimeoutMs: 15000,
  baseUrl: "",
  credentials: "same-origin",
});

export const TERMINAL_STATUSES = Object.freeze(["succeeded", "failed", "cancelled"]);

/** Base class of every error this module rejects with (except an abort). */
export class TerminusError extends Error {
  constructor(message, properties = {}) {
    super(message);
    this.name = "TerminusError";
    Object.assign(this, properties);
  }
}

/** The job ended failed or cancelled; `job` is its final representation. */
export class JobFailedError extends TerminusError {
  constructor(job) {
    const reason = [job.error_type, job.error_message].filter(Boolean).join(": ");
    super(`Job ${job.id} ${job.status}${reason ? `: ${reason}` : ""}`, { job, status: job.status });
    this.name = "JobFailedError";
  }
}

/** No such job, or one of another tenant (the API answers 404 for both). */
export class JobNotFoundError extends TerminusError {
  constructor(jobId, detail) {
    super(detail || `No job ${jobId}.`, { jobId, status: 404 });
    this.name = "JobNotFoundError";
  }
}

/** 401/403: not signed in, the session expired, or the token is wrong. */
export class AuthenticationError extends TerminusError {
  constructor(status, detail) {
    super(detail || "Not signed in, or the session has expired.", { status });
    this.name = "AuthenticationError";
  }
}

/** Any other refusal; `body` is the API's {"detail", "errors"} shape when the server sent it. */
export class ApiError extends TerminusError {
  constructor(status, body) {
    super((body && body.detail) || `The server answered ${status}.`, { status, body, errors: (body && body.errors) || {} });
    this.name = "ApiError";
  }
}

/** No usable answer after `attempts` tries in a row; `cause` is the last failure. */
export class ServerUnreachableError extends TerminusError {
  constructor(attempts, cause) {
    const last = cause && cause.message ? ` (last error: ${cause.message})` : "";
    super(`The Terminus server could not be reached: ${attempts} ${attempts === 1 ? "try" : "tries"} in a row failed${last}.`, {
      attempts,
      cause,
    });
    this.name = "ServerUnreachableError";
  }
}

/** A failure worth retrying (no answer, a timeout, 408/425/429/5xx); internal. */
class TransientFailure extends Error {
  constructor(message, retryAfterMs = null) {
    super(message);
    this.name = "TransientFailure";
    this.retryAfterMs = retryAfterMs;
  }
}

const TRANSIENT_STATUSES = new Set([408, 425, 429]);

/**
 * Milliseconds to wait before retry number `attempt` (1, 2, ...). The delay is exponential from
 * `baseMs`, capped at `maxMs`, with "equal jitter": a uniform draw from the upper half of the
 * step, so clients that lost the same server do not come back in lockstep.
 */
export function backoffDelay(attempt, { baseMs = DEFAULTS.backoffBaseMs, maxMs = DEFAULTS.backoffMaxMs, random = Math.random } = {}) {
  const step = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(step / 2 + random() * (step / 2));
}

/** Retry-After as milliseconds: delta-seconds or an HTTP date; null when absent or unreadable. */
export function parseRetryAfter(value, now = Date.now()) {
  if (value == null || String(value).trim() === "") return null;
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  if (/^[-+.\d]+$/.test(text)) return null; // "-1", "1.5": not delta-seconds, and not a date either
  const date = Date.parse(text);
  return Number.isNaN(date) ? null : Math.max(0, date - now);
}

/** The value of cookie `name` in this document, or null (outside a browser: null). */
export function readCookie(name) {
  if (typeof document === "undefined" || !document.cookie) return null;
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return null;
}

export function jobUrl(id, baseUrl = "") {
  return `${baseUrl.replace(/\/+$/, "")}/api/jobs/${encodeURIComponent(id)}/`;
}

function abortReason(signal) {
  return signal.reason !== undefined ? signal.reason : new DOMException("The watch was aborted.", "AbortError");
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) {
      reject(abortReason(signal));
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortReason(signal));
    };
    const timer = setTimeout(() => {
      if (signal) signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    if (signal) signal.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * One HTTP exchange with a deadline: {status, headers, body}. The body is parsed JSON, or null
 * when it is empty or not JSON. A missing answer (network error, timeout, a body cut off) becomes
 * TransientFailure; an abort of `signal` rethrows its reason.
 */
async function exchange(fetchFn, url, init, timeoutMs, signal) {
  const controller = new AbortController();
  let timedOut = false;
  const onAbort = () => controller.abort(abortReason(signal));
  if (signal) {
    if (signal.aborted) throw abortReason(signal);
    signal.addEventListener("abort", onAbort, { once: true });
  }
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort(new DOMException(`no answer within ${timeoutMs} ms`, "TimeoutError"));
  }, timeoutMs);
  try {
    const response = await fetchFn(url, { ...init, signal: controller.signal });
    const text = response.status === 304 ? "" : await response.text();
    let body = null;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch {
        body = null;
      }
    }
    return { status: response.status, headers: response.headers, body };
  } catch (error) {
    if (signal && signal.aborted) throw abortReason(signal);
    if (timedOut) throw new TransientFailure(`no answer within ${timeoutMs} ms`);
    throw new TransientFailure(error && error.message ? error.message : String(error));
  } finally {
    clearTimeout(timer);
    if (signal) signal.removeEventListener("abort", onAbort);
  }
}

/** Throw the error a non-2xx, non-304 answer means; transient ones become TransientFailure. */
function raiseForStatus(answer, jobId) {
  const { status, headers, body } = answer;
  const detail = body && typeof body.detail === "string" ? body.detail : "";
  if (status >= 500 || TRANSIENT_STATUSES.has(status)) {
    throw new TransientFailure(`the server answered ${status}${detail ? `: ${detail}` : ""}`, parseRetryAfter(headers.get("Retry-After")));
  }
  if (status === 401 || status === 403) throw new AuthenticationError(status, detail);
  if (status === 404 && jobId !== undefined) throw new JobNotFoundError(jobId, detail);
  throw new ApiError(status, body);
}

/** Watch one job until it is terminal; see the module header for the contract. */
export function watchJob(id, options = {}) {
  if (typeof id !== "string" || id.trim() === "") {
    return Promise.reject(new TypeError("watchJob needs a job id (a non-empty string)"));
  }
  return watch(id, { ...DEFAULTS, ...options });
}

async function watch(id, o) {
  const fetchFn = o.fetch || globalThis.fetch.bind(globalThis);
  const url = jobUrl(id, o.baseUrl);
  let etag = null;
  let failures = 0;

  for (;;) {
    const headers = { Accept: "application/json", ...(o.headers || {}) };
    if (etag) headers["If-None-Match"] = etag;
    // The first request (no ETag yet) is answered at once; only later ones are held.
    const longPoll = o.longPoll && etag !== null;
    const timeoutMs = o.requestTimeoutMs + (longPoll ? o.wait * 1000 : 0);
    const started = Date.now();
    let answer;
    try {
      answer = await exchange(
        fetchFn,
        longPoll ? `${url}?wait=${encodeURIComponent(o.wait)}` : url,
        { method: "GET", headers, credentials: o.credentials, cache: "no-store" },
        timeoutMs,
        o.signal,
      );
      if (answer.status !== 200 && answer.status !== 304) raiseForStatus(answer, id);
      if (answer.status === 200 && !(answer.body && typeof answer.body.status === "string")) {
        throw new TransientFailure("the answer was not a job (an HTML error page from a proxy?)");
      }
    } catch (error) {
      if (!(error instanceof TransientFailure)) throw error;
      failures += 1;
      if (failures >= o.maxErrors) throw new ServerUnreachableError(failures, error);
      const delayMs = Math.max(
        backoffDelay(failures, { baseMs: o.backoffBaseMs, maxMs: o.backoffMaxMs }),
        error.retryAfterMs == null ? 0 : error.retryAfterMs,
      );
      if (o.onRetry) o.onRetry({ attempt: failures, maxErrors: o.maxErrors, delayMs, error });
      await sleep(delayMs, o.signal);
      continue;
    }

    if (failures > 0) {
      failures = 0;
      if (o.onRecover) o.onRecover();
    }
    const retryAfterMs = parseRetryAfter(answer.headers.get("Retry-After"));
    const newTag = answer.headers.get("ETag");
    const changed = answer.status === 200 && (newTag === null || newTag !== etag);
    if (answer.status === 200) {
      const job = answer.body;
      if (newTag) etag = newTag;
      if (changed && o.onUpdate) o.onUpdate(job, { etag });
      if (job.status === "succeeded") return job;
      if (job.status === "failed" || job.status === "cancelled") throw new JobFailedError(job);
    }

    // Long poll: ask again at once after a change or a poll the server held. An early
    // "unchanged" means nothing held it (an old server, a proxy): fall back to Retry-After.
    const held = longPoll && Date.now() - started >= (o.wait * 1000) / 2;
    const delayMs = o.longPoll && (changed || held) ? 0 : retryAfterMs == null ? 1000 : retryAfterMs;
    if (delayMs > 0) await sleep(delayMs, o.signal);
    else if (o.signal && o.signal.aborted) throw abortReason(o.signal);
  }
}

async function call(method, path, options, { jobId, body } = {}) {
  const o = { ...DEFAULTS, ...options };
  const fetchFn = o.fetch || globalThis.fetch.bind(globalThis);
  const headers = { Accept: "application/json", ...(o.headers || {}) };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    const token = o.csrfToken !== undefined ? o.csrfToken : readCookie("csrftoken");
    if (token) headers["X-CSRFToken"] = token;
  }
  const init = { method, headers, credentials: o.credentials, cache: "no-store" };
  if (body !== undefined) init.body = JSON.stringify(body);
  let answer;
  try {
    answer = await exchange(fetchFn, `${o.baseUrl.replace(/\/+$/, "")}${path}`, init, o.requestTimeoutMs, o.signal);
  } catch (error) {
    if (error instanceof TransientFailure) throw new ServerUnreachableError(1, error);
    throw error;
  }
  if (answer.status >= 200 && answer.status < 300 && answer.body !== null) return answer.body;
  if (answer.status >= 200 && answer.status < 300) throw new ApiError(answer.status, { detail: "The answer was not JSON.", errors: {} });
  try {
    raiseForStatus(answer, jobId);
  } catch (error) {
    if (error instanceof TransientFailure) throw new ApiError(answer.status, answer.body);
    throw error;
  }
  return null; // unreachable: raiseForStatus always throws
}

/** Submit a job: resolves with it (status "queued"); rejects ApiError with field errors on bad input. */
export function submitJob(type, payload, options = {}) {
  const body = { type, payload };
  if (options.idempotencyKey != null) body.idempotency_key = options.idempotencyKey;
  if (options.queue != null) body.queue = options.queue;
  if (options.countdown != null) body.countdown = options.countdown;
  return call("POST", "/api/jobs/", options, { body });
}

/** Cancel a queued, running or retrying job; rejects ApiError (409) when it is already terminal. */
export function cancelJob(id, options = {}) {
  const body = options.reason != null ? { reason: options.reason } : {};
  return call("POST", `/api/jobs/${encodeURIComponent(id)}/cancel/`, options, { jobId: id, body });
}

/** The newest jobs the user may see: {results, next, previous}. */
export function listJobs(options = {}) {
  const query = new URLSearchParams();
  if (options.pageSize != null) query.set("page_size", String(options.pageSize));
  if (options.status) query.set("status", [].concat(options.status).join(","));
  if (options.type) query.set("type", options.type);
  const suffix = query.toString() ? `?${query}` : "";
  return call("GET", `/api/jobs/${suffix}`, options);
}
