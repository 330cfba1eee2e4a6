"""The web page at ``GET /``: one self-contained HTML file (inline CSS and JS, no CDN, works offline).

Drop or pick images; each is sent to ``POST /predict?maps=1`` and shown with its heat-map overlay,
score, label and threshold. The slider tries another threshold live (labels are recomputed in the
page with the API's rule, score > threshold; nothing is re-scored). Kept in a .py file so that it
ships inside the package without package-data settings.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>inpctl serve: anomaly detection</title>
<style>
  :root { --bg:#f5f6f8; --card:#fff; --ink:#1d2330; --muted:#667085; --line:#e3e6eb;
          --bad:#c62828; --bad-bg:#fdecea; --ok:#2e7d32; --ok-bg:#e8f5e9; --accent:#1f5fbf; }
  * { box-sizing: border-box; }
  body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; background:var(--bg); color:var(--ink); }
  header { padding:16px 28px; background:#1d2330; color:#fff; }
  header h1 { margin:0; font-size:20px; font-weight:600; }
  header .model { margin-top:4px; font-size:13px; color:#c5cbd6; }
  main { padding:20px 28px; max-width:1200px; margin:0 auto; }
  .controls { display:flex; flex-wrap:wrap; gap:18px 28px; align-items:center; background:var(--card);
              border:1px solid var(--line); border-radius:10px; padding:14px 18px; }
  .controls label { font-weight:600; margin-right:8px; }
  .controls select { font:inherit; padding:4px 8px; }
  #threshold { width:280px; vertical-align:middle; }
  #threshold-value { font-variant-numeric:tabular-nums; display:inline-block; min-width:90px; margin-left:8px; }
  button { font:inherit; padding:4px 12px; border:1px solid var(--line); border-radius:6px; background:#fff; cursor:pointer; }
  #drop { margin:18px 0; border:2px dashed #aab3c2; border-radius:12px; padding:30px; text-align:center;
          background:var(--card); color:var(--muted); transition:background .15s, border-color .15s; }
  #drop.over { background:#eef4ff; border-color:var(--accent); }
  #drop strong { color:var(--ink); }
  #summary { color:var(--muted); margin-bottom:10px; min-height:1.4em; }
  #results { display:grid; grid-template-columns:repeat(auto-fill,minmax(230px,1fr)); gap:16px; }
  .card { background:var(--card); border:1px solid var(--line); border-radius:10px; overflow:hidden; }
  .card img { display:block; width:100%; aspect-ratio:1; object-fit:contain; background:#000; image-rendering:auto; }
  .card .ph { width:100%; aspect-ratio:1; display:flex; align-items:center; justify-content:center; background:#eceff3; color:var(--muted); }
  .card .body { padding:10px 12px; }
  .card .name { font-weight:600; white-space:nowrap; overflow:hidden; text-overflow:ellipsis; }
  .row { display:flex; justify-content:space-between; align-items:center; margin-top:6px; font-variant-numeric:tabular-nums; }
  .badge { font-size:12px; font-weight:700; letter-spacing:.04em; padding:2px 8px; border-radius:999px; }
  .badge.anomalous { color:var(--bad); background:var(--bad-bg); }
  .badge.normal { color:var(--ok); background:var(--ok-bg); }
  .badge.none { color:var(--muted); background:#eceff3; }
  .card.anomalous { border-color:#f1b0ab; }
  .err { color:var(--bad); font-size:13px; margin-top:6px; word-break:break-word; }
  .muted { color:var(--muted); font-size:13px; }
</style>
</head>
<body>
<header>
  <h1>INP-Former anomaly detection</h1>
  <div class="model" id="model">loading the model&hellip;</div>
</header>
<main>
  <div class="controls">
    <div><label for="category">Threshold of</label><select id="category"><option value="">all categories (pooled)</option></select></div>
    <div><label for="threshold">Threshold</label><input type="range" id="threshold" min="0" max="1" step="any" value="0.5">
      <span id="threshold-value">&mdash;</span> <button id="reset" type="button">reset</button></div>
    <div class="muted">anomalous when score &gt; threshold</div>
  </div>
  <div id="drop">
    <p><strong>Drop images here</strong> or <label for="files" style="color:var(--accent);cursor:pointer;text-decoration:underline">pick files</label></p>
    <input type="file" id="files" name="files" accept="image/*" multiple>
  </div>
  <div id="summary"></div>
  <div id="results"></div>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const state = { model: null, threshold: null, results: [] };

function fmt(x) { return x === null || x === undefined ? "\u2014" : Number(x).toPrecision(6); }

async function loadModel() {
  for (;;) {
    try {
      const r = await fetch("/healthz");
      if (r.ok) { state.model = (await r.json()).model; break; }
    } catch (e) { /* not up yet */ }
    await new Promise((ok) => setTimeout(ok, 1000));
  }
  const m = state.model;
  $("model").textContent = `encoder ${m.encoder} \u00b7 ${m.map_mode} maps \u00b7 ${m.device} \u00b7 ` +
    `threshold ${fmt(m.threshold)} (${m.threshold_source || "none"}) \u00b7 ${m.checkpoint}`;
  for (const name of m.categories) {
    const o = document.createElement("option"); o.value = name; o.textContent = name; $("category").appendChild(o);
  }
  resetThreshold();
}

function defaultThreshold() {
  const c = $("category").value, m = state.model;
  return c ? m.category_thresholds[c] : m.threshold;
}

function resetThreshold() { setThreshold(defaultThreshold()); }

function setThreshold(t) {
  state.threshold = (t === undefined) ? null : t;
  const slider = $("threshold"), scores = state.results.filter((r) => r.score !== null).map((r) => r.score);
  const top = Math.max(1e-6, 2 * (state.threshold || 0), ...scores.map((s) => 1.25 * s));
  slider.max = top;   // step="any": every threshold can be tried
  if (state.threshold !== null) slider.value = state.threshold;
  $("threshold-value").textContent = fmt(state.threshold);
  render();
}

function label(score) {
  if (score === null || state.threshold === null) return null;
  return score > state.threshold ? 1 : 0;   // the API's rule
}

function render() {
  let anomalous = 0, normal = 0, failed = 0;
  for (const r of state.results) {
    const card = r.card, l = label(r.score);
    card.classList.toggle("anomalous", l === 1);
    const badge = card.querySelector(".badge");
    badge.className = "badge " + (l === 1 ? "anomalous" : l === 0 ? "normal" : "none");
    badge.textContent = l === 1 ? "ANOMALOUS" : l === 0 ? "normal" : (r.error ? "error" : r.pending ? "scoring\u2026" : "no threshold");
    card.querySelector(".threshold").textContent = fmt(state.threshold);
    if (l === 1) anomalous++; else if (l === 0) normal++;
    if (r.error) failed++;
  }
  const n = state.results.length;
  $("summary").textContent = n ? `${n} image(s): ${anomalous} anomalous, ${normal} normal` + (failed ? `, ${failed} failed` : "") : "";
}

function addCard(file) {
  const card = document.createElement("div");
  card.className = "card";
  card.innerHTML = `<div class="ph">scoring&hellip;</div><div class="body"><div class="name"></div>
    <div class="row"><span>score <b class="score">\u2014</b></span><span class="badge none">scoring\u2026</span></div>
    <div class="row muted"><span>threshold</span><span class="threshold"></span></div></div>`;
  card.querySelector(".name").textContent = file.name;
  card.querySelector(".name").title = file.name;
  $("results").prepend(card);
  const r = { card, score: null, error: null, pending: true, name: file.name };
  state.results.push(r);
  return r;
}

async function score(file) {
  const r = addCard(file);
  render();
  const body = new FormData();
  body.append("files", file, file.name);
  const c = $("category").value;
  try {
    const resp = await fetch("/predict?maps=1" + (c ? "&category=" + encodeURIComponent(c) : ""), { method: "POST", body });
    const data = await resp.json();
    const p = data.predictions ? data.predictions[0] : null;
    if (p && p.error === undefined) {
      r.score = p.score;
      const img = document.createElement("img");
      img.className = "overlay"; img.alt = "anomaly map of " + file.name;
      img.src = "data:image/png;base64," + p.overlay;
      r.card.querySelector(".ph").replaceWith(img);
      const s = r.card.querySelector(".score");
      s.textContent = fmt(p.score); s.dataset.score = String(p.score);
    } else {
      r.error = (p && p.error) || data.error || ("HTTP " + resp.status);
    }
  } catch (e) {
    r.error = String(e);
  }
  r.pending = false;
  if (r.error) {
    const ph = r.card.querySelector(".ph"); if (ph) ph.textContent = "not scored";
    const e = document.createElement("div"); e.className = "err"; e.textContent = r.error;
    r.card.querySelector(".body").appendChild(e);
  }
  setThreshold(state.threshold);   // widen the slider to the new score if needed
}

function scoreAll(files) { for (const f of files) score(f); }

$("files").addEventListener("change", (e) => { scoreAll(e.target.files); });
$("threshold").addEventListener("input", (e) => { state.threshold = Number(e.target.value);
  $("threshold-value").textContent = fmt(state.threshold); render(); });
$("reset").addEventListener("click", resetThreshold);
$("category").addEventListener("change", resetThreshold);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); scoreAll(e.dataTransfer.files); });
loadModel();
</script>
</body>
</html>
"""
