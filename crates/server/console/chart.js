// A line chart on a canvas, with no library: time on x, values on y, translucent regions (an
// alarm from raised to cleared) behind the lines. Lines with more points than the chart has
// pixel columns are reduced to each column's first, lowest, highest and last point (M4), so
// 100,000 points draw as fast as 2,000 and look the same.
"use strict";

const TwinlakeChart = (() => {
  const COLORS = ["#1f6feb", "#2e7d32", "#8e24aa", "#ef6c00", "#00838f", "#6d4c41", "#c2185b"];
  const PAD = { left: 56, right: 12, top: 20, bottom: 26 };

  // Points [[t, v], ...] sorted by t, reduced to at most 4 per pixel column.
  function reduce(points, t0, t1, width) {
    if (points.length <= width * 4) return points;
    const out = [];
    const span = t1 - t0 || 1;
    let column = -1, first, last, low, high;
    const flush = () => {
      if (column < 0) return;
      const kept = [first, low, high, last].sort((a, b) => a[0] - b[0]);
      for (const p of kept) if (out[out.length - 1] !== p) out.push(p);
    };
    for (const p of points) {
      const c = Math.floor(((p[0] - t0) / span) * width);
      if (c !== column) {
        flush();
        column = c; first = last = low = high = p;
        continue;
      }
      last = p;
      if (p[1] < low[1]) low = p;
      if (p[1] > high[1]) high = p;
    }
    flush();
    return out;
  }

  function niceStep(span, count) {
    const raw = span / count;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * power >= raw) return m * power;
    return 10 * power;
  }

  function timeLabel(t, span) {
    const d = new Date(t);
    const iso = d.toISOString();
    if (span > 2 * 86400e3) return iso.slice(5, 10) + " " + iso.slice(11, 16);
    if (span > 600e3) return iso.slice(11, 16);
    return iso.slice(11, 19);
  }

  // lines: [{name, points: [[t_ms, value]], band: [[t_ms, min, max]] (optional)}]
  // regions: [{from, to, label, color}]; from/to: the time range shown (ms).
  function draw(canvas, { lines, regions = [], from, to }) {
    const began = performance.now();
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth, height = canvas.clientHeight;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    const g = canvas.getContext("2d");
    g.scale(ratio, ratio);
    g.clearRect(0, 0, width, height);
    g.font = "11px system-ui, sans-serif";
    const plotW = width - PAD.left - PAD.right, plotH = height - PAD.top - PAD.bottom;

    let first = Infinity, last = -Infinity, count = 0;
    for (const l of lines) {
      for (const p of l.points) { if (p[0] < first) first = p[0]; if (p[0] > last) last = p[0]; }
      count += l.points.length;
    }
    const t0 = from ?? first, t1 = to ?? last;
    let lo = Infinity, hi = -Infinity;
    for (const l of lines) {
      for (const p of l.points) { if (p[1] < lo) lo = p[1]; if (p[1] > hi) hi = p[1]; }
      for (const b of l.band || []) { if (b[1] < lo) lo = b[1]; if (b[2] > hi) hi = b[2]; }
    }
    if (!isFinite(lo)) { lo = 0; hi = 1; }
    if (lo === hi) { lo -= 1; hi += 1; }
    const margin = (hi - lo) * 0.05;
    lo -= margin; hi += margin;
    const x = (t) => PAD.left + ((t - t0) / (t1 - t0 || 1)) * plotW;
    const y = (v) => PAD.top + (1 - (v - lo) / (hi - lo)) * plotH;

    for (const r of regions) {
      const a = Math.max(x(r.from), PAD.left), b = Math.min(x(r.to ?? t1), PAD.left + plotW);
      if (b <= a) continue;
      g.fillStyle = r.color || "rgba(198,40,40,0.15)";
      g.fillRect(a, PAD.top, b - a, plotH);
      g.fillStyle = "#7a1c1c";
      g.fillText(r.label || "", a + 3, PAD.top + 11);
    }

    g.strokeStyle = "#dde1e8";
    g.fillStyle = "#6b7385";
    g.lineWidth = 1;
    const yStep = niceStep(hi - lo, 5);
    for (let v = Math.ceil(lo / yStep) * yStep; v <= hi; v += yStep) {
      g.beginPath(); g.moveTo(PAD.left, y(v)); g.lineTo(PAD.left + plotW, y(v)); g.stroke();
      g.fillText(Number(v.toPrecision(6)).toString(), 4, y(v) + 4);
    }
    const xStep = niceStep(t1 - t0 || 1, Math.max(2, Math.floor(plotW / 110)));
    for (let t = Math.ceil(t0 / xStep) * xStep; t <= t1; t += xStep) {
      g.beginPath(); g.moveTo(x(t), PAD.top); g.lineTo(x(t), PAD.top + plotH); g.stroke();
      g.fillText(timeLabel(t, t1 - t0), x(t) - 20, height - 8);
    }

    g.save();
    g.beginPath(); g.rect(PAD.left, PAD.top, plotW, plotH); g.clip();
    lines.forEach((line, i) => {
      const color = COLORS[i % COLORS.length];
      if (line.band && line.band.length) {
        g.fillStyle = color + "33";
        g.beginPath();
        line.band.forEach((b, j) => (j ? g.lineTo(x(b[0]), y(b[2])) : g.moveTo(x(b[0]), y(b[2]))));
        for (let j = line.band.length - 1; j >= 0; j--) g.lineTo(x(line.band[j][0]), y(line.band[j][1]));
        g.closePath(); g.fill();
      }
      g.strokeStyle = color; g.lineWidth = 1.5;
      g.beginPath();
      reduce(line.points, t0, t1, plotW).forEach((p, j) =>
        j ? g.lineTo(x(p[0]), y(p[1])) : g.moveTo(x(p[0]), y(p[1])));
      g.stroke();
    });
    g.restore();

    let lx = PAD.left;
    lines.forEach((line, i) => {
      g.fillStyle = COLORS[i % COLORS.length];
      g.fillRect(lx, 5, 10, 10);
      g.fillStyle = "#1d2433";
      g.fillText(line.name, lx + 14, 14);
      lx += g.measureText(line.name).width + 30;
    });
    canvas.dataset.points = String(count);
    canvas.dataset.regions = String(regions.length);
    canvas.dataset.drawMs = (performance.now() - began).toFixed(1);
  }

  return { draw, reduce };
})();
