// Unit tests of terminus.js's polling logic with a scripted fetch (node --test; no dependencies).
// The browser tests (tests/results/web/test_watch_page.py) run the same module against the real server.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ApiError,
  AuthenticationError,
  JobFailedError,
  JobNotFoundError,
  ServerUnreachableError,
  backoffDelay,
  cancelJob,
  jobUrl,
  listJobs,
  parseRetryAfter,
  submitJob,
  watchJob,
} from "../../../../results/static/terminus/terminus.js";

const ID = "3f0c7a52-8d0e-4c4f-9a43-2f1d2b9b0a11";
const FAST = { backoffBaseMs: 10, backoffMaxMs: 40 };

function job(status, version, extra = {}) {
  return { id: ID, status, terminal: ["succeeded", "failed", "cancelled"].includes(status), version, ...extra };
}

function reply(body, { status = 200, etag, retryAfter, headers = {} } = {}) {
  const all = { ...headers };
  if (etag) all.ETag = etag;
  if (retryAfter !== undefined) all["Retry-After"] = String(retryAfter);
  if (body !== null && status !== 304) all["Content-Type"] = "application/json";
  return new Response(body === null || status === 304 ? null : JSON.stringify(body), { status, headers: all });
}

function ok(status, version, extra = {}, options = {}) {
  const terminal = ["succeeded", "failed", "cancelled"].includes(status);
  return reply(job(status, version, extra), { etag: `"${ID}-${version}"`, retryAfter: terminal ? undefined : 0, ...options });
}

/** A fetch that plays `steps` in order (a Response, an Error to throw, or a function of the call). */
function scripted(steps) {
  const calls = [];
  const fetch = async (url, init) => {
    const call = { url, init, at: Date.now(), headers: { ...init.headers } };
    calls.push(call);
    const step = steps.shift();
    if (step === undefined) throw new Error(`unexpected request #${calls.length} to ${url}`);
    const value = typeof step === "function" ? await step(call) : step;
    if (value instanceof Error) throw value;
    return value;
  };
  return { fetch, calls };
}

test("it resolves with the job once it succeeds, reporting every new version", async () => {
  const { fetch, calls } = scripted([ok("queued", 1), ok("running", 2), ok("running", 3, { progress: 0.5 }), ok("succeeded", 4, { result: { n: 1 } })]);
  const seen = [];
  const done = await watchJob(ID, { fetch, onUpdate: (job, info) => seen.push([job.status, info.etag]) });
  assert.equal(done.status, "succeeded");
  assert.deepEqual(done.result, { n: 1 });
  assert.deepEqual(seen.map(([status]) => status), ["queued", "running", "running", "succeeded"]);
  assert.equal(seen[3][1], `"${ID}-4"`);
  assert.equal(calls.length, 4);
});

test("it long-polls with the last ETag after a first request that is answered at once", async () => {
  const { fetch, calls } = scripted([ok("running", 1), ok("running", 2), ok("succeeded", 3)]);
  await watchJob(ID, { fetch, baseUrl: "https://jobs.example/" });
  assert.equal(calls[0].url, `https://jobs.example/api/jobs/${ID}/`);
  assert.equal(calls[0].headers["If-None-Match"], undefined);
  assert.equal(calls[1].url, `https://jobs.example/api/jobs/${ID}/?wait=30`);
  assert.equal(calls[1].headers["If-None-Match"], `"${ID}-1"`);
  assert.equal(calls[2].headers["If-None-Match"], `"${ID}-2"`);
  assert.equal(calls[0].init.credentials, "same-origin");
});

test("it rejects with JobFailedError carrying the job when it fails or is cancelled", async () => {
  for (const status of ["failed", "cancelled"]) {
    const { fetch } = scripted([ok("running", 1), ok(status, 2, { error_type: "TransientError", error_message: "down" })]);
    const error = await watchJob(ID, { fetch }).catch((e) => e);
    assert.ok(error instanceof JobFailedError, String(error));
    assert.equal(error.status, status);
    assert.equal(error.job.status, status);
    assert.match(error.message, new RegExp(`${status}: TransientError: down`));
  }
});

test("in short-poll mode it waits the server's Retry-After between polls", async () => {
  const { fetch, calls } = scripted([ok("running", 1, {}, { retryAfter: 1 }), reply(null, { status: 304, etag: `"${ID}-1"`, retryAfter: 1 }), ok("succeeded", 2)]);
  await watchJob(ID, { fetch, longPoll: false });
  assert.ok(!calls[1].url.includes("wait="));
  assert.ok(calls[1].at - calls[0].at >= 950, `${calls[1].at - calls[0].at} ms`);
  assert.ok(calls[2].at - calls[1].at >= 950, `${calls[2].at - calls[1].at} ms`);
});

test("a long poll answered unchanged at once (a server that does not hold) falls back to Retry-After", async () => {
  const { fetch, calls } = scripted([ok("running", 1, {}, { retryAfter: 1 }), reply(null, { status: 304, etag: `"${ID}-1"`, retryAfter: 1 }), ok("succeeded", 2)]);
  await watchJob(ID, { fetch });
  assert.ok(calls[2].at - calls[1].at >= 950, "no hammering when the server answers a long poll at once");
});

test("after a change, a long poll is sent again at once", async () => {
  const { fetch, calls } = scripted([ok("running", 1, {}, { retryAfter: 30 }), ok("running", 2, {}, { retryAfter: 30 }), ok("succeeded", 3)]);
  await watchJob(ID, { fetch });
  assert.ok(calls[2].at - calls[0].at < 1000, "Retry-After does not apply to long polls that carried a change");
});

test("it backs off on network errors and 5xx, then rejects ServerUnreachableError after maxErrors", async () => {
  const { fetch, calls } = scripted([
    ok("running", 1),
    new TypeError("Failed to fetch"),
    reply({ detail: "boom", errors: {} }, { status: 502 }),
    new TypeError("Failed to fetch"),
    new TypeError("Failed to fetch"),
    new TypeError("Failed to fetch"),
  ]);
  const retries = [];
  const error = await watchJob(ID, { fetch, ...FAST, onRetry: (info) => retries.push(info) }).catch((e) => e);
  assert.ok(error instanceof ServerUnreachableError, String(error));
  assert.equal(error.attempts, 5);
  assert.match(error.message, /5 tries in a row failed \(last error: Failed to fetch\)/);
  assert.equal(calls.length, 6, "the first answer and 5 failures, then nothing more");
  assert.deepEqual(retries.map((r) => r.attempt), [1, 2, 3, 4]);
  assert.match(retries[1].error.message, /the server answered 502: boom/);
  for (const [index, info] of retries.entries()) {
    const step = Math.min(40, 10 * 2 ** index);
    assert.ok(info.delayMs >= step / 2 && info.delayMs <= step, `retry ${index + 1}: ${info.delayMs} ms`);
  }
});

test("an answer after failures resets the count and reports the recovery", async () => {
  const { fetch } = scripted([
    ok("running", 1),
    new TypeError("Failed to fetch"),
    new TypeError("Failed to fetch"),
    new TypeError("Failed to fetch"),
    new TypeError("Failed to fetch"),
    ok("running", 2),
    new TypeError("Failed to fetch"),
    new TypeError("Failed to fetch"),
    ok("succeeded", 3),
  ]);
  let recovered = 0;
  const done = await watchJob(ID, { fetch, ...FAST, onRecover: () => (recovered += 1) });
  assert.equal(done.status, "succeeded");
  assert.equal(recovered, 2);
});

test("a 503 with Retry-After waits at least that long before the next try", async () => {
  const { fetch, calls } = scripted([reply({ detail: "maintenance", errors: {} }, { status: 503, retryAfter: 1 }), ok("succeeded", 1)]);
  await watchJob(ID, { fetch, ...FAST });
  assert.ok(calls[1].at - calls[0].at >= 950, `${calls[1].at - calls[0].at} ms`);
});

test("a request with no answer times out and counts as a failure", async () => {
  const hang = (call) =>
    new Promise((_, reject) => call.init.signal.addEventListener("abort", () => reject(call.init.signal.reason)));
  const { fetch, calls } = scripted([hang, hang]);
  const error = await watchJob(ID, { fetch, ...FAST, maxErrors: 2, requestTimeoutMs: 50 }).catch((e) => e);
  assert.ok(error instanceof ServerUnreachableError, String(error));
  assert.match(error.message, /no answer within 50 ms/);
  assert.equal(calls.length, 2);
});

test("an HTML page instead of a job (a proxy's error page) is retried, not shown", async () => {
  const html = new Response("<html>Bad gateway</html>", { status: 200, headers: { "Content-Type": "text/html" } });
  const { fetch, calls } = scripted([html, ok("succeeded", 1)]);
  const done = await watchJob(ID, { fetch, ...FAST });
  assert.equal(done.status, "succeeded");
  assert.equal(calls.length, 2);
});

test("it stops at once on 404 with JobNotFoundError", async () => {
  const { fetch, calls } = scripted([reply({ detail: `No job ${ID}.`, errors: {} }, { status: 404 })]);
  const error = await watchJob(ID, { fetch }).catch((e) => e);
  assert.ok(error instanceof JobNotFoundError, String(error));
  assert.equal(error.jobId, ID);
  assert.equal(error.message, `No job ${ID}.`);
  assert.equal(calls.length, 1);
});

test("it stops at once on 401/403 with AuthenticationError and on other 4xx with ApiError", async () => {
  for (const status of [401, 403]) {
    const { fetch, calls } = scripted([reply({ detail: "Authentication credentials were not provided.", errors: {} }, { status })]);
    const error = await watchJob(ID, { fetch }).catch((e) => e);
    assert.ok(error instanceof AuthenticationError, String(error));
    assert.equal(error.status, status);
    assert.equal(calls.length, 1);
  }
  const { fetch } = scripted([reply({ detail: "Invalid input.", errors: { wait: ["must be a whole number"] } }, { status: 400 })]);
  const error = await watchJob(ID, { fetch }).catch((e) => e);
  assert.ok(error instanceof ApiError, String(error));
  assert.deepEqual(error.errors, { wait: ["must be a whole number"] });
});

test("aborting stops the watch during a wait and during a request", async () => {
  const waiting = new AbortController();
  const first = scripted([ok("running", 1, {}, { retryAfter: 30 }), reply(null, { status: 304, etag: `"${ID}-1"`, retryAfter: 30 })]);
  const watch = watchJob(ID, { fetch: first.fetch, signal: waiting.signal });
  setTimeout(() => waiting.abort(), 100);
  const error = await watch.catch((e) => e);
  assert.equal(error.name, "AbortError");
  assert.equal(first.calls.length, 2);

  const inFlight = new AbortController();
  let requestSignal;
  const second = scripted([
    (call) => {
      requestSignal = call.init.signal;
      setTimeout(() => inFlight.abort(new Error("page closed")), 20);
      return new Promise((_, reject) => call.init.signal.addEventListener("abort", () => reject(call.init.signal.reason)));
    },
  ]);
  const reason = await watchJob(ID, { fetch: second.fetch, signal: inFlight.signal }).catch((e) => e);
  assert.equal(reason.message, "page closed");
  assert.ok(requestSignal.aborted, "the request itself was aborted");
});

test("an onUpdate that throws ends the watch with its error", async () => {
  const { fetch, calls } = scripted([ok("running", 1)]);
  const error = await watchJob(ID, { fetch, onUpdate: () => { throw new Error("render failed"); } }).catch((e) => e);
  assert.equal(error.message, "render failed");
  assert.equal(calls.length, 1);
});

test("watchJob refuses an empty id", async () => {
  await assert.rejects(watchJob(""), TypeError);
  await assert.rejects(watchJob(undefined), TypeError);
});

test("backoffDelay grows exponentially to its cap with equal jitter", () => {
  const table = [
    [1, 0, 250],
    [1, 1, 500],
    [2, 0, 500],
    [3, 1, 2000],
    [5, 1, 8000],
    [9, 1, 8000],
    [9, 0, 4000],
  ];
  for (const [attempt, random, expected] of table) {
    assert.equal(backoffDelay(attempt, { baseMs: 500, maxMs: 8000, random: () => random }), expected, `attempt ${attempt}, random ${random}`);
  }
});

test("parseRetryAfter reads seconds and HTTP dates and ignores junk", () => {
  const now = Date.parse("2026-01-01T00:00:00Z");
  assert.equal(parseRetryAfter("3", now), 3000);
  assert.equal(parseRetryAfter("Thu, 01 Jan 2026 00:00:05 GMT", now), 5000);
  assert.equal(parseRetryAfter("Wed, 31 Dec 2025 00:00:00 GMT", now), 0);
  assert.equal(parseRetryAfter(null, now), null);
  assert.equal(parseRetryAfter("soon", now), null);
  assert.equal(parseRetryAfter("-1", now), null);
});

test("submitJob posts JSON with the CSRF token and rejects bad input with the API's field errors", async () => {
  const { fetch, calls } = scripted([
    reply(job("queued", 1), { status: 202 }),
    reply({ detail: "Invalid input. payload.seconds: too small", errors: { "payload.seconds": ["too small"] } }, { status: 400 }),
  ]);
  const created = await submitJob("diagnostics.sleep", { seconds: 1 }, { fetch, csrfToken: "tok", idempotencyKey: "k1" });
  assert.equal(created.status, "queued");
  assert.equal(calls[0].url, "/api/jobs/");
  assert.equal(calls[0].init.method, "POST");
  assert.equal(calls[0].headers["X-CSRFToken"], "tok");
  assert.equal(calls[0].headers["Content-Type"], "application/json");
  assert.deepEqual(JSON.parse(calls[0].init.body), { type: "diagnostics.sleep", payload: { seconds: 1 }, idempotency_key: "k1" });
  const error = await submitJob("diagnostics.sleep", { seconds: -1 }, { fetch, csrfToken: "tok" }).catch((e) => e);
  assert.ok(error instanceof ApiError);
  assert.equal(error.status, 400);
  assert.deepEqual(error.errors, { "payload.seconds": ["too small"] });
});

test("submitJob without an answer rejects ServerUnreachableError and is not retried", async () => {
  const { fetch, calls } = scripted([new TypeError("Failed to fetch")]);
  const error = await submitJob("diagnostics.sleep", {}, { fetch, csrfToken: "t" }).catch((e) => e);
  assert.ok(error instanceof ServerUnreachableError);
  assert.equal(error.attempts, 1);
  assert.equal(calls.length, 1);
});

test("cancelJob and listJobs call the documented endpoints", async () => {
  const { fetch, calls } = scripted([
    reply(job("cancelled", 3)),
    reply({ detail: "the job is already succeeded", errors: { status: ["already succeeded"] } }, { status: 409 }),
    reply({ next: null, previous: null, results: [job("queued", 1)] }),
  ]);
  assert.equal((await cancelJob(ID, { fetch, csrfToken: "t", reason: "no longer needed" })).status, "cancelled");
  assert.equal(calls[0].url, `/api/jobs/${ID}/cancel/`);
  assert.deepEqual(JSON.parse(calls[0].init.body), { reason: "no longer needed" });
  const conflict = await cancelJob(ID, { fetch, csrfToken: "t" }).catch((e) => e);
  assert.ok(conflict instanceof ApiError);
  assert.equal(conflict.status, 409);
  const page = await listJobs({ fetch, pageSize: 20, status: ["queued", "running"] });
  assert.equal(page.results.length, 1);
  assert.equal(calls[2].url, "/api/jobs/?page_size=20&status=queued%2Crunning");
});

test("jobUrl joins the base URL without doubling slashes", () => {
  assert.equal(jobUrl(ID), `/api/jobs/${ID}/`);
  assert.equal(jobUrl(ID, "https://x.example/"), `https://x.example/api/jobs/${ID}/`);
});
