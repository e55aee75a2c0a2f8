// The taxoclip page: photos go to /v1/predict; changing the rank, k or labels asks again.
"use strict";
const $ = (id) => document.getElementById(id);
const photos = [];  // {file, url, card}
let timer = null;

fetch("/v1/models").then((r) => r.json()).then((d) => {
  const m = d.models[0];
  $("model-line").textContent = `Model ${m.id}: ${m.vocabulary.taxa.toLocaleString()} taxa. Photos stay on this server.`;
}).catch(() => { $("model-line").textContent = "Model not ready yet."; });

function add(files) {
  for (const file of files) {
    const card = document.createElement("article");
    card.className = "card";
    const url = URL.createObjectURL(file);
    card.innerHTML = `<img alt=""><div class="body"><h2></h2><div class="out">…</div></div>`;
    card.querySelector("img").src = url;
    card.querySelector("h2").textContent = file.name;
    $("results").prepend(card);
    photos.push({ file, url, card });
  }
  predict(photos.slice(-files.length));
}

function options() {
  const body = new FormData();
  body.append("rank", $("rank").value);
  body.append("k", String(Math.max(1, Math.min(20, parseInt($("k").value, 10) || 5))));
  if ($("labels").value.trim()) body.append("labels", $("labels").value);
  return body;
}

async function predict(items) {
  if (!items.length) return;
  const body = options();
  for (const p of items) body.append("files", p.file, p.file.name);
  $("status").textContent = `Identifying ${items.length} photo${items.length > 1 ? "s" : ""}…`;
  try {
    const r = await fetch("/v1/predict", { method: "POST", body });
    const d = await r.json();
    if (!r.ok) throw new Error(typeof d.detail === "string" ? d.detail : JSON.stringify(d.detail));
    d.results.forEach((res, i) => show(items[i].card, res));
    $("status").textContent = "";
  } catch (e) {
    $("status").textContent = `Error: ${e.message}`;
    $("status").className = "error";
    return;
  }
  $("status").className = "";
}

function show(card, res) {
  const out = card.querySelector(".out");
  out.replaceChildren();
  if (res.error) {
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = res.error;
    out.append(p);
    return;
  }
  for (const c of res.candidates) {
    const div = document.createElement("div");
    div.className = "cand";
    const name = document.createElement("div");
    name.className = "name";
    const label = c.label ?? c.name;
    if (c.lineage && res.rank === "species") {
      const i = document.createElement("i"); i.textContent = label; name.append(i);
    } else { name.textContent = label; }
    if (c.common_name) {
      const s = document.createElement("span"); s.className = "common"; s.textContent = ` (${c.common_name})`; name.append(s);
    }
    const pct = document.createElement("span");
    pct.textContent = ` ${(100 * c.score).toFixed(1)}%`;
    name.append(pct);
    div.append(name);
    if (c.lineage) {
      const lin = document.createElement("div");
      lin.className = "lineage";
      lin.textContent = Object.values(c.lineage).filter(Boolean).join(" › ");
      div.append(lin);
    }
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${Math.max(1, Math.round(100 * c.score))}%`;
    bar.append(fill);
    div.append(bar);
    out.append(div);
  }
}

function again() {
  clearTimeout(timer);
  timer = setTimeout(() => predict(photos), 300);
}

$("files").addEventListener("change", (e) => { add([...e.target.files]); e.target.value = ""; });
$("rank").addEventListener("change", again);
$("k").addEventListener("change", again);
$("labels").addEventListener("input", again);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  add([...e.dataTransfer.files].filter((f) => f.type.startsWith("image/") || !f.type));
});
