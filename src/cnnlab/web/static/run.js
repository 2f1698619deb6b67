// A run's page: live curves, confusion-matrix cells, a picture through the network, one value explained.
"use strict";
const facts = () => document.getElementById("facts");
const runName = () => facts().dataset.run;
const q = (params) => Object.entries(params).map(([k, v]) => k + "=" + encodeURIComponent(v)).join("&");
let current = null;  // the picture being looked at: an upload's id or "test:N"

function matrixTable(rows, cls) {
  return el("table", {class: "matrix " + (cls || "")},
    rows.map(row => el("tr", {}, row.map(v => el("td", {}, v === null ? "·" : fmt(v))))));
}

// --- curves, live while the run trains ------------------------------------------------------------
async function showHistory() {
  const h = await api("/api/history?" + q({run: runName()}));
  document.getElementById("curves").replaceChildren(...historyCharts({[runName()]: h.history}));
  const head = el("tr", {}, ["epoch", "train loss", "train acc.", "val. loss", "val. acc.", "seconds"].map(t => el("th", {}, t)));
  const rows = h.history.map(r => el("tr", {}, [r.epoch, fmt(r.train_loss), percent(r.train_accuracy),
    fmt(r.val_loss), percent(r.val_accuracy), fmt(r.seconds, 3)].map(v => el("td", {}, v))));
  document.getElementById("epochs").replaceChildren(head, ...rows);
  const status = document.getElementById("status");
  if (h.running) status.textContent = `Training now: epoch ${h.history.length} of ${h.epochs}; the curves update by themselves.`;
  else if (facts().dataset.running === "yes") {
    status.textContent = "Training has finished: reload the page for the per-class results.";
    if (h.metrics && h.metrics.test_accuracy !== null) document.getElementById("test-accuracy").textContent = percent(h.metrics.test_accuracy);
  }
  return h.running;
}

async function poll() {
  let running = false;
  try { running = await showHistory(); } catch (e) { document.getElementById("status").textContent = e.message; }
  if (running) setTimeout(poll, 2000);
}

// --- a confusion-matrix cell's test images ------------------------------------------------------------
async function showCell(button) {
  const box = document.getElementById("cell-images");
  box.replaceChildren(el("p", {class: "hint"}, "loading the test images…"));
  try {
    const r = await api("/api/confusion?" + q({run: runName(), true: button.dataset.true, predicted: button.dataset.predicted}));
    const title = el("h3", {}, `true ${r.true}, predicted ${r.predicted}: ${r.count} test image${r.count === 1 ? "" : "s"}` +
      (r.count > r.images.length ? ` (the ${r.images.length} most confident shown)` : ""));
    const items = r.images.map(i => el("figure", {class: "thumb"},
      el("img", {src: i.picture, class: "px", alt: "test image " + i.index, title: "look inside",
                 on: {click: () => look(i.image)}}),
      el("figcaption", {}, `#${i.index} · ${percent(i.probability)}`)));
    box.replaceChildren(title, el("div", {class: "gallery"}, items));
  } catch (e) { box.replaceChildren(el("p", {class: "error"}, e.message)); }
}

// --- a picture through the network --------------------------------------------------------------------
function showError(message) {
  const p = document.getElementById("picture-error");
  p.textContent = message; p.hidden = !message;
}

async function upload(event) {
  event.preventDefault();
  const file = document.getElementById("upload-file").files[0];
  if (!file) { showError("choose an image file first"); return; }
  if (tooLarge(file)) { showError(tooLarge(file)); return; }
  const form = new FormData(); form.append("image", file);
  try {
    const r = await api("/api/predict?" + q({run: runName()}), {method: "POST", body: form});
    await look(r.image);
  } catch (e) { showError(e.message); }
}

function layerBlock(layer) {
  const shape = layer.shape.join("×");
  const head = el("h4", {}, el("span", {class: "lname"}, layer.name), " ", el("span", {class: "kind"}, layer.kind),
    ` → ${shape}`, el("span", {class: "range"}, `  values ${fmt(layer.range[0], 3)} … ${fmt(layer.range[1], 3)}`));
  const block = el("section", {class: "layer-out", dataset: {layer: layer.name}}, head);
  if (layer.view === "maps") {
    const [, h, w] = layer.shape;
    const size = Math.max(28, Math.min(112, 4 * Math.max(h, w)));
    const maps = layer.maps.map((src, c) => el("img", {src, class: "fmap px", alt: `${layer.name} channel ${c}`,
      title: `channel ${c}: click a value`, style: `width: ${size}px; height: ${Math.round(size * h / w)}px`,
      dataset: {layer: layer.name, channel: c, h, w}, on: {click: clickMap}}));
    block.append(el("div", {class: "maps"}, maps));
    if (layer.hidden) block.append(el("p", {class: "hint"}, `and ${layer.hidden} more channels`));
  } else if (layer.view === "bars") {
    const top = Math.max(1e-12, ...layer.bars.map(v => Math.abs(v || 0)));
    const bars = layer.bars.map((v, i) => el("span", {class: "vbar" + (v < 0 ? " neg" : ""), title: `unit ${i}: ${fmt(v)}`,
      style: `height: ${Math.round(40 * Math.abs(v || 0) / top) + 1}px`, dataset: {layer: layer.name, unit: i},
      on: {click: () => explainValue(layer.name, [i])}}));
    block.append(el("div", {class: "bars"}, bars));
    if (layer.hidden) block.append(el("p", {class: "hint"}, `and ${layer.hidden} more values`));
  }
  return block;
}

function clickMap(event) {
  const img = event.currentTarget, d = img.dataset;
  const row = Math.min(Number(d.h) - 1, Math.floor(event.offsetY / img.clientHeight * Number(d.h)));
  const col = Math.min(Number(d.w) - 1, Math.floor(event.offsetX / img.clientWidth * Number(d.w)));
  explainValue(d.layer, [Number(d.channel), row, col]);
}

async function look(image) {
  showError("");
  try {
    const r = await api("/api/layers?" + q({run: runName(), image}));
    current = r.image;
    document.getElementById("look-name").textContent = r.name;
    document.getElementById("look-input").src = r.picture;
    const best = r.top.length ? r.top[0].probability : 1;
    document.getElementById("top5").replaceChildren(...r.top.map(t => el("tr", {class: "top"},
      el("td", {}, t.class), el("td", {class: "probability"}, percent(t.probability)),
      el("td", {class: "barcell"}, el("span", {class: "bar", style: `width: ${Math.round(100 * t.probability / best)}%`})))));
    const cam = document.getElementById("look-cam");
    cam.hidden = Boolean(r.cam.error);
    if (r.cam.error) document.getElementById("cam-note").textContent = r.cam.error;
    else {
      cam.src = r.cam.picture;
      document.getElementById("cam-note").textContent = `for ${r.cam.class} (${percent(r.cam.probability)}), at ${r.cam.layer}` +
        ` (${r.cam.size.join("×")})` + (r.cam.empty ? ": no positive evidence there" : "");
    }
    document.getElementById("layers").replaceChildren(...r.layers.map(layerBlock));
    document.getElementById("look").hidden = false;
    document.getElementById("look").scrollIntoView({behavior: "smooth"});
  } catch (e) { showError(e.message); }
}

// --- one value, explained ---------------------------------------------------------------------------
async function explainValue(layer, position) {
  const panel = document.getElementById("explain");
  try {
    const x = await api("/api/explain?" + q({run: runName(), image: current, layer, pos: position.join(",")}));
    document.getElementById("explain-title").textContent = `${x.layer} (${x.kind}) at [${x.position.join(", ")}]: ${x.how}`;
    document.getElementById("explain-formula").textContent = x.formula;
    document.getElementById("explain-value").textContent = fmt(x.value, 6);
    document.getElementById("explain-computed").textContent = fmt(x.computed, 6);
    const terms = document.getElementById("explain-terms");
    terms.replaceChildren();
    if (x.how === "convolution") {
      const shown = x.terms.slice(0, 16);
      for (const t of shown) terms.append(el("div", {class: "term"},
        el("p", {}, `input channel ${t.channel}`),
        el("div", {class: "trio"}, el("div", {}, "patch", matrixTable(t.patch, "patch")),
          el("div", {}, "× kernel", matrixTable(t.kernel, "kernel")),
          el("div", {}, "= products", matrixTable(t.products, "products"))),
        el("p", {class: "sum"}, "sum ", el("b", {class: "term-sum"}, fmt(t.sum, 6)))));
      if (x.terms.length > shown.length) terms.append(el("p", {class: "hint"}, `and ${x.terms.length - shown.length} more input channels`));
      terms.append(el("p", {class: "total"}, `sum of ${x.terms.length} channel sum${x.terms.length === 1 ? "" : "s"} + bias `,
        el("b", {id: "explain-bias"}, fmt(x.bias === null ? 0 : x.bias, 6)), " = ", el("b", {}, fmt(x.computed, 6))));
    } else if (x.window) {
      terms.append(el("div", {}, "window", matrixTable(x.window, "patch")));
    }
    panel.hidden = false;
  } catch (e) { showError(e.message); }
}

document.addEventListener("DOMContentLoaded", () => {
  poll();
  document.querySelectorAll("button.cm").forEach(b => b.addEventListener("click", () => showCell(b)));
  document.getElementById("upload").addEventListener("submit", upload);
  document.getElementById("use-test").addEventListener("click", () => look("test:" + document.getElementById("test-index").value));
  document.getElementById("explain-close").addEventListener("click", () => { document.getElementById("explain").hidden = true; });
});
