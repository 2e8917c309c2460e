// The page: send the chosen or dropped file to /v1/score, show the answer.
"use strict";
const $ = (id) => document.getElementById(id);
const WORDS = {real: "Real face", synthetic: "Synthetic face", unsure: "Unsure"};
const HEADS = {joint: "joint head", rgb: "RGB head", freq: "frequency head"};

function row(dl, name, value) {
  const dt = document.createElement("dt"), dd = document.createElement("dd");
  dt.textContent = name; dd.textContent = value; dl.append(dt, dd);
}

function pct(p) { return (100 * p).toFixed(1) + " %"; }

function drawBoxes(faces, width, height) {
  const svg = $("boxes");
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  for (const face of faces) {
    const [x0, y0, x1, y1] = face.box;
    const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    Object.entries({x: x0, y: y0, width: x1 - x0, height: y1 - y0, fill: "none",
                    stroke: face.verdict === "real" ? "#1d7a32" : "#b3261e",
                    "stroke-width": Math.max(2, width / 150)})
      .forEach(([k, v]) => r.setAttribute(k, v));
    svg.append(r);
  }
}

function show(body, url) {
  const v = $("verdict");
  v.textContent = WORDS[body.verdict] || body.verdict;
  v.dataset.verdict = body.verdict;
  $("reason").textContent = body.reason || "";
  $("meaning").textContent =
    `P(real) is the model's probability that the face is a bona fide photograph; ` +
    `${body.threshold_source === "dev_eer" ? "the threshold is the one where both error rates " +
     "were equal on the development set" : "threshold source: " + body.threshold_source}. ` +
    `Meaning: ${body.meaning}.`;
  const dl = $("scores");
  dl.replaceChildren();
  row(dl, "P(real)", pct(body.p_real));
  if (body.p_real_platt !== null && body.p_real_platt !== undefined)
    row(dl, "P(real), Platt-scaled", pct(body.p_real_platt));
  row(dl, "threshold", pct(body.threshold));
  for (const [head, p] of Object.entries(body.heads || {}))
    if (head !== "joint") row(dl, HEADS[head] || head, pct(p));
  if (body.generator !== undefined)  // only from a model with the attribution head
    row(dl, "generator", body.generator === "unknown"
        ? `unknown: none of those it was trained on (top class ${pct(body.generator_confidence)})`
        : `${body.generator} (${pct(body.generator_confidence)})`);
  const img = $("preview");
  img.onload = () => {
    drawBoxes(body.faces || [], img.naturalWidth, img.naturalHeight);
    $("boxnote").textContent = body.faces
      ? `${body.faces.length} face(s) found; the box marks the face scored.`
      : "No face detection on this server (start it with --align): the whole image was scored.";
  };
  img.src = url;
  const ex = body.explanation;
  $("explanation").hidden = !(ex && (ex.rgb_png || ex.freq_png));
  if (ex) { $("rgbmap").src = ex.rgb_png || ""; $("freqmap").src = ex.freq_png || ""; }
  $("result").hidden = false;
}

async function send(file) {
  const status = $("status");
  status.className = "";
  status.textContent = `Scoring ${file.name}…`;
  $("result").hidden = true;
  try {
    const response = await fetch("/v1/score", {method: "POST", body: file,
                                               headers: {"Content-Type": "application/octet-stream"}});
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    status.textContent = `Scored ${file.name}.`;
    show(body, URL.createObjectURL(file));
  } catch (e) {
    status.className = "error";
    status.textContent = `Could not score ${file.name}: ${e.message}`;
  }
}

$("file").addEventListener("change", (e) => { if (e.target.files[0]) send(e.target.files[0]); });
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => { if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]); });

fetch("/v1/model").then((r) => r.ok ? r.json() : null).then((m) => {
  if (!m) return;
  const s = m.serving || {};
  const arch = m.card ? m.card.architecture : m.architecture;
  $("model").textContent = `Model: ${arch ? arch.arch + " " + arch.backbone : "?"} ` +
    `(${m.source}); threshold ${s.threshold} (${s.threshold_source}).`;
}).catch(() => {});
