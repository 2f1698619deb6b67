// The runs page: sort by any column, tick runs to compare.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("runs");
  if (!table) return;
  const body = table.tBodies[0];
  table.querySelectorAll("th[data-sort]").forEach((th, i) => {
    th.tabIndex = 0;
    th.addEventListener("click", () => {
      const column = th.cellIndex, numeric = th.dataset.sort === "number";
      const down = th.dataset.dir !== "down";
      table.querySelectorAll("th").forEach(h => delete h.dataset.dir);
      th.dataset.dir = down ? "down" : "up";
      const rows = [...body.rows].filter(r => r.dataset.run !== undefined);
      const key = r => { const v = r.cells[column].dataset.value || ""; return numeric ? Number(v) : v.toLowerCase(); };
      rows.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0) * (down ? -1 : 1));
      rows.forEach(r => body.append(r));
    });
  });
  const button = document.getElementById("compare");
  const picked = () => [...table.querySelectorAll("input.pick:checked")].map(c => c.value);
  table.addEventListener("change", () => { button.disabled = picked().length < 2; });
  button.addEventListener("click", () => {
    location.href = "/compare?" + picked().map(n => "run=" + encodeURIComponent(n)).join("&");
  });
});
