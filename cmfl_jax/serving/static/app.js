// The page: send the chosen or dropped file to /v1/score and show the answer:
// the verdict, one probability, why, every face found, what the model saw, and
// every number in a details section, each with a sentence.
"use strict";
const $ = (id) => document.getElementById(id);
const WORDS = {real: "Real face", synthetic: "Synthetic face", unsure: "Unsure"};
const CONDITIONS = {jpeg: (q) => `after saving as JPEG at quality ${q}`,
                    resize: (f) => `after shrinking to ${Math.round(100 * f)} % and back`};
const SOURCES = {
  dev_eer: "set where the model's two error rates (real called synthetic, synthetic called " +
           "real) were equal on the development images",
  "default_0.5": "the default 50 %: this checkpoint stores no threshold of its own",
};
let model = {};

function pct(p) {
  if (p === null || p === undefined || Number.isNaN(p)) return "–";
  if (p > 0 && p < 0.001) return "< 0.1 %";
  if (p < 1 && p > 0.999) return "> 99.9 %";
  return (100 * p).toFixed(1) + " %";
}

function sourceWords(source) {
  if (source.startsWith("calibration:"))
    return `taken from the calibration "${source.slice(12)}", made on a set of real photos ` +
           "so that few of them are called synthetic";
  return SOURCES[source] || source;
}

function conditionWords(name) {
  const [kind, arg] = name.split(":");
  return CONDITIONS[kind] ? CONDITIONS[kind](Number(arg)) : `after ${name}`;
}

// The one number a person reads, named for what it is.
function probabilityName(face) {
  return face.probability.platt ? "Probability that the face is real (Platt-scaled)"
                              : "Model score for \u201creal\u201d (not a probability)";
}

function because(face) {
  const pr = face.probability, name = pr.platt ? "Platt-scaled probability" : "score";
  if (face.verdict === "real") return pr.band
    ? `Called real: its ${name} is at or above ${pct(pr.band[1])}, where the unsure range ends.`
    : `Called real: its ${name} is at or above the decision threshold of ${pct(pr.threshold)}.`;
  if (face.verdict === "synthetic") return pr.band
    ? `Called synthetic: its ${name} is below ${pct(pr.band[0])}, where the unsure range begins.`
    : `Called synthetic: its ${name} is below the decision threshold of ${pct(pr.threshold)}.`;
  return `Why unsure: ${face.why}.`;
}

function row(dl, name, value, note) {
  const dt = document.createElement("dt"), v = document.createElement("dd"),
        n = document.createElement("dd");
  dt.textContent = name; v.textContent = value; n.textContent = note;
  v.className = "value"; n.className = "note";
  dl.append(dt, v, n);
}

function details(face) {
  const dl = $("scores"), pr = face.probability;
  dl.replaceChildren();
  if (pr.platt) row(dl, "Platt-scaled probability", pct(pr.value),
    "The model's score turned into a probability by a fit on the development images: " +
    "among faces given this number, about this share were real.");
  row(dl, "P(real), model score", pct(face.p_real),
    "The model's own output for \u201creal\u201d before Platt scaling. It ranks faces " +
    "the same way, but its size is not a probability you can rely on.");
  row(dl, "Decision threshold", pct(pr.threshold),
    `At or above it a face is called real, below it synthetic (${pr.platt ?
      "on the Platt-scaled scale; " + pct(face.threshold) + " on the model score" : "on the score"});` +
    ` ${sourceWords(face.threshold_source)}.`);
  if (pr.band) row(dl, "Unsure between", `${pct(pr.band[0])} – ${pct(pr.band[1])}`,
    "Faces in this range get no verdict: on the development images the model was wrong too " +
    "often this close to the threshold.");
  for (const [name, p] of Object.entries(face.stability || {}))
    row(dl, `Score ${conditionWords(name)}`, pct(p),
      "The same image, slightly processed as shared photos are; if the verdict changes, " +
      "the answer is unsure.");
  const heads = face.heads || {};
  if ("rgb" in heads) row(dl, "Colour stream alone", pct(heads.rgb),
    "P(real) from the part of the model that sees the colour image only.");
  if ("freq" in heads) row(dl, "Frequency stream alone", pct(heads.freq),
    "P(real) from the part of the model that sees the image's frequency spectrum (fine detail).");
  if (face.generator !== undefined)  // only from a model with the attribution head
    row(dl, "generator", face.generator === "unknown" ? "unknown" :
        `${face.generator} (${pct(face.generator_confidence)})`,
        face.generator === "unknown"
          ? `None of the generators it was trained on (most likely class ${pct(face.generator_confidence)}).`
          : "The generator the attribution head names, with its probability.");
  if (face.face_score !== undefined) row(dl, "Face detector confidence", pct(face.face_score),
    "How sure the face detector is that this box holds a face.");
}

function drawBoxes(faces, width, height, chosen) {
  const svg = $("boxes"), ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const stroke = Math.max(2, width / 120);
  faces.forEach((face, k) => {
    const [x0, y0, x1, y1] = face.box;
    const colour = getComputedStyle(document.documentElement)
      .getPropertyValue(`--${face.verdict}`).trim();
    const r = document.createElementNS(ns, "rect");
    Object.entries({x: x0, y: y0, width: x1 - x0, height: y1 - y0, fill: "none", stroke: colour,
                    "stroke-width": k === chosen ? 1.8 * stroke : stroke})
      .forEach(([a, v]) => r.setAttribute(a, v));
    const t = document.createElementNS(ns, "text");
    Object.entries({x: x0 + stroke, y: y0 - stroke, fill: colour, "font-size": 8 * stroke,
                    "font-weight": "bold"}).forEach(([a, v]) => t.setAttribute(a, v));
    t.textContent = String(k + 1);
    svg.append(r, t);
  });
}

function profile(p) {
  const svg = $("profile"), ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const W = 240, H = 170, L = 14, R = 232, T = 12, B = 130;
  const top = Math.max(...p.evidence.map(Math.abs)) || 1;
  const x = (r) => L + (R - L) * r / Math.SQRT2, y = (v) => (T + B) / 2 - (B - T) / 2 * v / top;
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    Object.entries(attrs).forEach(([a, v]) => e.setAttribute(a, v));
    if (text) e.textContent = text;
    svg.append(e); return e;
  };
  add("line", {x1: L, x2: R, y1: y(0), y2: y(0), stroke: "#999"});
  p.radius.forEach((r, k) => {
    const v = p.evidence[k], w = (R - L) / p.radius.length * 0.8;
    add("rect", {x: x(r) - w / 2, width: w, y: Math.min(y(v), y(0)), height: Math.abs(y(v) - y(0)),
                 fill: v > 0 ? "var(--synthetic)" : "var(--real)"});
  });
  add("text", {x: L, y: H - 22, "font-size": 11, fill: "#333"}, "coarse shapes");
  add("text", {x: R, y: H - 22, "font-size": 11, fill: "#333", "text-anchor": "end"}, "finest detail");
  add("text", {x: (L + R) / 2, y: H - 6, "font-size": 11, fill: "#555", "text-anchor": "middle"},
      "size of detail in the image");
  add("text", {x: R, y: T + 2, "font-size": 10, fill: "var(--synthetic)", "text-anchor": "end"},
      "for synthetic");
  add("text", {x: R, y: B + 2, "font-size": 10, fill: "var(--real)", "text-anchor": "end"}, "for real");
}

function explanation(face) {
  const ex = face.explanation;
  $("explanation").hidden = !ex;
  if (!ex) return;
  $("overlayfig").hidden = !ex.overlay_png;
  $("patternfig").hidden = !ex.pattern_png;
  $("profilefig").hidden = !ex.profile;
  if (ex.overlay_png) $("overlay").src = ex.overlay_png;
  if (ex.pattern_png) $("pattern").src = ex.pattern_png;
  if (ex.profile) profile(ex.profile);
}

function choose(body, k) {
  const face = body.faces ? body.faces[k] : body;
  const v = $("verdict");
  v.textContent = (body.faces && body.faces.length > 1 ? `Face ${k + 1}: ` : "") +
                  (WORDS[face.verdict] || face.verdict);
  v.dataset.verdict = face.verdict;
  $("headline").textContent = `${probabilityName(face)}: ${pct(face.probability.value)}`;
  $("reason").textContent = because(face);
  $("help").hidden = !face.help;
  $("help").textContent = face.help ? `What would help: ${face.help}.` : "";
  $("explaintitle").textContent = body.faces && body.faces.length > 1
    ? `What the model saw in face ${k + 1}` : "What the model saw";
  document.querySelectorAll("#faces li").forEach((li, j) => li.classList.toggle("chosen", j === k));
  explanation(face);
  details(face);
  const img = $("preview");
  if (body.faces && img.naturalWidth) drawBoxes(body.faces, img.naturalWidth, img.naturalHeight, k);
}

function show(body, url) {
  const faces = body.faces || [], list = $("faces");
  list.replaceChildren();
  list.hidden = faces.length < 2;
  faces.forEach((face, k) => {
    const li = document.createElement("li");
    li.tabIndex = 0;
    li.dataset.verdict = face.verdict;
    li.textContent = `${WORDS[face.verdict]}, ${pct(face.probability.value)}`;
    li.onclick = li.onkeydown = (e) => { if (!e.key || e.key === "Enter") choose(body, k); };
    list.append(li);
  });
  const img = $("preview");
  img.onload = () => {
    if (faces.length) drawBoxes(faces, img.naturalWidth, img.naturalHeight, 0);
    else $("boxes").replaceChildren();
    $("boxnote").textContent = !body.faces
      ? "This server scores the whole image (start it with --align to find faces first)."
      : faces.length === 1 ? "1 face found; the box is coloured by its verdict."
      : `${faces.length} faces found, each boxed in the colour of its verdict; ` +
        "choose one in the list to see its explanation and numbers.";
  };
  img.src = url;
  choose(body, 0);
  $("result").hidden = false;
}

async function send(file) {
  const status = $("status");
  status.className = "";
  status.textContent = `Checking ${file.name}…`;
  $("result").hidden = true;
  try {
    const response = await fetch("/v1/score?explain=1", {method: "POST", body: file,
                                               headers: {"Content-Type": "application/octet-stream"}});
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    status.textContent = `Checked ${file.name}.`;
    show(body, URL.createObjectURL(file));
  } catch (e) {
    status.className = "error";
    status.textContent = `Could not check ${file.name}: ${e.message}. ` +
      "Try another image with a face in it.";
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
  model = m;
  const s = m.serving || {};
  const arch = m.card ? m.card.architecture : m.architecture;
  $("model").textContent = `Model: ${arch ? arch.arch + " " + arch.backbone : "?"} ` +
    `(${m.source === "export" ? "exported model" : "checkpoint"}). Its decision threshold was ` +
    `${sourceWords(s.threshold_source || "")}.`;
}).catch(() => {});
