// captioner serve: the page's behaviour (plain JavaScript, no build step).
"use strict";

const form = document.getElementById("form");
const input = document.getElementById("files");
const drop = document.getElementById("drop");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

function element(tag, attrs, text) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([key, value]) => node.setAttribute(key, value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function beamsTable(beams) {
  const table = element("table", { class: "beams" });
  const head = table.insertRow();
  ["#", "caption", "log-probability"].forEach((name) => head.appendChild(element("th", {}, name)));
  beams.forEach((beam, i) => {
    const row = table.insertRow();
    [String(i + 1), beam.caption, beam.log_prob.toFixed(3)].forEach((text) => row.insertCell().textContent = text);
  });
  return table;
}

function showResult(file, result, error) {
  const card = element("article", { class: error ? "result failed" : "result", "data-filename": file.name });
  const image = element("img", { alt: file.name });
  if (!error) image.src = URL.createObjectURL(file);
  card.appendChild(image);
  const text = element("div");
  text.appendChild(element("p", { class: "file" }, file.name + (result ? ` · ${result.ms} ms` : "")));
  text.appendChild(element("p", { class: "caption" }, error ? `error: ${error}` : result.caption));
  if (result) text.appendChild(beamsTable(result.beams));
  card.appendChild(text);
  results.appendChild(card);
}

async function caption(files) {
  if (!files.length) return;
  const body = new FormData();
  files.forEach((file) => body.append("files", file, file.name));
  body.append("beam_size", document.getElementById("beam_size").value);
  body.append("max_length", document.getElementById("max_length").value);
  setStatus(`captioning ${files.length} photo(s)…`, false);
  results.replaceChildren();
  let answer;
  try {
    const response = await fetch("/api/caption", { method: "POST", body });
    answer = await response.json();
    if (!response.ok && !answer.results) throw new Error(answer.detail ? JSON.stringify(answer.detail) : response.statusText);
  } catch (err) {
    setStatus(`error: ${err.message}`, true);
    return;
  }
  const byName = new Map(answer.results.map((r) => [r.filename, r]));
  const failed = new Map((answer.errors || []).map((e) => [e.filename, e.error]));
  files.forEach((file) => showResult(file, byName.get(file.name), failed.get(file.name)));
  setStatus(answer.errors ? answer.detail : `captioned ${answer.results.length} photo(s)`, Boolean(answer.errors));
}

form.addEventListener("submit", (event) => { event.preventDefault(); caption(Array.from(input.files)); });
input.addEventListener("change", () => caption(Array.from(input.files)));
["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
  event.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((name) => drop.addEventListener(name, () => drop.classList.remove("over")));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  caption(Array.from(event.dataTransfer.files));  // the server names any file that is not an image
});

fetch("/api/model").then((r) => r.json()).then((facts) => {
  document.getElementById("model").textContent =
    `Model: ${facts.encoder} encoder, ${facts.inject} ${facts.cell.toUpperCase()} decoder, ${facts.vocab_size} words`;
}).catch(() => {});
