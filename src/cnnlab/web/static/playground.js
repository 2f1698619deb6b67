// The convolution playground: the server computes with cnnlab's reference ops; this draws the result.
"use strict";
const $ = id => document.getElementById(id);
let result = null;

function request() {
  return {matrix: $("pg-matrix").value, kernel: $("pg-kernel").value, op: $("pg-op").value,
          size: Number($("pg-size").value), stride: Number($("pg-stride").value),
          padding: Number($("pg-padding").value), dilation: Number($("pg-dilation").value), ceil_mode: $("pg-ceil").checked};
}

function cells(rows, onClick) {
  return rows.map((row, r) => el("tr", {}, row.map((v, c) => el("td", {dataset: {row: r, col: c},
    on: onClick ? {click: () => onClick(r, c)} : {}}, v === null ? "−∞" : fmt(v, 6)))));
}

function highlight(r, c) {
  const w = result.windows.find(w => w.row === r && w.col === c);
  document.querySelectorAll("#pg-input td.in-window, #pg-output td.chosen").forEach(td => td.classList.remove("in-window", "chosen"));
  $("pg-output").rows[r].cells[c].classList.add("chosen");
  if (!w) { $("pg-window").textContent = `out[${r},${c}]: beyond the windows listed`; return; }
  const k = result.kernel ? [result.kernel.length, result.kernel[0].length] : [w.values.length, w.values[0].length];
  const stride = Number($("pg-stride").value), dil = $("pg-op").value === "avgpool" ? 1 : Number($("pg-dilation").value);
  for (let i = 0; i < k[0]; i++) for (let j = 0; j < k[1]; j++) {
    const row = $("pg-input").rows[r * stride + i * dil];
    if (row && row.cells[c * stride + j * dil]) row.cells[c * stride + j * dil].classList.add("in-window");
  }
  $("pg-window").textContent = `out[${r},${c}] = ${w.arithmetic} = ${fmt(w.result, 6)}`;
}

async function compute(event) {
  if (event) event.preventDefault();
  const pooling = $("pg-op").value.endsWith("pool");
  $("pg-kernel").disabled = pooling; $("pg-size").disabled = !pooling;
  try {
    result = await api("/api/playground", {method: "POST", headers: {"Content-Type": "application/json"},
                                           body: JSON.stringify(request())});
  } catch (e) { $("pg-error").textContent = e.message; $("pg-error").hidden = false; $("pg-result").hidden = true; return; }
  $("pg-error").hidden = true;
  $("pg-step").textContent = result.step;
  $("pg-sizes").replaceChildren(...result.sizes.map(s => el("li", {}, el("code", {}, `${s.name} = ${s.formula} = ${s.value}`))));
  const padded = result.padded.length !== result.input.length;
  $("pg-padded-note").textContent = padded ? "(with its padding)" : "";
  $("pg-input").replaceChildren(...cells(result.padded));
  $("pg-output").replaceChildren(...cells(result.output, highlight));
  $("pg-notes").replaceChildren(...result.notes.map(n => el("li", {}, n)));
  $("pg-windows").replaceChildren(...result.windows.map(w => el("li", {}, `out[${w.row},${w.col}] = ${w.arithmetic} = ${fmt(w.result, 6)}`)));
  if (result.hidden) $("pg-windows").append(el("li", {class: "hint"}, `… and ${result.hidden} more`));
  $("pg-window").textContent = "Click an output value to see its window.";
  $("pg-result").hidden = false;
}

async function fromPicture() {
  const file = $("pg-picture").files[0];
  if (!file) return;
  if (tooLarge(file)) { $("pg-error").textContent = tooLarge(file); $("pg-error").hidden = false; return; }
  const form = new FormData(); form.append("image", file); form.append("rows", $("pg-rows").value);
  try { $("pg-matrix").value = (await api("/api/playground/picture", {method: "POST", body: form})).matrix.replaceAll("; ", "\n"); compute(); }
  catch (e) { $("pg-error").textContent = e.message; $("pg-error").hidden = false; }
}

document.addEventListener("DOMContentLoaded", () => {
  const kernels = JSON.parse($("pg-kernels").textContent);
  $("pg-named").addEventListener("change", () => {
    const k = kernels.find(k => k.name === $("pg-named").value);
    if (k) { $("pg-kernel").value = k.weights.map(r => r.map(v => fmt(v, 6)).join(" ")).join("\n"); compute(); }
  });
  $("pg").addEventListener("submit", compute);
  $("pg").addEventListener("change", e => { if (e.target.id !== "pg-picture" && e.target.id !== "pg-named") compute(); });
  $("pg-picture").addEventListener("change", fromPicture);
  compute();
});
