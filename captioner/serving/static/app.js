// captioner serve: the page's behaviour (plain JavaScript, no build step, nothing loaded from other hosts). Photos
// are sent a few at a time (results.js: takeBatch), each shown at once from the local file and filled in when its
// answer comes; captions can be edited, and the results files are built here from the captions as they are now.
"use strict";

const REQUESTS_AT_ONCE = 2;  // the server captions the requests waiting together in one batch
const OVER_BUDGET = /pixel budget/;  // a photo refused for what the others of its request used: it goes again alone

const byId = (id) => document.getElementById(id);
const input = byId("files");
const drop = byId("drop");
const statusLine = byId("status");
const list = byId("results");

const limits = { perRequest: PHOTOS_PER_REQUEST, maxBytes: 10 * 2 ** 20 };  // until /api/model tells its own
let facts = null;  // GET /api/model
const photos = [];  // every photo on the page, in the order chosen
const waiting = [];  // photos not sent yet
let inFlight = 0;
let pausedUntil = 0;  // after a 503: when to send again
let nextId = 0;

function element(tag, attrs, text) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([key, value]) => node.setAttribute(key, value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function megabytes(bytes) {
  return `${Number((bytes / 2 ** 20).toFixed(2))} MB`;
}

// ---- photos and their cards --------------------------------------------------------------------------------------

function addFiles(files) {
  if (files.length && !byId("form").reportValidity()) {  // the browser says which setting is out of range
    statusLine.textContent = "Correct the settings, then choose the photos again.";
    statusLine.className = "error";
    return;
  }
  files.forEach((file) => {
    const photo = { id: nextId++, file, state: "waiting", result: null, caption: "", error: null, alone: false };
    photo.card = makeCard(photo);
    photos.push(photo);
    list.appendChild(photo.card.root);
    if (fitsAlone(file, limits)) {
      waiting.push(photo);
    } else {
      finish(photo, { error: `${(file.size / 2 ** 20).toFixed(3)} MB is more than one request may carry `
        + `(${megabytes(limits.maxBytes)} with the request's own headers; captioner serve --max-upload-mb)` });
    }
  });
  update();
  pump();
}

function makeCard(photo) {
  const root = element("li", { class: "photo waiting", "data-filename": photo.file.name,
    "aria-labelledby": `name-${photo.id}` });
  const thumb = element("img", { class: "thumb", alt: `photo ${photo.file.name}`, loading: "lazy" });
  thumb.addEventListener("error", () => { thumb.replaceWith(element("div", { class: "thumb none" }, "no preview")); });
  photo.url = URL.createObjectURL(photo.file);  // the local file: the server is not asked for it again
  thumb.src = photo.url;
  const body = element("div", { class: "body" });
  const heading = element("h3", { class: "file", id: `name-${photo.id}` }, photo.file.name);
  const state = element("p", { class: "state" }, "waiting…");
  body.append(heading, state);
  root.append(thumb, body);
  return { root, body, state };
}

function finish(photo, { result, error }) {
  photo.state = result ? "done" : "failed";
  photo.result = result || null;
  photo.caption = result ? result.caption : "";
  photo.error = result ? null : error;
  const { root, body, state } = photo.card;
  root.classList.remove("waiting", "sending");
  root.classList.add(photo.state);
  state.remove();
  if (result) {
    fillCard(photo, body);
  } else {
    body.appendChild(element("p", { class: "error" }, `Not captioned: ${error}`));
  }
}

function fillCard(photo, body) {
  const result = photo.result;
  const label = element("label", { class: "visually-hidden", for: `caption-${photo.id}` },
    `Caption of ${photo.file.name}`);
  const caption = element("textarea", { class: "caption", id: `caption-${photo.id}`, rows: "2", spellcheck: "true" });
  caption.value = result.caption;
  const marks = element("p", { class: "marks" });
  const edited = element("span", { class: "mark edited", hidden: "" }, "edited");
  const undo = element("button", { type: "button", class: "link", hidden: "" }, "Undo edit");
  marks.append(edited, undo);
  if (result.needs_review) {
    marks.prepend(element("span", { class: "mark review", title: `confidence below ${facts ? facts.min_confidence
      : "the server's threshold"}` }, "needs review"));
    photo.card.root.classList.add("needs-review");
  }
  caption.addEventListener("keydown", (event) => {  // one line: Enter does not break it (but ends an IME word)
    if (event.key === "Enter" && !event.isComposing) event.preventDefault();
  });
  caption.addEventListener("input", () => setCaption(photo, caption.value.replace(/[\r\n]+/g, " "), false));
  undo.addEventListener("click", () => { setCaption(photo, result.caption, true); caption.focus(); });
  Object.assign(photo.card, { caption, edited, undo });
  body.append(label, caption, marks, confidenceLine(result), ...tagsLine(result), beamsList(photo));
  body.querySelector(".file").append(element("span", { class: "ms" }, ` · ${result.ms} ms`));
}

function setCaption(photo, text, rewrite) {
  photo.caption = text;
  const changed = text !== photo.result.caption;
  if (rewrite || photo.card.caption.value !== text) photo.card.caption.value = text;
  photo.card.edited.hidden = !changed;
  photo.card.undo.hidden = !changed;
  photo.card.root.classList.toggle("is-edited", changed);
  update();
}

function confidenceLine(result) {
  const line = element("p", { class: "confidence" }, "Confidence ");
  if (result.confidence === null) {
    line.append(element("span", { class: "muted" }, "not available"));
  } else {
    line.append(element("strong", {}, result.confidence.toFixed(2)));
    const meter = element("meter", { min: "0", max: "1", value: String(result.confidence), "aria-hidden": "true" });
    if (facts) meter.setAttribute("low", String(facts.min_confidence));
    meter.setAttribute("optimum", "1");
    line.append(" ", meter);
  }
  return line;
}

function tagsLine(result) {
  if (result.tags === null) return [];  // not guided
  const line = element("div", { class: "tags-line" }, "Tags ");
  if (!result.tags.length) {
    line.append(element("span", { class: "muted" }, "none reached the threshold"));
    return [line];
  }
  const tags = element("ul", { class: "tags", "aria-label": "image tags and their probabilities" });
  result.tags.forEach((tag) => {
    const item = element("li", { class: "tag" });
    item.append(element("span", { class: "word" }, tag.word), " ", element("span", { class: "prob" },
      tag.prob.toFixed(2)));
    tags.appendChild(item);
  });
  line.append(tags);
  return [line];
}

function beamsList(photo) {
  const beams = photo.result.beams;
  const details = element("details", { class: "beams" });
  details.append(element("summary", {}, beams.length > 1 ? `Other captions (${beams.length - 1})` : "Log-probability"));
  const table = element("table");
  const head = table.insertRow();
  ["#", "caption", "log-probability", ""].forEach((name) => head.appendChild(element("th", {}, name)));
  beams.forEach((beam, i) => {
    const row = table.insertRow();
    [String(i + 1), beam.caption, beam.log_prob.toFixed(3)].forEach((text) => { row.insertCell().textContent = text; });
    const use = element("button", { type: "button", class: "link", "aria-label": `use caption ${i + 1}` }, "use");
    use.addEventListener("click", () => setCaption(photo, beam.caption, true));
    row.insertCell().appendChild(use);
  });
  details.appendChild(table);
  return details;
}

// ---- requests ------------------------------------------------------------------------------------------------------

function pump() {
  while (inFlight < REQUESTS_AT_ONCE && waiting.length && Date.now() >= pausedUntil) {
    const batch = takeBatch(waiting, limits);
    batch.forEach((photo) => {
      photo.state = "sending";
      photo.card.root.classList.replace("waiting", "sending");
      photo.card.state.textContent = "captioning…";
    });
    inFlight += 1;
    send(batch).catch((err) => batch.forEach((photo) => finish(photo, { error: String(err) })))
      .finally(() => { inFlight -= 1; update(); pump(); });
  }
}

function settingsForm() {
  const body = new FormData();
  body.append("beam_size", byId("beam_size").value);
  body.append("max_length", byId("max_length").value);
  if (facts) body.append("guided", byId("guided").checked ? "true" : "false");
  return body;
}

function detailText(detail) {
  if (detail === undefined) return "";
  if (typeof detail === "string") return detail;
  return Array.isArray(detail) ? detail.map((d) => `${(d.loc || []).slice(-1)}: ${d.msg}`).join("; ")
    : JSON.stringify(detail);
}

function again(batch, alone) {
  batch.forEach((photo) => {
    photo.state = "waiting";
    photo.alone = photo.alone || alone;
    photo.card.root.classList.replace("sending", "waiting");
    photo.card.state.textContent = "waiting…";
  });
  waiting.unshift(...batch);
}

async function send(batch) {
  const body = settingsForm();
  batch.forEach((photo) => body.append("files", photo.file, photo.file.name));
  let response;
  let answer;
  try {
    response = await fetch("/api/caption", { method: "POST", body });
    answer = await response.json().catch(() => ({}));
  } catch (err) {
    batch.forEach((photo) => finish(photo, { error: `the server could not be reached (${err.message})` }));
    return;
  }
  if (response.status === 503) {  // busy: wait as told, then send the same photos again
    pausedUntil = Date.now() + 1000 * (Number(response.headers.get("retry-after")) || 1);
    again(batch, false);
    setTimeout(pump, pausedUntil - Date.now() + 10);
    return;
  }
  if (response.status === 413 && batch.length > 1) {
    again(batch, true);
    return;
  }
  if (!Array.isArray(answer.results)) {
    const why = detailText(answer.detail) || `${response.status} ${response.statusText}`;
    batch.forEach((photo) => finish(photo, { error: why }));
    return;
  }
  const matched = matchAnswer(batch.map((photo) => photo.file.name), answer.results, answer.errors || []);
  const alone = batch.filter((photo, i) => batch.length > 1 && OVER_BUDGET.test(matched[i].error || ""));
  batch.forEach((photo, i) => { if (!alone.includes(photo)) finish(photo, matched[i]); });
  if (alone.length) again(alone, true);
}

// ---- progress and downloads ----------------------------------------------------------------------------------------

function update() {
  const total = photos.length;
  const finished = photos.filter((p) => p.state === "done" || p.state === "failed");
  const failed = photos.filter((p) => p.state === "failed").length;
  const review = photos.filter((p) => p.result && p.result.needs_review).length;
  const edited = photos.filter((p) => p.result && p.caption !== p.result.caption).length;
  byId("progress-panel").hidden = total === 0;
  byId("progress").max = Math.max(total, 1);
  byId("progress").value = finished.length;
  byId("progress-text").textContent = `${finished.length} / ${total}`;
  const parts = [finished.length < total ? `Captioning… ${finished.length} of ${total} photos done`
    : `Captioned ${total - failed} of ${total} photos`];
  if (failed) parts.push(`${failed} failed`);
  if (review) parts.push(`${review} need${review === 1 ? "s" : ""} review`);
  if (edited) parts.push(`${edited} edited`);
  statusLine.textContent = total ? parts.join("; ") + "." : "";
  statusLine.className = failed ? "error" : "";
  byId("downloads").hidden = finished.length === 0;
  byId("pending-note").textContent = finished.length < total
    ? `${total - finished.length} photo(s) still being captioned are not in them yet.` : "";
  byId("clear").disabled = finished.length < total;
  const leftOut = toCoco(rows()).leftOut;
  byId("coco-note").hidden = leftOut.length === 0;
  byId("coco-note").textContent = leftOut.length ? `Left out of the COCO results file: ${leftOutText(leftOut)}.` : "";
}

// "a.jpg, b.jpg (why); c.jpg (why)": the photos grouped by why, at most 10 named in each group.
function leftOutText(leftOut) {
  const groups = new Map();
  leftOut.forEach(({ image, why }) => groups.set(why, (groups.get(why) || []).concat(image)));
  return Array.from(groups, ([why, images]) => {
    const more = images.length > 10 ? ` and ${images.length - 10} more` : "";
    return `${images.slice(0, 10).join(", ")}${more} (${why})`;
  }).join("; ");
}

// The finished photos as results rows, with the captions as they are now.
function rows() {
  return photos.filter((p) => p.state === "done" || p.state === "failed").map((p) => {
    const r = p.result;
    const row = { image: p.file.name, caption: r ? p.caption : null, confidence: r ? r.confidence : null,
      needs_review: r ? r.needs_review : false, tags: r ? r.tags : null, edited: r ? p.caption !== r.caption : false };
    if (!r) row.error = p.error;
    return row;
  });
}

function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = element("a", { href: url, download: name, hidden: "" });
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function clearAll() {
  const edited = photos.some((p) => p.result && p.caption !== p.result.caption);
  if (edited && !window.confirm("Clear the list? Your edited captions will be lost unless you downloaded them.")) {
    return;
  }
  photos.forEach((p) => URL.revokeObjectURL(p.url));
  photos.length = 0;
  list.replaceChildren();
  update();
}

// ---- wiring --------------------------------------------------------------------------------------------------------

byId("form").addEventListener("submit", (event) => event.preventDefault());
input.addEventListener("change", () => {
  addFiles(Array.from(input.files));
  input.value = "";  // the same files can be chosen again
});
["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
  event.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((name) => drop.addEventListener(name, () => drop.classList.remove("over")));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  addFiles(Array.from(event.dataTransfer.files));  // the server names any file that is not an image
});
// A photo dropped beside the drop zone is not opened in place of the page (which would lose the results).
["dragover", "drop"].forEach((name) => window.addEventListener(name, (event) => event.preventDefault()));
window.addEventListener("beforeunload", (event) => {
  if (photos.some((p) => p.result && p.caption !== p.result.caption)) event.preventDefault();
});

byId("download-csv").addEventListener("click", () => download("captions.csv", toCsv(rows()), "text/csv"));
byId("download-jsonl").addEventListener("click",
  () => download("captions.jsonl", toJsonl(rows()), "application/x-ndjson"));
byId("download-coco").addEventListener("click",
  () => download("captions.coco.json", toCoco(rows()).text, "application/json"));
byId("clear").addEventListener("click", clearAll);

fetch("/api/model").then((r) => r.json()).then((answer) => {
  facts = answer;
  limits.perRequest = Math.min(PHOTOS_PER_REQUEST, facts.limits.max_files);
  limits.maxBytes = facts.limits.max_upload_mb * 2 ** 20;
  byId("guided").checked = facts.guided;
  byId("model").textContent = `Model: ${facts.encoder} encoder, ${facts.inject} ${facts.cell.toUpperCase()} `
    + `decoder, ${facts.vocab_size} words. ` + (facts.confidence
    ? `Captions with confidence below ${facts.min_confidence} are marked “needs review”.`
    : "This model gives no confidence, so no caption is marked for review.");
}).catch(() => {});
