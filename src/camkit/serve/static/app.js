// camkit serve page: pick an image, model, methods and target; POST /explain; draw the overlays.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { file: null, fileName: "", imageUrl: null, classes: [], results: [] };

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status} ${(await r.json().catch(() => ({}))).detail || r.statusText}`);
  return r.json();
}

function useFile(blob, name) {
  if (!blob.type.startsWith("image/") && blob.type !== "") {
    setStatus(`${name} is not an image (${blob.type})`, true);
    return;
  }
  state.file = blob;
  state.fileName = name;
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.imageUrl = URL.createObjectURL(blob);
  $("chosen").textContent = `${name} (${Math.round(blob.size / 1024)} kB)`;
  $("explain").disabled = false;
  setStatus("");
}

async function loadModels() {
  const models = await getJSON("/models");
  for (const m of models) {
    const o = document.createElement("option");
    o.value = m.name;
    o.textContent = `${m.name} (${m.num_classes ?? "?"} classes, ${m.input_size.join("×")})`;
    $("model").append(o);
  }
  await loadClasses();
}

async function loadClasses() {
  state.classes = await getJSON(`/models/${encodeURIComponent($("model").value)}/classes`);
  const list = $("class-list");
  list.replaceChildren(...state.classes.map((c) => { const o = document.createElement("option"); o.value = c; return o; }));
  resolveClass();
}

async function loadMethods() {
  const methods = await getJSON("/methods");
  for (const m of methods) {
    const label = document.createElement("label");
    label.title = m.summary;
    const box = document.createElement("input");
    box.type = "checkbox";
    box.name = "method";
    box.value = m.name;
    box.checked = m.name === "gradcam";
    label.append(box, " " + m.name);
    $("methods").append(label);
  }
}

async function loadSamples() {
  for (const s of await getJSON("/samples")) {
    const o = document.createElement("option");
    o.value = s.url;
    o.textContent = s.id;
    $("sample").append(o);
  }
}

// a class typed by name (a full name or one of its comma-separated synonyms) or by index -> index or null
function resolveClass() {
  const text = $("class-name").value.trim().toLowerCase();
  let index = null;
  if (/^\d+$/.test(text) && +text < state.classes.length) index = +text;
  else if (text) {
    index = state.classes.findIndex((c) => c.toLowerCase() === text);
    if (index < 0) index = state.classes.findIndex((c) => c.toLowerCase().split(",").map((s) => s.trim()).includes(text));
    if (index < 0) index = null;
  }
  $("class-hint").textContent = index === null ? (text ? "no such class" : "") : `class ${index}: ${state.classes[index]}`;
  return index;
}

function target() {
  const kind = $("target-kind").value;
  if (kind !== "class") return kind;
  const index = resolveClass();
  if (index === null) throw new Error("type a class name from the list (or its index)");
  return String(index);
}

async function explain() {
  const methods = [...document.querySelectorAll("input[name=method]:checked")].map((b) => b.value);
  if (!state.file) return setStatus("choose an image first", true);
  if (!methods.length) return setStatus("tick at least one method", true);
  let t;
  try { t = target(); } catch (e) { return setStatus(e.message, true); }
  const form = new FormData();
  form.append("image", state.file, state.fileName);
  form.append("model", $("model").value);
  form.append("methods", methods.join(","));
  form.append("target", t);
  $("explain").disabled = true;
  setStatus(`explaining with ${methods.join(", ")}…`);
  try {
    const r = await fetch("/explain", { method: "POST", body: form });
    const body = await r.json().catch(() => ({ detail: r.statusText }));
    if (!r.ok) throw new Error(`${r.status}: ${body.detail}`);
    show(body);
    setStatus("");
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    $("explain").disabled = false;
  }
}

function show(body) {
  $("classes").replaceChildren(...body.classes.map((c) => {
    const li = document.createElement("li");
    const score = document.createElement("span");
    score.textContent = ` ${(100 * c.score).toFixed(1)}% (class ${c.index})`;
    li.append(c.name, score);
    return li;
  }));
  const figures = [inputFigure(body.image)];  // the image first, its maps beside it
  for (const [method, items] of Object.entries(body.maps)) {
    for (const item of items) figures.push(figure(method, item));
  }
  $("results").replaceChildren(...figures);
  const t = body.timings;
  $("timings").textContent = `total ${t.total_ms.toFixed(0)} ms (queue ${t.queue_ms.toFixed(0)} ms, explain ` +
    Object.entries(t.explain_ms).map(([m, v]) => `${m} ${v.toFixed(0)} ms × batch ${t.batch_size[m]}`).join(", ") + ")";
  $("output").hidden = false;
  applyOpacity();
}

function inputFigure(size) {
  const fig = document.createElement("figure");
  fig.className = "result input";
  const img = new Image();
  img.src = state.imageUrl;
  img.alt = state.fileName;
  const cap = document.createElement("figcaption");
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = `image · ${size.width}×${size.height}`;
  cap.append(label);
  fig.append(img, cap);
  return fig;
}

function figure(method, item) {
  const fig = document.createElement("figure");
  fig.className = "result";
  const stack = document.createElement("div");
  stack.className = "stack";
  const base = new Image();
  base.className = "base";
  base.src = state.imageUrl;
  base.alt = state.fileName;
  const heat = new Image();
  heat.className = "heat";
  heat.src = "data:image/png;base64," + item.heatmap;
  heat.alt = `${method} map of ${item.name}`;
  stack.append(base, heat);
  const cap = document.createElement("figcaption");
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = `${method} · ${item.name} (${item.class})`;
  const links = document.createElement("span");
  const png = document.createElement("a");
  png.href = "#";
  png.textContent = "PNG";
  png.onclick = (ev) => { ev.preventDefault(); downloadPng(base, heat, `${stem()}_${method}_${item.class}.png`); };
  const npy = document.createElement("a");
  npy.href = "data:application/octet-stream;base64," + item.npy;
  npy.download = `${stem()}_${method}_${item.class}.npy`;
  npy.textContent = "NPY";
  links.append(png, npy);
  cap.append(label, links);
  fig.append(stack, cap);
  return fig;
}

function stem() { return state.fileName.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_-]+/g, "_") || "image"; }

function downloadPng(base, heat, name) {
  const c = document.createElement("canvas");
  c.width = heat.naturalWidth;
  c.height = heat.naturalHeight;
  const g = c.getContext("2d");
  g.drawImage(base, 0, 0, c.width, c.height);
  g.globalAlpha = $("opacity").value / 100;
  g.drawImage(heat, 0, 0);
  c.toBlob((blob) => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }, "image/png");
}

function applyOpacity() {
  const v = $("opacity").value;
  $("opacity-value").textContent = `${v}%`;
  for (const img of document.querySelectorAll("img.heat")) img.style.opacity = v / 100;
}

function wire() {
  const drop = $("drop");
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  drop.addEventListener("drop", (e) => { const f = e.dataTransfer.files[0]; if (f) useFile(f, f.name); });
  $("file").addEventListener("change", (e) => { const f = e.target.files[0]; if (f) useFile(f, f.name); });
  $("sample").addEventListener("change", async (e) => {
    if (!e.target.value) return;
    const r = await fetch(e.target.value);
    useFile(await r.blob(), e.target.selectedOptions[0].textContent + "." + (r.headers.get("content-type") || "image/png").split("/")[1]);
  });
  $("model").addEventListener("change", loadClasses);
  $("target-kind").addEventListener("change", () => { $("class-field").hidden = $("target-kind").value !== "class"; });
  $("class-name").addEventListener("input", resolveClass);
  $("opacity").addEventListener("input", applyOpacity);
  $("explain").addEventListener("click", explain);
}

wire();
Promise.all([loadModels(), loadMethods(), loadSamples()]).catch((e) => setStatus(e.message, true));
