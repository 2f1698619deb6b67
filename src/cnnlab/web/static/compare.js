// The comparison page: every run's curves on the same axes.
"use strict";
document.addEventListener("DOMContentLoaded", async () => {
  const names = [...document.querySelectorAll("tr.compared")].map(r => r.dataset.run);
  const histories = {};
  for (const name of names) histories[name] = (await api("/api/history?run=" + encodeURIComponent(name))).history;
  document.getElementById("curves").replaceChildren(...historyCharts(histories));
});
