// Shared by every page: JSON requests, safe element building, SVG line charts. Text from the server is
// always set as text (textContent), never parsed as HTML, so a class or run name cannot become markup.
"use strict";

async function api(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && (body.error || body.detail) ? (body.error || JSON.stringify(body.detail)) : response.statusText;
    throw new Error(message + " (" + response.status + ")");
  }
  return body;
}

// The server refuses a larger upload with 413 as the bytes arrive, but a browser still sending them may
// see the connection closed instead of the message: so the page says it first.
function tooLarge(file) {
  const limit = Number(document.body.dataset.maxUpload || 0);
  if (!limit || file.size <= limit) return "";
  const mb = n => (n / 1048576).toFixed(1).replace(/\.0$/, "");
  return `${file.name} is ${mb(file.size)} MB, more than this server's limit of ${mb(limit)} MB; ` +
         "send a smaller image (or start cnnlab serve with a larger --max-upload-mb)";
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "on") for (const [event, f] of Object.entries(value)) node.addEventListener(event, f);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(value, digits) {
  if (value === null || value === undefined) return "–";
  if (Number.isInteger(value)) return String(value);
  const d = digits === undefined ? 4 : digits;
  return Number(value.toPrecision(d)).toString();
}

function percent(value) { return value === null || value === undefined ? "–" : (100 * value).toFixed(2) + "%"; }

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

// series: [{label, points: [[x, y], ...], color, dashed}]; draws axes with a few ticks and a legend.
function lineChart(title, series) {
  // The legend stands above the plot, one line per series, so it never hides a line.
  const W = 460, L = 56, R = 12, B = 40, T = 26 + 14 * Math.ceil(series.length / 2), H = T + 200 + B;
  const all = series.flatMap(s => s.points).filter(p => p[1] !== null && Number.isFinite(p[1]));
  const chart = svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title});
  chart.append(svg("text", {x: L, y: 16, class: "title"}, title));
  if (!all.length) { chart.append(svg("text", {x: L, y: H / 2}, "no values yet")); return chart; }
  const xs = all.map(p => p[0]), ys = all.map(p => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R), sy = y => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  chart.append(svg("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis"}));
  chart.append(svg("line", {x1: L, y1: T, x2: L, y2: H - B, class: "axis"}));
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    chart.append(svg("text", {x: L - 4, y: sy(y) + 4, class: "tick", "text-anchor": "end"}, fmt(y, 3)));
    chart.append(svg("line", {x1: L, y1: sy(y), x2: W - R, y2: sy(y), class: "grid"}));
  }
  const step = Math.max(1, Math.ceil((x1 - x0) / 8));
  for (let x = Math.ceil(x0); x <= x1; x += step)
    chart.append(svg("text", {x: sx(x), y: H - B + 14, class: "tick", "text-anchor": "middle"}, String(x)));
  chart.append(svg("text", {x: (L + W - R) / 2, y: H - 6, class: "tick", "text-anchor": "middle"}, "epoch"));

  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    const pts = s.points.filter(p => p[1] !== null && Number.isFinite(p[1]));
    if (!pts.length) return;
    const attrs = {points: pts.map(p => `${sx(p[0])},${sy(p[1])}`).join(" "), stroke: color, class: "series"};
    if (s.dashed) attrs["stroke-dasharray"] = "5 4";
    chart.append(svg("polyline", attrs));
    for (const p of pts) chart.append(svg("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: color}));
    const lx = L + (i % 2) * (W - L - R) / 2, ly = 30 + 14 * Math.floor(i / 2);
    chart.append(svg("line", {x1: lx, y1: ly, x2: lx + 20, y2: ly, stroke: color,
      "stroke-width": 2, "stroke-dasharray": s.dashed ? "5 4" : "none"}));
    chart.append(svg("text", {x: lx + 24, y: ly + 4, class: "tick"}, s.label));
  });
  return chart;
}

// The loss and accuracy charts of one or more runs' histories: {label: rows}.
function historyCharts(histories) {
  const loss = [], accuracy = [];
  Object.entries(histories).forEach(([label, rows], i) => {
    const color = COLORS[i % COLORS.length];
    const prefix = Object.keys(histories).length > 1 ? label + " " : "";
    const series = (key) => rows.map(r => [r.epoch, r[key] === undefined ? null : r[key]]);
    loss.push({label: prefix + "train", points: series("train_loss"), color, dashed: true});
    loss.push({label: prefix + "validation", points: series("val_loss"), color});
    accuracy.push({label: prefix + "train", points: series("train_accuracy"), color, dashed: true});
    accuracy.push({label: prefix + "validation", points: series("val_accuracy"), color});
  });
  return [lineChart("loss", loss), lineChart("accuracy", accuracy)];
}
