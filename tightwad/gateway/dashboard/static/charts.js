// Tightwad dashboard charts: small SVG line and bar charts drawn from plain arrays.
// Each chart records what it drew on its <svg> (data-points, data-sum, data-max), so what the
// page shows can be checked without reading pixels.
(function () {
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs, parent) {
  const el = document.createElementNS(SVGNS, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (parent) parent.appendChild(el);
  return el;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (Math.abs(v) >= 100) return v.toFixed(0);
  if (Math.abs(v) >= 10) return v.toFixed(1);
  return v.toFixed(2).replace(/\.?0+$/, "") || "0";
}

const H = 180, L = 38, R = 34, T = 8, B = 22;
let W = 400;

function frame(svg) {
  svg.replaceChildren();
  W = Math.max(200, Math.round(svg.clientWidth || svg.getBoundingClientRect().width || 400));
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
}

// lineChart(svg, {series: [[...numbers|null]], right: [[...0..1|null]], xLabels, yLabel})
// series[0] on the left axis (filled), right[0] (0..1) on the right axis as a percentage.
function lineChart(svg, opts) {
  frame(svg);
  const main = opts.series[0] || [];
  const n = main.length;
  const max = niceMax(Math.max(0, ...main.filter((v) => v !== null)));
  const x = (i) => L + (n <= 1 ? 0 : (i * (W - L - R)) / (n - 1));
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const yr = (v) => T + (H - T - B) * (1 - v);
  for (let k = 0; k <= 4; k++) {
    const v = (max * k) / 4;
    svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: k ? "grid" : "axis" }, svg);
    svgEl("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" }, svg).textContent = fmt(v);
    if (opts.right) {
      svgEl("text", { x: W - R + 4, y: yr(k / 4) + 3 }, svg).textContent = `${k * 25}%`;
    }
  }
  (opts.xLabels || []).forEach(([i, label]) => {
    svgEl("text", { x: x(i), y: H - 6, "text-anchor": "middle" }, svg).textContent = label;
  });
  if (n > 0) {
    let d = "";
    main.forEach((v, i) => { d += `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v || 0).toFixed(1)}`; });
    svgEl("path", { d: `${d}L${x(n - 1).toFixed(1)},${y(0)}L${x(0).toFixed(1)},${y(0)}Z`, class: "area-0" }, svg);
    svgEl("path", { d, class: "series-0" }, svg);
  }
  (opts.right || []).forEach((s, j) => {
    let d = "";
    let pen = false;
    s.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${yr(v).toFixed(1)}`;
      pen = true;
    });
    if (d) svgEl("path", { d, class: `series-${j + 1}` }, svg);
  });
  const sum = main.reduce((a, v) => a + (v || 0), 0);
  svg.dataset.points = String(n);
  svg.dataset.sum = String(Math.round(sum * 100) / 100);
  svg.dataset.max = String(max);
}

// barChart(svg, {labels: [...], values: [...], line: [...] (right axis), cut: index|null})
function barChart(svg, opts) {
  frame(svg);
  const vals = opts.values || [];
  const n = vals.length;
  const max = niceMax(Math.max(0, ...vals));
  const lineMax = niceMax(Math.max(0, ...(opts.line || [0])));
  const slot = (W - L - R) / Math.max(1, n);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const yl = (v) => T + (H - T - B) * (1 - v / lineMax);
  for (let k = 0; k <= 4; k++) {
    const v = (max * k) / 4;
    svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: k ? "grid" : "axis" }, svg);
    svgEl("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" }, svg).textContent = fmt(v);
    if (opts.line) svgEl("text", { x: W - R + 4, y: yl((lineMax * k) / 4) + 3 }, svg).textContent = fmt((lineMax * k) / 4);
  }
  vals.forEach((v, i) => {
    const x0 = L + i * slot + slot * 0.15;
    const bar = svgEl("rect", { x: x0, y: y(v), width: slot * 0.7, height: Math.max(0, y(0) - y(v)),
      class: i === opts.cut ? "bar cut" : "bar" }, svg);
    svgEl("title", {}, bar).textContent = `${opts.labels[i]}: ${fmt(v)}`;
    svgEl("text", { x: x0 + slot * 0.35, y: H - 6, "text-anchor": "middle" }, svg).textContent = opts.labels[i];
  });
  if (opts.line && n) {
    let d = "";
    opts.line.forEach((v, i) => { d += `${i ? "L" : "M"}${(L + i * slot + slot / 2).toFixed(1)},${yl(v).toFixed(1)}`; });
    svgEl("path", { d, class: "series-1" }, svg);
  }
  svg.dataset.points = String(n);
  svg.dataset.sum = String(vals.reduce((a, v) => a + v, 0));
  svg.dataset.max = String(max);
}

window.TightwadCharts = { lineChart, barChart, fmt };
})();
