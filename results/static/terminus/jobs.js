// The /jobs/ page: submit a job, list recent ones, watch one live. Every byte of job data comes
// from the API through terminus.js. A watch always ends in one of a few states: the job's
// terminal state, "not found", "not signed in", or "server unreachable". The spinner shows only
// while a watch is running.
import {
  ApiError,
  AuthenticationError,
  JobFailedError,
  JobNotFoundError,
  ServerUnreachableError,
  cancelJob,
  listJobs,
  submitJob,
  watchJob,
} from "./terminus.js";

const root = document.getElementById("terminus-jobs");
const jobTypes = JSON.parse(document.getElementById("job-types").textContent);
const csrfToken = root.dataset.csrfToken;
const jobsUrl = root.dataset.jobsUrl;
const $ = (id) => document.getElementById(id);

const watchState = { id: null, controller: null, job: null, ticker: null, lastStatus: null };

// -- formatting --------------------------------------------------------------------------------
function formatTime(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "—";
}

function formatDateTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

function secondsUntil(iso) {
  return Math.max(0, Math.ceil((new Date(iso).getTime() - Date.now()) / 1000));
}

function setBadge(element, status) {
  element.textContent = status;
  element.className = `badge status-${status}`;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

// -- the job list ------------------------------------------------------------------------------
async function refreshList() {
  try {
    const page = await listJobs({ pageSize: 20 });
    $("list-error").hidden = true;
    renderList(page.results);
  } catch (error) {
    $("list-error").textContent = `Could not load your jobs: ${error.message}`;
    $("list-error").hidden = false;
  }
}

function renderList(jobs) {
  const body = $("job-list").querySelector("tbody");
  body.replaceChildren();
  for (const job of jobs) {
    const row = document.createElement("tr");
    row.dataset.jobId = job.id;
    if (job.id === watchState.id) row.classList.add("selected");
    const link = document.createElement("a");
    link.href = `${jobsUrl}${job.id}/`;
    link.textContent = job.id.slice(0, 8);
    link.title = job.id;
    link.addEventListener("click", (event) => {
      event.preventDefault();
      openJob(job.id, { push: true });
    });
    row.appendChild(document.createElement("td")).appendChild(link);
    cell(row, job.type);
    const badge = document.createElement("span");
    setBadge(badge, job.status);
    row.appendChild(document.createElement("td")).appendChild(badge);
    cell(row, formatDateTime(job.created_at));
    body.appendChild(row);
  }
  $("job-list-empty").hidden = jobs.length > 0;
}

// -- the watched job ---------------------------------------------------------------------------
function setPhase(phase) {
  $("watch").dataset.phase = phase;
}

function setConnection(text) {
  $("watch-connection").textContent = text;
  $("watch-connection").hidden = !text;
}

function showOutcome(text, kind) {
  const outcome = $("watch-outcome");
  outcome.textContent = text;
  outcome.className = `message ${kind}`;
  outcome.hidden = false;
}

// When the next attempt is due: a retry's (retrying), or a scheduled job's first (queued, scheduled_for).
function nextAttemptAt(job) {
  if (!job) return null;
  if (job.status === "retrying") return job.next_retry_at;
  if (job.status === "queued") return job.scheduled_for;
  return null;
}

function renderNextRetry() {
  const job = watchState.job;
  const due = nextAttemptAt(job);
  if (due) {
    const what = job.status === "queued" ? "scheduled: starts" : "retry";
    $("job-next-retry").textContent = `${what} in ${secondsUntil(due)} s (at ${formatTime(due)})`;
  } else {
    $("job-next-retry").textContent = "—";
  }
}

function renderJob(job) {
  watchState.job = job;
  $("job-id").textContent = job.id;
  $("job-type").textContent = job.type;
  setBadge($("job-status"), job.status);
  $("job-attempt").textContent = job.attempt ? `${job.attempt} of ${job.max_attempts}` : `not started (up to ${job.max_attempts})`;
  renderNextRetry();
  clearInterval(watchState.ticker);
  watchState.ticker = nextAttemptAt(job) ? setInterval(renderNextRetry, 1000) : null;

  const progress = $("job-progress");
  if (job.progress === null || job.progress === undefined) {
    progress.removeAttribute("value"); // indeterminate
    progress.hidden = true;
    $("job-progress-text").textContent = "—";
  } else {
    progress.hidden = false;
    progress.value = job.progress;
    const message = job.progress_message ? ` ${job.progress_message}` : "";
    $("job-progress-text").textContent = `${Math.round(job.progress * 100)} %${message}`;
  }
  $("job-created").textContent = formatDateTime(job.created_at);
  $("job-finished").textContent = formatDateTime(job.finished_at);

  const error = $("job-error");
  if (job.error_message || job.error_type) {
    const label = job.status === "retrying" || job.status === "running" ? "Last error" : "Error";
    error.textContent = `${label}: ${[job.error_type, job.error_message].filter(Boolean).join(": ")}`;
    error.hidden = false;
  } else {
    error.hidden = true;
  }
  $("job-result-box").hidden = job.status !== "succeeded";
  $("job-result").textContent = job.status === "succeeded" ? JSON.stringify(job.result, null, 2) : "";
  $("cancel-job").hidden = job.terminal;

  const attempts = $("job-attempts").querySelector("tbody");
  attempts.replaceChildren();
  for (const attempt of job.attempt_history || []) {
    const row = document.createElement("tr");
    cell(row, String(attempt.number));
    const badge = document.createElement("span");
    setBadge(badge, attempt.outcome);
    row.appendChild(document.createElement("td")).appendChild(badge);
    cell(row, attempt.worker || "—");
    cell(row, formatTime(attempt.started_at));
    cell(row, formatTime(attempt.finished_at));
    cell(row, [attempt.error_type, attempt.error_message].filter(Boolean).join(": ") || "—");
    attempts.appendChild(row);
  }

  if (watchState.lastStatus !== job.status) {
    watchState.lastStatus = job.status;
    refreshList(); // the list shows statuses too: keep it in step with the watched job
  }
}

function stopWatching() {
  if (watchState.controller) watchState.controller.abort();
  watchState.controller = null;
  clearInterval(watchState.ticker);
  watchState.ticker = null;
}

function finish(phase, connectionText) {
  clearInterval(watchState.ticker);
  watchState.ticker = null;
  renderNextRetry();
  setPhase(phase);
  setConnection(connectionText);
}

async function openJob(id, { push = false, initial = null } = {}) {
  stopWatching();
  const controller = new AbortController();
  watchState.controller = controller;
  watchState.id = id;
  watchState.lastStatus = null;
  if (push && location.pathname !== `${jobsUrl}${id}/`) history.pushState({ id }, "", `${jobsUrl}${id}/`);
  for (const row of document.querySelectorAll("#job-list tbody tr")) row.classList.toggle("selected", row.dataset.jobId === id);

  $("watch").hidden = false;
  $("watch-outcome").hidden = true;
  $("watch-again").hidden = true;
  $("job-id").textContent = id;
  setPhase("watching");
  setConnection("Live: waiting for changes…");
  if (initial) renderJob(initial);

  try {
    const job = await watchJob(id, {
      signal: controller.signal,
      onUpdate: (job) => renderJob(job),
      onRetry: ({ attempt, maxErrors, delayMs, error }) => {
        setPhase("reconnecting");
        setConnection(`Connection problem (${error.message}). Trying again in ${Math.ceil(delayMs / 1000)} s (try ${attempt + 1} of ${maxErrors})…`);
      },
      onRecover: () => {
        setPhase("watching");
        setConnection("Live: waiting for changes…");
      },
    });
    finish("done", "");
    showOutcome(`Succeeded${job.finished_at ? ` at ${formatTime(job.finished_at)}` : ""}.`, "success");
  } catch (error) {
    if (controller.signal.aborted) return; // another job was opened: that watch owns the panel now
    if (error instanceof JobFailedError) {
      renderJob(error.job);
      finish("done", "");
      const cancelled = error.job.status === "cancelled";
      const reason = cancelled ? error.job.error_message : [error.job.error_type, error.job.error_message].filter(Boolean).join(": ");
      const verb = cancelled ? "Cancelled" : `Failed after ${error.job.attempt} of ${error.job.max_attempts} attempts`;
      showOutcome(`${verb}${reason ? `: ${reason}` : "."}`, "error");
    } else if (error instanceof ServerUnreachableError) {
      const seen = watchState.job ? ` The status shown is the last one received (${watchState.job.status}).` : "";
      finish("unreachable", "Not watching: the server can't be reached.");
      showOutcome(`The server can't be reached: stopped after ${error.attempts} failed tries in a row.${seen} The job itself keeps running on the server.`, "error");
      $("watch-again").hidden = false;
    } else if (error instanceof JobNotFoundError) {
      finish("missing", "");
      showOutcome(`${error.message} It does not exist, or it belongs to another tenant.`, "error");
    } else if (error instanceof AuthenticationError) {
      finish("signed-out", "");
      showOutcome(`${error.message} Sign in again to keep watching.`, "error");
    } else {
      finish("error", "");
      showOutcome(`Stopped watching: ${error.message}`, "error");
    }
  } finally {
    if (watchState.controller === controller) watchState.controller = null;
  }
}

// -- submitting --------------------------------------------------------------------------------
function selectType(name) {
  const jobType = jobTypes.find((type) => type.name === name) || jobTypes[0];
  if (!jobType) return;
  $("job-type-select").value = jobType.name;
  $("job-type-help").textContent = `${jobType.description} Retries: up to ${jobType.max_retries}.`;
  $("payload-input").value = JSON.stringify(jobType.example, null, 2);
}

function showSubmitError(text, errors = {}) {
  const box = $("submit-error");
  box.replaceChildren(document.createTextNode(text));
  const fields = Object.entries(errors);
  if (fields.length) {
    const list = document.createElement("ul");
    for (const [field, messages] of fields) {
      const item = document.createElement("li");
      item.textContent = `${field}: ${messages.join(" ")}`;
      list.appendChild(item);
    }
    box.appendChild(list);
  }
  box.hidden = false;
}

async function onSubmit(event) {
  event.preventDefault();
  $("submit-error").hidden = true;
  let payload;
  try {
    payload = JSON.parse($("payload-input").value || "{}");
  } catch (error) {
    showSubmitError(`The payload is not valid JSON: ${error.message}`);
    return;
  }
  const button = $("submit-button");
  button.disabled = true;
  try {
    const job = await submitJob($("job-type-select").value, payload, { csrfToken });
    openJob(job.id, { push: true, initial: job });
  } catch (error) {
    if (error instanceof ApiError) showSubmitError(`Not submitted: ${error.message}`, error.errors);
    else showSubmitError(`Not submitted: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}

async function onCancel() {
  const id = watchState.id;
  $("cancel-job").disabled = true;
  try {
    renderJob({ ...watchState.job, ...(await cancelJob(id, { csrfToken, reason: "cancelled from the jobs page" })) });
  } catch (error) {
    showOutcome(`Could not cancel: ${error.message}`, "error");
  } finally {
    $("cancel-job").disabled = false;
  }
}

// -- wiring ------------------------------------------------------------------------------------
$("job-type-select").addEventListener("change", (event) => selectType(event.target.value));
$("submit-form").addEventListener("submit", onSubmit);
$("refresh-list").addEventListener("click", refreshList);
$("cancel-job").addEventListener("click", onCancel);
$("watch-again").addEventListener("click", () => watchState.id && openJob(watchState.id));
window.addEventListener("popstate", () => {
  const match = location.pathname.match(/\/jobs\/([0-9a-f-]{36})\/$/);
  if (match) openJob(match[1]);
  else {
    stopWatching();
    $("watch").hidden = true;
  }
});

selectType(jobTypes.length ? jobTypes[0].name : "");
refreshList();
if (root.dataset.jobId) openJob(root.dataset.jobId);
