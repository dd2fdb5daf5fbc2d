// The upload page: each chosen or dropped image goes to POST /predict as a multipart form,
// exactly as curl -F sends it, and its answer (or the service's error message) becomes a card.
// Server text is only ever set with textContent, never parsed as HTML.
"use strict";

const variantSelect = document.getElementById("variant");
const topKInput = document.getElementById("top-k");
const results = document.getElementById("results");
const drop = document.getElementById("drop");
const fileInput = document.getElementById("files");
const cardTemplate = document.getElementById("card");

async function loadModels() {
  const status = document.getElementById("service");
  try {
    const response = await fetch("/models");
    const models = await response.json();
    if (!response.ok) throw new Error(models.error || `HTTP ${response.status}`);
    for (const variant of models.variants) {
      const option = document.createElement("option");
      option.value = variant.variant;
      option.textContent = `${variant.variant} (${variant.backend}, ${variant.provider.replace("ExecutionProvider", "")})`;
      option.selected = variant.variant === models.default_variant;
      variantSelect.append(option);
    }
    const first = models.variants[0];
    status.textContent = `${first.bundle}:${first.version}, ${models.variants.length} variant(s), default ${models.default_variant}`;
  } catch (error) {
    status.textContent = `could not read /models: ${error.message}`;
  }
}

function addCard(file) {
  const card = cardTemplate.content.firstElementChild.cloneNode(true);
  card.querySelector(".name").textContent = file.name;
  card.querySelector(".meta").textContent = "classifying...";
  const thumb = card.querySelector(".thumb");
  thumb.src = URL.createObjectURL(file);
  thumb.onload = () => URL.revokeObjectURL(thumb.src);
  thumb.onerror = () => { URL.revokeObjectURL(thumb.src); thumb.style.visibility = "hidden"; };
  results.prepend(card);
  return card;
}

function showAnswer(card, answer) {
  const timing = answer.timing;
  card.querySelector(".meta").textContent =
    `${answer.variant} · ${answer.backend} on ${answer.provider} · ` +
    `${timing.total_ms.toFixed(1)} ms (preprocess ${timing.preprocess_ms.toFixed(1)}, model ${timing.model_ms.toFixed(1)})`;
  const bars = card.querySelector(".bars");
  for (const p of answer.predictions) {
    const item = document.createElement("li");
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = p.label;
    const track = document.createElement("span");
    track.className = "track";
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(p.probability * 100).toFixed(1)}%`;
    bar.style.display = "block";
    track.append(bar);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(p.probability * 100).toFixed(1)}%`;
    item.append(label, track, value);
    bars.append(item);
  }
}

function showError(card, status, message) {
  card.classList.add("failed");
  card.querySelector(".meta").textContent = status ? `HTTP ${status}` : "no answer";
  const error = card.querySelector(".error");
  error.textContent = message;
  error.hidden = false;
}

async function classify(file) {
  const card = addCard(file);
  const form = new FormData();
  form.append("file", file, file.name);
  if (variantSelect.value) form.append("variant", variantSelect.value);
  if (topKInput.value) form.append("top_k", topKInput.value);
  let response;
  try {
    response = await fetch("/predict", { method: "POST", body: form });
  } catch (error) {
    showError(card, 0, `the service did not answer: ${error.message}`);
    return;
  }
  let body;
  try {
    body = await response.json();
  } catch {
    showError(card, response.status, `the answer was not JSON (HTTP ${response.status})`);
    return;
  }
  if (response.ok) showAnswer(card, body);
  else showError(card, response.status, body.error || JSON.stringify(body));
}

async function classifyAll(files) {
  for (const file of files) await classify(file);  // one at a time: cards appear in order
}

fileInput.addEventListener("change", () => {
  classifyAll([...fileInput.files]);
  fileInput.value = "";
});
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  classifyAll([...event.dataTransfer.files]);
});
loadModels();
