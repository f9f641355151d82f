// The promptserve playground: plain JavaScript over the public HTTP API, nothing else.
// Every call goes through api(), which adds the API key when one is typed in.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 500;
const state = {
  classifiers: new Map(), defaultName: null, images: [], previews: [], groups: [], job: null,
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = $("api-key").value.trim();
  if (key) headers.set("Authorization", "Bearer " + key);
  const response = await fetch(path, { ...options, headers });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : text || response.statusText;
    const error = new Error(`${response.status}: ${message}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function notice(message) {
  $("notice").hidden = !message;
  $("notice").textContent = message || "";
}

function percent(value) {
  return typeof value === "number" ? value.toFixed(1) + " %" : "–";
}

// --- health and classifiers ---------------------------------------------------------------

async function checkHealth() {
  const pill = $("health");
  try {
    const body = await api("/health/ready");
    pill.textContent = `ready · default classifier ${body.default_classifier} v${body.version}`;
    pill.className = "pill ok";
  } catch (error) {
    pill.textContent = error.status === 503 ? "starting…" : "unreachable";
    pill.className = "pill bad";
  }
}

async function loadClassifiers(select) {
  try {
    const list = await api("/v1/classifiers");
    state.defaultName = list.default;
    const details = await Promise.all(
      list.classifiers.map((c) => api("/v1/classifiers/" + encodeURIComponent(c.name))));
    state.classifiers = new Map(details.map((d) => [d.name, d]));
    notice("");
  } catch (error) {
    state.classifiers = new Map();
    notice(error.status === 401
      ? "This service needs an API key: type it above, then reload the classifiers."
      : "Cannot list the classifiers: " + error.message);
  }
  renderClassifierTable();
  const names = [...state.classifiers.keys()];
  const wanted = select || {};
  const current = wanted.name || $("classifier").value || state.defaultName;
  $("classifier").replaceChildren(...names.map((name) => el("option", { value: name, text: name })));
  if (names.includes(current)) $("classifier").value = current;
  fillVersions(wanted.version);
}

function fillVersions(version) {
  const detail = state.classifiers.get($("classifier").value);
  const versions = detail ? detail.versions.map((v) => v.version) : [];
  $("version").replaceChildren(
    ...versions.slice().reverse().map((v) => el("option", { value: v, text: v })));
  $("version").value = version && versions.includes(version) ? version : detail ? detail.latest : "";
}

function renderClassifierTable() {
  const rows = [];
  for (const detail of state.classifiers.values()) {
    for (const v of detail.versions) {
      const backbone = v.backbone.spec || v.backbone.architecture || "–";
      rows.push(el("tr", {},
        el("td", { text: detail.name + (detail.default ? " (default)" : "") }),
        el("td", { text: v.version }),
        el("td", { text: v.method || "–" }),
        el("td", { text: backbone }),
        el("td", { class: "num", text: String(v.num_classes) }),
        el("td", { class: "num", text: percent(v.metrics.heldout_accuracy) }),
        el("td", { class: "num", text: percent(v.metrics.heldout_zeroshot_accuracy) })));
    }
  }
  $("classifiers").tBodies[0].replaceChildren(...rows);
}

// --- classify -----------------------------------------------------------------------------

function extraLabels() {
  return $("extra-labels").value.split(",").map((s) => s.trim()).filter(Boolean);
}

let classifyRequests = 0; // only the newest request's answer is shown

async function classify() {
  if (!state.images.length) return;
  const request = ++classifyRequests;
  const form = new FormData();
  for (const file of state.images) form.append("images", file, file.name);
  form.append("classifier", $("classifier").value);
  if ($("version").value) form.append("version", $("version").value);
  form.append("top_k", $("top-k").value || "5");
  const extra = extraLabels();
  if (extra.length) {
    const detail = state.classifiers.get($("classifier").value);
    const own = detail ? detail.versions.find((v) => v.version === $("version").value) : null;
    const base = $("only-extra").checked || !own ? [] : own.class_names;
    for (const label of [...new Set([...base, ...extra])]) form.append("labels", label);
  }
  $("classify-status").textContent = "classifying…";
  try {
    const answer = await api("/v1/classify", { method: "POST", body: form });
    if (request !== classifyRequests) return; // a later request (other labels) was sent
    const body = answer.results[0]; // one classifier: one result
    renderResults(body);
    $("classify-status").textContent = `${body.classifier} v${body.version}`;
  } catch (error) {
    if (request === classifyRequests) $("classify-status").textContent = error.message;
  }
}

function renderResults(body) {
  const encoded = new Set(body.encoded_labels || []);
  state.previews.forEach((url) => URL.revokeObjectURL(url));
  state.previews = state.images.map((file) => URL.createObjectURL(file));
  const cards = body.predictions.map((row, index) => {
    const file = state.images[index];
    const image = el("img", { src: state.previews[index], alt: file.name });
    const items = row.map((p) => {
      const fill = el("span", { class: "fill" });
      fill.style.width = (100 * p.score).toFixed(1) + "%";
      return el("li", { class: encoded.has(p.label) ? "new" : "" }, fill,
        el("span", { class: "name", text: p.label }),
        el("span", { class: "score", text: p.score.toFixed(2) }));
    });
    return el("div", { class: "result" }, image, el("ul", { class: "scores" }, ...items));
  });
  $("results").replaceChildren(...cards);
}

function useImages(files) {
  state.images = [...files].filter((f) => f.type.startsWith("image/") || !f.type);
  $("classify").disabled = !state.images.length;
  classify();
}

function dropZone(zone, onFiles) {
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    onFiles(event.dataTransfer.files);
  });
}

// --- tuning jobs --------------------------------------------------------------------------

function addGroup(label) {
  const group = { files: [] };
  const input = el("input", { type: "text", class: "group-label", placeholder: "class name" });
  input.value = label || "";
  const picker = el("input", { type: "file", accept: "image/*", multiple: "", class: "group-files" });
  picker.hidden = true;
  const thumbs = el("div", { class: "thumbs" });
  const count = el("span", { class: "status", text: "no images" });
  const zone = el("div", { class: "drop" },
    el("p", {}, "Drop images, or ", el("label", { class: "link" }, "pick", picker)));
  const take = (files) => {
    group.files.push(...[...files].filter((f) => f.type.startsWith("image/") || !f.type));
    thumbs.replaceChildren(
      ...group.files.slice(0, 40).map((f) => el("img", { src: URL.createObjectURL(f), alt: "" })));
    count.textContent = `${group.files.length} image${group.files.length === 1 ? "" : "s"}`;
  };
  picker.addEventListener("change", () => { take(picker.files); picker.value = ""; });
  dropZone(zone, take);
  group.input = input;
  group.node = el("div", { class: "group" }, el("label", {}, "Class", input), zone, count, thumbs);
  state.groups.push(group);
  $("groups").append(group.node);
}

async function startJob() {
  const form = new FormData();
  let images = 0;
  for (const group of state.groups) {
    const label = group.input.value.trim();
    if (!group.files.length) continue;
    if (!label) { showJobError("every class with images needs a name"); return; }
    for (const file of group.files) {
      form.append("images", file, file.name);
      form.append("labels", label);
      images += 1;
    }
  }
  if (!images) { showJobError("drop images into at least two classes"); return; }
  form.append("name", $("job-name").value.trim());
  form.append("method", $("job-method").value.trim() || "coop");
  form.append("shots", $("job-shots").value || "16");
  if ($("job-epochs").value) form.append("epochs", $("job-epochs").value);
  $("start-job").disabled = true;
  $("job-events").replaceChildren();
  try {
    const job = await api("/v1/adapt", { method: "POST", body: form });
    state.job = { id: job.id, seq: 0 };
    showJob(job);
    pollJob();
  } catch (error) {
    showJobError(error.message);
    $("start-job").disabled = false;
  }
}

function showJobError(message) {
  $("job").hidden = false;
  $("cancel-job").hidden = true;
  $("job-id").textContent = "";
  $("job-state").textContent = "not started";
  $("job-state").className = "pill bad";
  $("job-detail").textContent = message;
}

function showJob(job) {
  $("job").hidden = false;
  $("cancel-job").hidden = ["succeeded", "failed", "cancelled"].includes(job.state);
  $("job-id").textContent = `${job.id} → ${job.name}`;
  $("job-state").textContent = job.state;
  $("job-state").className = "pill " + job.state;
  const p = job.progress;
  let done = job.state === "succeeded" ? 1 : 0;
  let detail = `${job.images} images, ${job.classes.length} classes, ${job.method}`;
  if (p && p.total_steps) {
    done = job.state === "succeeded" ? 1 : p.step / p.total_steps;
    detail = `epoch ${p.epoch}/${p.epochs} · step ${p.step}/${p.total_steps} · ` +
      `loss ${Number(p.loss).toFixed(4)} · about ${Math.round(p.eta_s)} s left`;
  }
  if (job.state === "succeeded" && job.result) {
    const r = job.result;
    const served = r.published === "candidate" ? "published as a candidate" : "serving";
    detail = `${served} ${r.classifier} v${r.version} · train ${percent(r.train_accuracy)}`;
    if (r.gate && r.published === "candidate") detail += ` · ${r.gate.reason}`;
    if (r.heldout_images) {
      detail += ` · held-out ${percent(r.heldout_accuracy)} vs zero-shot ` +
        `${percent(r.heldout_zeroshot_accuracy)} on ${r.heldout_images} images`;
    }
  }
  if (job.error) detail = `${job.error.reason}: ${job.error.message}`;
  $("job-progress").style.width = (100 * done).toFixed(1) + "%";
  $("job-detail").textContent = detail;
}

async function pollJob() {
  const current = state.job;
  if (!current) return;
  try {
    const job = await api("/v1/jobs/" + current.id);
    const events = await api(`/v1/jobs/${current.id}/events?after=${current.seq}`);
    for (const event of events.data) {
      $("job-events").append(el("li", { text: event.message }));
      current.seq = event.seq;
    }
    showJob(job);
    if (job.state === "succeeded") {
      await loadClassifiers({ name: job.result.classifier, version: job.result.version });
      await classify();
    }
    if (["succeeded", "failed", "cancelled"].includes(job.state)) {
      $("start-job").disabled = false;
      state.job = null;
      return;
    }
  } catch (error) {
    $("job-detail").textContent = error.message;
  }
  setTimeout(pollJob, POLL_MS);
}

async function cancelJob() {
  if (!state.job) return;
  try {
    showJob(await api(`/jobs/${state.job.id}/cancel`, { method: "POST" }));
  } catch (error) {
    $("job-detail").textContent = error.message;
  }
}

// --- wiring -------------------------------------------------------------------------------

function init() {
  $("files").addEventListener("change", () => useImages($("files").files));
  dropZone($("drop"), useImages);
  $("classify").addEventListener("click", classify);
  $("classifier").addEventListener("change", () => { fillVersions(); classify(); });
  for (const id of ["version", "top-k", "extra-labels", "only-extra"]) {
    $(id).addEventListener("change", classify);
  }
  $("refresh").addEventListener("click", () => { checkHealth(); loadClassifiers(); });
  $("api-key").addEventListener("change", () => { checkHealth(); loadClassifiers(); });
  $("add-group").addEventListener("click", () => addGroup(""));
  $("start-job").addEventListener("click", startJob);
  $("cancel-job").addEventListener("click", cancelJob);
  // a file dropped beside a drop zone must not replace the page
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (e) => e.preventDefault());
  addGroup("");
  addGroup("");
  checkHealth();
  loadClassifiers();
}

init();
