/*
 * AttAttr interactive report (lightning_attattr.report): draws the JSON of #report-data.
 *
 * Hand-written, no library, no network. Data reaches the document only through textContent,
 * setAttribute and SVG text nodes, never as markup, so a token such as a closing script tag or a bold tag is
 * shown as text. Maps arrive as int8 with one scale per [n, n] map (see report/data.py) and are
 * decoded when their example is first shown.
 */
(function () {
  "use strict";

  const SVG_NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const RED = [178, 24, 43];
  const BLUE = [33, 102, 172];
  const DARK = [8, 48, 107];
  const TOP_EDGES = 10;
  const SUM = "sum"; // the head selector's value for "all heads summed"
  // special tokens of the usual tokenizers: [CLS], [SEP], [PAD], <s>, </s>, <pad>, <|endoftext|>, ...
  const SPECIAL = /^(\[(CLS|SEP|PAD|UNK|MASK|BOS|EOS)\]|<\/?s>|<(pad|unk|mask|bos|eos)>|<\|[^|]*\|>)$/;
  function isSpecial(token) {
    return SPECIAL.test(String(token).trim());
  }

  // ------------------------------------------------------------------ DOM helpers

  /** Set attributes (skipping null/undefined) on an element. */
  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(key, String(value));
    }
  }

  /** Append children: nodes as they are, strings and numbers as text nodes. */
  function append(node, ...children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** An HTML element; text children become text nodes (never parsed as markup). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    return append(node, children);
  }

  /** An SVG element. */
  function svgEl(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    return append(node, children);
  }

  /** A <select> whose options are [value, text] pairs. */
  function select(options, onChange, attrs) {
    const node = el("select", attrs);
    for (const [value, text] of options) node.appendChild(new Option(text, value));
    node.addEventListener("change", () => onChange(node.value));
    return node;
  }

  /** A compact number: 4 significant digits, exponent for very small or large magnitudes. */
  function fmt(x) {
    if (x === null || x === undefined) return "–";
    if (typeof x !== "number") return String(x);
    if (!Number.isFinite(x)) return String(x);
    const mag = Math.abs(x);
    if (mag !== 0 && (mag < 1e-3 || mag >= 1e5)) return x.toExponential(2);
    return String(Number(x.toPrecision(4)));
  }

  /** A token shortened for an axis label. */
  function shortLabel(text, max) {
    return text.length > max ? text.slice(0, max - 1) + "…" : text;
  }

  function clamp(x, lo, hi) {
    return Math.min(hi, Math.max(lo, x));
  }

  // ------------------------------------------------------------------ decoding

  function base64Bytes(text) {
    const bin = atob(text);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return bytes;
  }

  /** Inflate zlib ("deflate") bytes with the browser's DecompressionStream. */
  async function inflate(bytes) {
    if (typeof DecompressionStream === "undefined") {
      throw new Error("this browser has no DecompressionStream to unpack the maps; open the report in a current " +
        "Chrome, Edge, Firefox or Safari");
    }
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  /** Decode a quantised array: {shape, values: Float32Array} with values = q * scale of its map. */
  async function decodeArray(packed) {
    let bytes = base64Bytes(packed.data);
    if (packed.encoding === "int8-deflate") bytes = await inflate(bytes);
    const q = new Int8Array(bytes.buffer, bytes.byteOffset, bytes.length);
    const scales = packed.scales;
    const per = scales.length ? q.length / scales.length : 0;
    const values = new Float32Array(q.length);
    for (let m = 0; m < scales.length; m++) {
      const scale = scales[m];
      const offset = m * per;
      for (let k = 0; k < per; k++) values[offset + k] = q[offset + k] * scale;
    }
    return { shape: packed.shape, values: values };
  }

  // ------------------------------------------------------------------ colours

  function mix(end, t) {
    return [255 + (end[0] - 255) * t, 255 + (end[1] - 255) * t, 255 + (end[2] - 255) * t];
  }

  /** Blue (negative) - white (0) - red (positive), symmetric in [-limit, limit]. */
  function diverging(limit) {
    return (v) => {
      const t = limit > 0 ? clamp(v / limit, -1, 1) : 0;
      return mix(t >= 0 ? RED : BLUE, Math.abs(t));
    };
  }

  /** White (lo) to dark blue (hi). */
  function sequential(lo, hi) {
    return (v) => mix(DARK, hi > lo ? clamp((v - lo) / (hi - lo), 0, 1) : 0);
  }

  function extent(values) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of values) {
      if (v === null || v === undefined || Number.isNaN(v)) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    return lo <= hi ? [lo, hi] : [0, 0];
  }

  /** The natural colour scale of a matrix: diverging when it has negative entries, else sequential. */
  function autoColour(values) {
    const [lo, hi] = extent(values);
    if (lo < 0) {
      const limit = Math.max(-lo, hi);
      return { colour: diverging(limit), range: [-limit, limit] };
    }
    return { colour: sequential(0, hi), range: [0, hi] };
  }

  // ------------------------------------------------------------------ tooltip

  const tooltip = document.getElementById("tooltip");

  /** Show the tooltip near the mouse with rows of [name, text, index]. */
  function showTip(event, rows, dataset) {
    tooltip.textContent = "";
    for (const [name, text, index, cls] of rows) {
      append(tooltip, el("div", null,
        el("span", { class: "tip-name" }, name), " ",
        el("span", { class: cls || "tip-token" }, text),
        index === null || index === undefined ? null : [" ", el("span", { class: "tip-index" }, "[" + index + "]")]));
    }
    for (const key of Object.keys(tooltip.dataset)) delete tooltip.dataset[key];
    Object.assign(tooltip.dataset, dataset || {});
    tooltip.hidden = false;
    const x = Math.min(event.clientX + 14, window.innerWidth - tooltip.offsetWidth - 4);
    const y = Math.min(event.clientY + 14, window.innerHeight - tooltip.offsetHeight - 4);
    tooltip.style.left = Math.max(0, x) + "px";
    tooltip.style.top = Math.max(0, y) + "px";
  }

  function hideTip() {
    tooltip.hidden = true;
  }

  // ------------------------------------------------------------------ heatmap (canvas)

  /**
   * A matrix drawn on one canvas, with row labels on the left, column labels on top and a hover
   * tooltip. The geometry (CSS pixels) is kept in data-left/top/cell/rows/cols on the canvas.
   */
  class Heatmap {
    constructor(attrs) {
      this.canvas = el("canvas", Object.assign({ class: "heatmap" }, attrs || {}));
      this.spec = null;
      this.canvas.addEventListener("mousemove", (event) => this.hover(event));
      this.canvas.addEventListener("mouseleave", hideTip);
    }

    /**
     * Draw spec = {values (row-major), rows, cols, rowLabels, colLabels, colour(v) -> [r, g, b],
     * maxSide, cell, rowName, colName, annotate, labelChars}.
     */
    draw(spec) {
      this.spec = spec;
      const { rows, cols } = spec;
      const cell = spec.cell || clamp(Math.floor((spec.maxSide || 600) / Math.max(rows, cols)), 3, 28);
      const fontSize = clamp(cell - 1, 7, 12);
      const step = Math.ceil((fontSize + 1) / cell); // label every step-th row/column when cells are small
      const font = fontSize + "px system-ui, sans-serif";
      const ctx = this.canvas.getContext("2d");
      ctx.font = font;
      const chars = spec.labelChars || 14;
      const width = (labels) => Math.max(0, ...labels.map((t) => ctx.measureText(shortLabel(t, chars)).width));
      const left = Math.ceil(width(spec.rowLabels)) + 8;
      const top = Math.ceil(width(spec.colLabels)) + 8;
      const cssW = left + cols * cell + 4;
      const cssH = top + rows * cell + 4;
      const dpr = window.devicePixelRatio || 1;
      this.canvas.width = Math.round(cssW * dpr);
      this.canvas.height = Math.round(cssH * dpr);
      this.canvas.style.width = cssW + "px";
      this.canvas.style.height = cssH + "px";
      setAttrs(this.canvas, { "data-left": left, "data-top": top, "data-cell": cell, "data-rows": rows, "data-cols": cols });
      this.geometry = { left: left, top: top, cell: cell };

      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, cssW, cssH);
      // one pixel per cell, scaled up without smoothing: cheap for 128 x 128 and crisp
      const image = new ImageData(cols, rows);
      for (let k = 0; k < rows * cols; k++) {
        const [r, g, b] = spec.colour(spec.values[k]);
        image.data[4 * k] = r;
        image.data[4 * k + 1] = g;
        image.data[4 * k + 2] = b;
        image.data[4 * k + 3] = 255;
      }
      const pixels = document.createElement("canvas");
      pixels.width = cols;
      pixels.height = rows;
      pixels.getContext("2d").putImageData(image, 0, 0);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(pixels, left, top, cols * cell, rows * cell);
      ctx.strokeStyle = "#d0d7de";
      ctx.strokeRect(left - 0.5, top - 0.5, cols * cell + 1, rows * cell + 1);

      ctx.fillStyle = "#1f2328";
      ctx.font = font;
      ctx.textBaseline = "middle";
      ctx.textAlign = "right";
      for (let i = 0; i < rows; i += step) {
        ctx.fillText(shortLabel(spec.rowLabels[i], chars), left - 4, top + (i + 0.5) * cell);
      }
      ctx.textAlign = "left";
      for (let j = 0; j < cols; j += step) {
        ctx.save();
        ctx.translate(left + (j + 0.5) * cell, top - 4);
        ctx.rotate(-Math.PI / 2);
        ctx.fillText(shortLabel(spec.colLabels[j], chars), 0, 0);
        ctx.restore();
      }
      if (spec.annotate) this.annotate(ctx, cell, left, top, fontSize);
    }

    /** Write each cell's value in it (small matrices only). */
    annotate(ctx, cell, left, top, fontSize) {
      const { rows, cols, values } = this.spec;
      ctx.textAlign = "center";
      ctx.font = Math.min(fontSize, 11) + "px system-ui, sans-serif";
      for (let i = 0; i < rows; i++) {
        for (let j = 0; j < cols; j++) {
          const v = values[i * cols + j];
          const [r, g, b] = this.spec.colour(v);
          ctx.fillStyle = 0.299 * r + 0.587 * g + 0.114 * b < 140 ? "#fff" : "#1f2328";
          ctx.fillText(v === null ? "–" : v.toFixed(2), left + (j + 0.5) * cell, top + (i + 0.5) * cell);
        }
      }
    }

    hover(event) {
      if (!this.spec) return;
      const rect = this.canvas.getBoundingClientRect();
      const { left, top, cell } = this.geometry;
      const j = Math.floor((event.clientX - rect.left - left) / cell);
      const i = Math.floor((event.clientY - rect.top - top) / cell);
      const { rows, cols, rowLabels, colLabels } = this.spec;
      if (i < 0 || j < 0 || i >= rows || j >= cols) {
        hideTip();
        return;
      }
      const value = this.spec.values[i * cols + j];
      showTip(event, [
        [this.spec.rowName || "row", rowLabels[i], i, "tip-token tip-row"],
        [this.spec.colName || "column", colLabels[j], j, "tip-token tip-col"],
        [this.spec.valueName || "value", fmt(value), null, "tip-value"],
      ], { row: i, col: j });
    }
  }

  // ------------------------------------------------------------------ line chart (SVG)

  /** About `count` round tick values covering [lo, hi]. */
  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / count;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
    return ticks;
  }

  /**
   * A line chart: spec = {series: [{name, x, y, band: [lo[], hi[]]?, dashed?}], xLabel, yLabel,
   * logX, reference: {y, label}?}. Returns a <figure> with the SVG and an HTML legend.
   */
  function lineChart(spec) {
    const W = 540;
    const H = 300;
    const m = { left: 56, right: 14, top: 14, bottom: 44 };
    const tx = spec.logX ? (v) => Math.log2(v) : (v) => v;
    const xs = [];
    const ys = [];
    for (const s of spec.series) {
      s.x.forEach((v, k) => {
        if (s.y[k] === null || s.y[k] === undefined) return;
        xs.push(tx(v));
        ys.push(s.y[k]);
      });
      if (s.band) ys.push(...s.band[0].filter((v) => v !== null), ...s.band[1].filter((v) => v !== null));
    }
    if (spec.reference) ys.push(spec.reference.y);
    let [x0, x1] = extent(xs);
    let [y0, y1] = extent(ys);
    if (x1 === x0) x1 = x0 + 1;
    const pad = (y1 - y0) * 0.06 || 0.05;
    y0 -= pad;
    y1 += pad;
    const px = (v) => m.left + ((tx(v) - x0) / (x1 - x0)) * (W - m.left - m.right);
    const py = (v) => H - m.bottom - ((v - y0) / (y1 - y0)) * (H - m.top - m.bottom);
    const svg = svgEl("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, class: "chart" });

    const xTicks = spec.logX ? Array.from(new Set(spec.series.flatMap((s) => s.x))).sort((a, b) => a - b)
      : niceTicks(x0, x1, 6);
    const axis = svgEl("g", { class: "axis" });
    for (const t of niceTicks(y0, y1, 5)) {
      axis.appendChild(svgEl("line", { class: "grid", x1: m.left, x2: W - m.right, y1: py(t), y2: py(t) }));
      axis.appendChild(svgEl("text", { x: m.left - 6, y: py(t), "text-anchor": "end", "dominant-baseline": "middle",
        "font-size": 11 }, fmt(t)));
    }
    for (const t of xTicks) {
      axis.appendChild(svgEl("line", { x1: px(t), x2: px(t), y1: H - m.bottom, y2: H - m.bottom + 4 }));
      axis.appendChild(svgEl("text", { x: px(t), y: H - m.bottom + 16, "text-anchor": "middle", "font-size": 11 },
        fmt(t)));
    }
    axis.appendChild(svgEl("path", { d: "M" + m.left + "," + m.top + "V" + (H - m.bottom) + "H" + (W - m.right),
      fill: "none" }));
    axis.appendChild(svgEl("text", { x: (m.left + W - m.right) / 2, y: H - 6, "text-anchor": "middle",
      "font-size": 12 }, spec.xLabel || ""));
    axis.appendChild(svgEl("text", { x: 14, y: (m.top + H - m.bottom) / 2, "text-anchor": "middle", "font-size": 12,
      transform: "rotate(-90 14 " + (m.top + H - m.bottom) / 2 + ")" }, spec.yLabel || ""));
    svg.appendChild(axis);

    if (spec.reference) {
      svg.appendChild(svgEl("line", { x1: m.left, x2: W - m.right, y1: py(spec.reference.y), y2: py(spec.reference.y),
        stroke: "#57606a", "stroke-dasharray": "4 3" }, svgEl("title", null, spec.reference.label)));
    }
    const legend = el("div", { class: "legend" });
    spec.series.forEach((s, k) => {
      const colour = PALETTE[k % PALETTE.length];
      const points = s.x.map((v, i) => [v, s.y[i]]).filter((p) => p[1] !== null && p[1] !== undefined);
      if (s.band) {
        const upper = s.x.map((v, i) => px(v) + "," + py(s.band[1][i]));
        const lower = s.x.map((v, i) => px(v) + "," + py(s.band[0][i])).reverse();
        svg.appendChild(svgEl("polygon", { points: upper.concat(lower).join(" "), fill: colour, opacity: 0.15 }));
      }
      svg.appendChild(svgEl("polyline", { points: points.map((p) => px(p[0]) + "," + py(p[1])).join(" "),
        fill: "none", stroke: colour, "stroke-width": 1.8, "stroke-dasharray": s.dashed ? "5 3" : null }));
      for (const [x, y] of points) {
        svg.appendChild(svgEl("circle", { cx: px(x), cy: py(y), r: 2.6, fill: colour },
          svgEl("title", null, s.name + ": " + fmt(x) + " → " + fmt(y))));
      }
      legend.appendChild(el("span", null, el("span", { class: "swatch", style: "background:" + colour }), s.name));
    });
    return el("figure", null, svg, legend, spec.caption ? el("figcaption", null, spec.caption) : null);
  }

  /** A table from a header row and body rows (cells are text; numbers are formatted). */
  function table(header, rows, textColumns) {
    const isText = (k) => (textColumns || [0]).includes(k);
    return el("table", { class: "numbers" },
      el("thead", null, el("tr", null, header.map((h, k) => el("th", { class: isText(k) ? "text" : null }, h)))),
      el("tbody", null, rows.map((row) => el("tr", null,
        row.map((c, k) => el("td", { class: isText(k) ? "text" : null }, typeof c === "number" ? fmt(c) : c))))));
  }

  // ------------------------------------------------------------------ trees

  /**
   * The SVG drawing of one attribution tree or graph, into `box` (id `<id>`, the SVG `<id>-svg`) with its
   * `caption` (`<id>-caption`). `e` holds `tokens`, `layers`, `tree` (nodes, edges) and for graphs `graph`
   * (edges as rows). Edges are sized and coloured by their attribution; hovering highlights them.
   */
  class TreeDrawing {
    constructor(id) {
      this.id = id;
      this.box = el("div", { class: "scroll", id: id });
      this.caption = el("p", { class: "caption", id: id + "-caption" });
    }

    /** Draw `e` as its tree (`mode` "tree") or its layered graph ("graph"). */
    draw(e, mode) {
      if (mode === "graph") this.drawGraphView(e);
      else this.drawTreeView(e);
    }

    /**
     * Token boxes side by side in token order (the tree's tokens), each as wide as its shortened token
     * and at least 12 px per edge ending on it (`inDegree`: token -> count), so converging edges stay apart.
     */
    tokenColumns(tree, inDegree) {
      const nodes = tree.nodes.slice().sort((a, b) => a.index - b.index);
      const label = new Map(nodes.map((node) => [node.index, shortLabel(node.token, 12)]));
      const boxW = new Map(nodes.map((node) => [node.index, Math.max(28, 7.5 * label.get(node.index).length + 12,
        12 * ((inDegree && inDegree.get(node.index)) || 0))]));
      const xOf = new Map();
      let cursor = 80;
      for (const node of nodes) {
        xOf.set(node.index, cursor + boxW.get(node.index) / 2);
        cursor += boxW.get(node.index) + 14;
      }
      return { nodes: nodes, label: label, boxW: boxW, xOf: xOf, width: cursor + 10 };
    }

    /** An empty tree/graph SVG with one labelled row per layer (root on top); returns [svg, y(row)]. */
    layerRows(e, L, svgW, rowH, markerId) {
      const svgH = 30 + (L + 1) * rowH;
      const y = (lvl) => 20 + (L - lvl) * rowH + rowH / 2;
      const svg = svgEl("svg", { class: "tree", id: this.id + "-svg", width: svgW, height: svgH,
        viewBox: "0 0 " + svgW + " " + svgH });
      svg.appendChild(svgEl("defs", null, svgEl("marker", { id: markerId, viewBox: "0 0 10 10", refX: 10, refY: 5,
        markerWidth: 6, markerHeight: 6, orient: "auto-start-reverse" }, svgEl("path", { d: "M0,0L10,5L0,10z",
        fill: "#cf222e" }))));
      for (let lvl = L; lvl >= 0; lvl--) {
        svg.appendChild(svgEl("line", { class: "grid", x1: 60, x2: svgW - 10, y1: y(lvl), y2: y(lvl) }));
        svg.appendChild(svgEl("text", { x: 4, y: y(lvl), "dominant-baseline": "middle", "font-size": 11,
          fill: "#656d76" }, lvl === L ? "root" : "layer " + e.layers[lvl]));
      }
      return [svg, y];
    }

    /**
     * Where each edge ends on its parent's box: the edges into one box (one row) get their own points,
     * spread over the box width in the order of their start, so that they do not share one arrowhead.
     * `edges` are [key, parent, child, startX]; returns key -> end x.
     */
    spreadEnds(edges, xOf, boxW) {
      const groups = new Map();
      for (const edge of edges) {
        const id = edge[1] + "|" + edge[3];
        if (!groups.has(id)) groups.set(id, []);
        groups.get(id).push(edge);
      }
      const ends = new Map();
      for (const group of groups.values()) {
        group.sort((a, b) => a[4] - b[4]);
        const parent = group[0][1];
        const span = Math.max(0, boxW.get(parent) - 12);
        group.forEach((edge, k) => ends.set(edge[0], xOf.get(parent) +
          (group.length > 1 ? -span / 2 + (span * k) / (group.length - 1) : 0)));
      }
      return ends;
    }

    /** Stroke width by the edge's attribution, on one linear scale for the whole tree/graph (1 to 4.5 px). */
    edgeWidth(attribution, top) {
      return 1 + 3.5 * clamp(Math.abs(attribution || 0) / (top || 1), 0, 1);
    }

    /**
     * Stroke colour by the edge's attribution, on the same scale: pale to full red (blue if negative),
     * as a CSS variable so that the hover highlight still wins.
     */
    edgeColour(attribution, top) {
      const t = clamp((attribution || 0) / (top || 1), -1, 1);
      const [r, g, b] = mix(t >= 0 ? RED : BLUE, 0.3 + 0.7 * Math.abs(t)).map(Math.round);
      return "--edge-colour: rgb(" + r + "," + g + "," + b + ")";
    }

    /** Hovering an edge (or a token box) highlights it (its edges) and dims the others. */
    addHighlight(svg) {
      const clear = () => {
        svg.classList.remove("dimmed");
        svg.querySelectorAll(".highlight").forEach((node) => node.classList.remove("highlight"));
      };
      svg.querySelectorAll("path.edge").forEach((path) => {
        path.addEventListener("mouseenter", () => {
          clear();
          svg.classList.add("dimmed");
          path.classList.add("highlight");
        });
        path.addEventListener("mouseleave", clear);
      });
      svg.querySelectorAll("g.node").forEach((node) => {
        node.addEventListener("mouseenter", () => {
          clear();
          const token = node.getAttribute("data-token");
          svg.classList.add("dimmed");
          svg.querySelectorAll("path.edge").forEach((path) => {
            if (path.getAttribute("data-parent") === token || path.getAttribute("data-child") === token) {
              path.classList.add("highlight");
            }
          });
        });
        node.addEventListener("mouseleave", clear);
      });
    }

    /** A token box at (x, y). */
    tokenBox(cls, x, y, w, text, title, token) {
      return svgEl("g", { class: cls, transform: "translate(" + x + "," + y + ")", "data-token": token },
        svgEl("rect", { x: -w / 2, y: -10, width: w, height: 20, rx: 4 }),
        svgEl("text", { "text-anchor": "middle", "dominant-baseline": "central" }, text),
        svgEl("title", null, title));
    }

    edgeTitle(e, parent, child, layer, attribution, score, extra) {
      return e.tokens[child] + " [" + child + "] → " + e.tokens[parent] + " [" + parent + "], layer " +
        e.layers[layer] + ", attribution " + fmt(attribution) + ", score " + fmt(score) + (extra || "");
    }

    /**
     * The attribution graph in its layered view: a layer-l edge goes from the key on row l up to the
     * query on row l + 1; a token's boxes on several rows are joined by a grey stem; the edges the
     * tree's one-parent rule drops are dashed (class "extra").
     */
    drawGraphView(e) {
      const graph = e.graph;
      const L = graph.n_layers;
      const inDegree = new Map();
      for (const [parent] of graph.edges) inDegree.set(parent, (inDegree.get(parent) || 0) + 1);
      const { label, boxW, xOf, width } = this.tokenColumns(e.tree, inDegree);
      const top = Math.max(0, ...graph.edges.map((edge) => Math.abs(edge[3] || 0)));
      const ends = this.spreadEnds(graph.edges.map((edge, k) => [k, edge[0], edge[1], edge[2] + 1, xOf.get(edge[1])]),
        xOf, boxW);
      const rowH = 56; // taller rows than the tree's: every edge spans exactly one row gap
      const [svg, y] = this.layerRows(e, L, width, rowH, this.id + "-graph-arrow");
      const rows = new Map(); // token -> set of rows it sits on
      const place = (token, row) => {
        if (!rows.has(token)) rows.set(token, new Set());
        rows.get(token).add(row);
      };
      place(graph.root, L);
      for (const [parent, child, layer] of graph.edges) {
        place(parent, layer + 1);
        place(child, layer);
      }
      for (const [token, found] of rows) {
        const sorted = Array.from(found).sort((a, b) => b - a);
        if (sorted.length > 1) {
          svg.appendChild(svgEl("line", { class: "stem", x1: xOf.get(token), x2: xOf.get(token),
            y1: y(sorted[0]), y2: y(sorted[sorted.length - 1]) }));
        }
      }
      let extra = 0;
      graph.edges.forEach(([parent, child, layer, attribution, score, inTree], k) => {
        if (!inTree) extra++;
        const d = "M" + xOf.get(child) + "," + (y(layer) - 10) + "L" + ends.get(k) + "," + (y(layer + 1) + 10);
        svg.appendChild(svgEl("path", { class: inTree ? "edge" : "edge extra", d: d, "data-parent": parent,
          "data-child": child, "data-attribution": attribution,
          "stroke-width": this.edgeWidth(attribution, top), style: this.edgeColour(attribution, top),
          "marker-end": "url(#" + this.id + "-graph-arrow)" },
        svgEl("title", null, this.edgeTitle(e, parent, child, layer, attribution, score,
          inTree ? "" : " (not in the tree)"))));
      });
      for (const [token, found] of rows) {
        for (const row of found) {
          const isRoot = token === graph.root && row === L;
          svg.appendChild(this.tokenBox(isRoot ? "node root" : "node", xOf.get(token), y(row), boxW.get(token),
            label.get(token), e.tokens[token] + " [" + token + "]" + (isRoot ? " (root)" : row === L ? ", output"
              : ", entering layer " + e.layers[row]), token));
        }
      }
      this.addHighlight(svg);
      this.box.textContent = "";
      this.box.appendChild(svg);
      this.caption.textContent = graph.edges.length
        ? graph.edges.length + " edges with normalised head-summed AttAttr > " + graph.tau + " whose query is in " +
          "the graph, " + extra + " of them dropped by the tree's one-parent rule (dashed). An edge of layer l " +
          "points from the key on row l to the query on row l + 1; grey stems join one token's rows. Line width: " +
          "the edge's attribution (widest: " + fmt(top) + "). Hover an edge or a token to highlight its edges."
        : "No edge above τ = " + graph.tau + ": the graph is the root alone.";
    }

    /** The attribution tree: tree tokens left to right (index order), layers bottom to top, root on top. */
    drawTreeView(e) {
      const tree = e.tree;
      const L = tree.n_layers;
      const inDegree = new Map();
      for (const edge of tree.edges) inDegree.set(edge.parent, (inDegree.get(edge.parent) || 0) + 1);
      const { nodes, label, boxW, xOf, width } = this.tokenColumns(tree, inDegree);
      const top = Math.max(0, ...tree.edges.map((edge) => Math.abs(edge.attribution || 0)));
      const level = new Map(nodes.map((node) => [node.index, node.layer]));
      const rowH = 40;
      const x = (index) => xOf.get(index);
      const [svg, y] = this.layerRows(e, L, width, rowH, this.id + "-tree-arrow");
      const ends = this.spreadEnds(tree.edges.map((edge, k) => [k, edge.parent, edge.child, level.get(edge.parent),
        xOf.get(edge.child)]), xOf, boxW);
      // edges: child (key) -> parent (query), the direction information flows; a parent attached in the
      // same layer as its child sits on the same row, so that edge arcs above the row
      tree.edges.forEach((edge, k) => {
        const [xc, xp] = [x(edge.child), ends.get(k)];
        const [lc, lp] = [level.get(edge.child), level.get(edge.parent)];
        let d;
        if (lc === lp) {
          const lift = Math.min(rowH * 0.8, 14 + 0.08 * Math.abs(xp - xc));
          d = "M" + xc + "," + (y(lc) - 10) + "Q" + (xc + xp) / 2 + "," + (y(lc) - 10 - 2 * lift) + " " + xp + "," +
            (y(lp) - 10);
        } else {
          d = "M" + xc + "," + (y(lc) - 10) + "L" + xp + "," + (y(lp) + 10);
        }
        svg.appendChild(svgEl("path", { class: "edge", d: d, "data-parent": edge.parent, "data-child": edge.child,
          "data-attribution": edge.attribution, "stroke-width": this.edgeWidth(edge.attribution, top),
          style: this.edgeColour(edge.attribution, top),
          "marker-end": "url(#" + this.id + "-tree-arrow)" },
        svgEl("title", null, this.edgeTitle(e, edge.parent, edge.child, edge.layer, edge.attribution, edge.score))));
      });
      for (const node of nodes) {
        const isRoot = node.index === tree.root;
        svg.appendChild(this.tokenBox(isRoot ? "node root" : "node", x(node.index), y(node.layer), boxW.get(node.index),
          label.get(node.index), node.token + " [" + node.index + "]" + (isRoot ? " (root)" : ", attached in layer " +
            e.layers[node.layer]), node.index));
      }
      this.addHighlight(svg);
      this.box.textContent = "";
      this.box.appendChild(svg);
      this.caption.textContent = tree.edges.length
        ? tree.edges.length + " edges with normalised head-summed AttAttr > " + tree.tau + "; arrows point from " +
          "the key (child) to the query (parent) that gathers its information; line width: the edge's attribution " +
          "(widest: " + fmt(top) + "). Hover an edge or a token to highlight its edges."
        : "No edge above τ = " + tree.tau + ": the tree is the root alone.";
    }
  }

  // ------------------------------------------------------------------ examples

  /** Everything about the examples of attribute folders: selectors, maps, edges, tree. */
  class ExampleView {
    constructor(examples) {
      this.examples = examples;
      this.cache = new Map(); // example index -> decoded arrays
      this.state = { example: 0, layer: 0, head: SUM, treeMode: "tree", hideSpecial: false };
      this.attr = new Heatmap({ id: "attr-canvas", "aria-label": "AttAttr map" });
      this.attn = new Heatmap({ id: "attn-canvas", "aria-label": "attention map" });
      this.root = el("section", { id: "examples" });
    }

    build() {
      const ex = this.examples;
      append(this.root, el("h2", null, "Examples"));
      const controls = el("div", { class: "controls" });
      if (ex.length > 1) {
        const options = ex.map((e, k) => [String(k), e.key]);
        controls.appendChild(el("label", null, "example",
          select(options, (v) => this.setExample(Number(v)), { id: "example-select" })));
      }
      this.layerSelect = el("select", { id: "layer-select" });
      this.layerSelect.addEventListener("change", () => {
        this.state.layer = Number(this.layerSelect.value);
        this.drawView();
      });
      this.headSelect = el("select", { id: "head-select" });
      this.headSelect.addEventListener("change", () => {
        this.state.head = this.headSelect.value === SUM ? SUM : Number(this.headSelect.value);
        this.drawView();
      });
      controls.appendChild(el("label", null, "layer", this.layerSelect));
      controls.appendChild(el("label", null, "head", this.headSelect));
      // hide [CLS], [SEP], ... in both maps and the edge list (their edges often dominate both)
      this.specialToggle = el("input", { type: "checkbox", id: "hide-special" });
      this.specialToggle.addEventListener("change", () => {
        this.state.hideSpecial = this.specialToggle.checked;
        this.drawView();
      });
      controls.appendChild(el("label", null, this.specialToggle, " hide special tokens"));
      this.title = el("h3", { id: "example-title" });
      this.tokens = el("div", { class: "tokens", id: "tokens" });
      this.prediction = el("div", { class: "panel", id: "prediction" });
      this.attrCaption = el("figcaption");
      this.attrTitle = el("h4", { class: "map-title", id: "attr-title" });
      this.attnTitle = el("h4", { class: "map-title", id: "attn-title" });
      this.attnFigure = el("figure", { id: "attn-figure" }, this.attnTitle,
        el("div", { class: "scroll" }, this.attn.canvas));
      this.attnCaption = el("figcaption");
      this.attnFigure.appendChild(this.attnCaption);
      this.edges = el("ol", { class: "edges", id: "top-edges" });
      this.edgesTitle = el("h3");
      this.drawing = new TreeDrawing("tree");
      this.tree = this.drawing.box;
      this.treeCaption = this.drawing.caption;
      this.treeCompleteness = el("p", { class: "caption", id: "tree-completeness" });
      this.treeTitle = el("h3", { id: "tree-title" }, "Attribution tree");
      // the paper's tree (one parent per token) or the graph (every edge above tau whose query is in)
      const treeMode = select([["tree", "tree (one parent per token)"], ["graph", "graph (every edge above τ)"]],
        (v) => {
          this.state.treeMode = v;
          this.drawTree(this.examples[this.state.example]);
        }, { id: "tree-mode" });
      append(this.root,
        this.title, controls, this.tokens, this.prediction,
        el("div", { class: "row" },
          el("figure", { id: "attr-figure" }, this.attrTitle, el("div", { class: "scroll" }, this.attr.canvas),
            this.attrCaption),
          this.attnFigure),
        this.edgesTitle, this.edges,
        this.treeTitle, el("div", { class: "controls" }, el("label", null, "view", treeMode)),
        this.treeCaption, this.treeCompleteness, this.tree);
      return this.root;
    }

    async setExample(index) {
      this.state.example = index;
      const e = this.examples[index];
      if (!this.cache.has(index)) {
        this.cache.set(index, {
          attr: await decodeArray(e.attributions),
          summed: await decodeArray(e.summed),
          attn: e.attention ? await decodeArray(e.attention) : null,
          attnMean: new Map(),
        });
      }
      this.state.layer = Math.min(this.state.layer, e.layers.length - 1);
      if (this.state.head !== SUM && this.state.head >= e.n_heads) this.state.head = SUM;
      this.fillSelectors(e);
      this.drawExample(e);
      this.drawView();
    }

    fillSelectors(e) {
      this.layerSelect.textContent = "";
      e.layers.forEach((layer, k) => this.layerSelect.appendChild(new Option("layer " + layer, String(k))));
      this.layerSelect.value = String(this.state.layer);
      this.headSelect.textContent = "";
      this.headSelect.appendChild(new Option("all heads summed", SUM));
      for (let h = 0; h < e.n_heads; h++) this.headSelect.appendChild(new Option("head " + h, String(h)));
      this.headSelect.value = String(this.state.head);
    }

    /** The parts that do not depend on the layer/head: title, tokens, prediction, tree. */
    drawExample(e) {
      this.title.textContent = e.key;
      this.tokens.textContent = "";
      e.tokens.forEach((t, k) => this.tokens.appendChild(el("span", { class: "token", title: "token " + k }, t)));
      this.drawPrediction(e);
      this.drawTree(e);
    }

    drawPrediction(e) {
      const p = (c) => (Array.isArray(e.probs) && c !== null && c !== undefined ? e.probs[c] : null);
      const rows = [["predicted", String(e.predicted), p(e.predicted)]];
      if (e.label !== null && e.label !== undefined) rows.push(["gold label", String(e.label), p(e.label)]);
      rows.push(["attributed class (target)", String(e.target), p(e.target)]);
      const errors = Array.isArray(e.completeness_error) ? e.completeness_error : [];
      this.prediction.textContent = "";
      append(this.prediction,
        el("div", { class: "row" },
          table(["", "class", "probability"], rows),
          errors.length ? table(["layer"].concat(e.layers.map(String)),
            [["completeness error"].concat(errors)]) : null),
        el("p", { class: "caption" },
          "completeness error: |sum of a layer's attributions − (F(A) − F(0))| relative to |F(A) − F(0)|, per layer; " +
          "steps used: " + JSON.stringify(e.n_steps_used)));
    }

    /** The [n, n] AttAttr map of the current layer/head (head-summed when head is SUM). */
    attrMap(e, data) {
      const n = e.tokens.length;
      const size = n * n;
      if (this.state.head === SUM) return data.summed.values.subarray(this.state.layer * size, (this.state.layer + 1) * size);
      const k = this.state.layer * e.n_heads + this.state.head;
      return data.attr.values.subarray(k * size, (k + 1) * size);
    }

    /** The raw attention map of the current layer/head (mean over heads for SUM), or null. */
    attnMap(e, data) {
      if (!data.attn) return null;
      const n = e.tokens.length;
      const size = n * n;
      const L = this.state.layer;
      if (this.state.head !== SUM) {
        const k = L * e.n_heads + this.state.head;
        return data.attn.values.subarray(k * size, (k + 1) * size);
      }
      if (!data.attnMean.has(L)) {
        const mean = new Float32Array(size);
        for (let h = 0; h < e.n_heads; h++) {
          const src = data.attn.values.subarray((L * e.n_heads + h) * size, (L * e.n_heads + h + 1) * size);
          for (let k = 0; k < size; k++) mean[k] += src[k] / e.n_heads;
        }
        data.attnMean.set(L, mean);
      }
      return data.attnMean.get(L);
    }

    /** The token positions shown: all, or all but the special tokens (when hidden and any others remain). */
    shownPositions(e) {
      const all = e.tokens.map((_, k) => k);
      if (!this.state.hideSpecial) return all;
      const kept = all.filter((k) => !isSpecial(e.tokens[k]));
      return kept.length ? kept : all;
    }

    /** The [keep, keep] sub-matrix of an [n, n] row-major map. */
    subMatrix(values, n, keep) {
      if (keep.length === n) return values;
      const out = new Float32Array(keep.length * keep.length);
      keep.forEach((i, r) => keep.forEach((j, c) => { out[r * keep.length + c] = values[i * n + j]; }));
      return out;
    }

    /** The layer/head-dependent parts: both heatmaps and the top edges. */
    drawView() {
      const e = this.examples[this.state.example];
      const data = this.cache.get(this.state.example);
      const n = e.tokens.length;
      const keep = this.shownPositions(e);
      const labels = keep.map((k) => e.tokens[k]);
      const hidden = n - keep.length;
      const view = (this.state.head === SUM ? "all heads summed" : "head " + this.state.head) +
        ", layer " + e.layers[this.state.layer];
      const values = this.subMatrix(this.attrMap(e, data), n, keep);
      const [lo, hi] = extent(values);
      const limit = Math.max(-lo, hi);
      const m = keep.length;
      const common = { rows: m, cols: m, rowLabels: labels, colLabels: labels, rowName: "query",
        colName: "key", maxSide: 600 };
      const note = hidden ? "; " + hidden + " special tokens hidden" : "";
      this.attr.draw(Object.assign({ values: values, colour: diverging(limit), valueName: "AttAttr" }, common));
      this.attrTitle.textContent = "AttAttr map (" + view + ")";
      this.attrCaption.textContent = "rows = query, columns = key; colour range ±" + fmt(limit) +
        " (red positive, blue negative)" + note;
      const attnFull = this.attnMap(e, data);
      this.attnFigure.hidden = !attnFull;
      if (attnFull) {
        const attn = this.subMatrix(attnFull, n, keep);
        const [, top] = extent(attn);
        this.attn.draw(Object.assign({ values: attn, colour: sequential(0, top), valueName: "attention" }, common));
        this.attnTitle.textContent = "Raw attention (" + (this.state.head === SUM ? "mean over heads" : "head " +
          this.state.head) + ", layer " + e.layers[this.state.layer] + ")";
        this.attnCaption.textContent = "rows = query, columns = key; colour range 0 … " + fmt(top) + note;
      }
      this.drawEdges(e, values, keep, view + note);
      if (window.__reportRendered === undefined) window.__reportRendered = performance.now(); // time to first render
    }

    drawEdges(e, values, keep, view) {
      const m = keep.length;
      const order = Array.from(values.keys()).sort((a, b) => values[b] - values[a]).slice(0, TOP_EDGES);
      this.edgesTitle.textContent = "Top " + order.length + " edges (" + view + ", largest AttAttr)";
      this.edges.textContent = "";
      for (const k of order) {
        const i = keep[Math.floor(k / m)];
        const j = keep[k % m];
        this.edges.appendChild(el("li", { "data-query": i, "data-key": j },
          el("span", { class: "tok" }, e.tokens[i]), " [" + i + "] ← ",
          el("span", { class: "tok" }, e.tokens[j]), " [" + j + "]: " + fmt(values[k])));
      }
    }

    /** The tree or the graph of the example (the view selector), with the completeness error of their maps. */
    drawTree(e) {
      const graph = this.state.treeMode === "graph" && e.graph;
      this.treeTitle.textContent = graph ? "Attribution graph" : "Attribution tree";
      this.treeCompleteness.textContent = e.max_completeness_error === null || e.max_completeness_error === undefined
        ? "" : "Worst completeness error of the maps the " + (graph ? "graph" : "tree") + " was built from: " +
          fmt(e.max_completeness_error) + " (layer " + e.layers[e.max_completeness_error_layer] + ").";
      this.drawing.draw(e, graph ? "graph" : "tree");
    }
  }

  // ------------------------------------------------------------------ per-model sections

  /** Methods of a curves dict in a stable order, without per-seed random runs. */
  function methodNames(curves) {
    return Object.keys(curves || {}).filter((k) => !/^random_s\d+$/.test(k));
  }

  function headsSection(data) {
    const out = [];
    const imp = data.importance;
    if (imp && imp.methods) {
      out.push(el("h3", null, "Head importance (" + (imp.n_examples || "?") + " " + (imp.split || "") +
        " examples, layer × head)"));
      const grid = el("div", { class: "small-multiples" });
      for (const [method, matrix] of Object.entries(imp.methods)) {
        if (!Array.isArray(matrix) || !matrix.length) continue;
        const rows = matrix.length;
        const cols = matrix[0].length;
        const values = matrix.flat();
        const { colour, range } = autoColour(values);
        const map = new Heatmap({ class: "heatmap importance", "data-method": method });
        // at least about 240 px wide, so that a few heads are still readable
        const cell = clamp(Math.ceil(240 / Math.max(cols, 1)), 14, 48);
        map.draw({ values: values, rows: rows, cols: cols, colour: colour, cell: cell,
          rowLabels: matrix.map((_, k) => "L" + k), colLabels: matrix[0].map((_, k) => "H" + k),
          rowName: "layer", colName: "head", valueName: method });
        grid.appendChild(el("figure", null, el("div", null, method), map.canvas,
          el("figcaption", null, fmt(range[0]) + " … " + fmt(range[1]))));
      }
      out.push(grid);
    }
    const pr = data.pruning;
    if (pr && pr.curves) {
      const methods = methodNames(pr.curves);
      const metrics = Object.keys(pr.unpruned || pr.curves[methods[0]] || {});
      out.push(el("h3", null, "Pruning curves (" + (pr.n_eval_examples || "?") + " " + (pr.split || "") +
        " examples; heads removed by each method's ranking, least important first)"));
      const row = el("div", { class: "row" });
      for (const metric of metrics) {
        const series = methods.filter((m) => Array.isArray(pr.curves[m][metric])).map((m) => {
          const c = pr.curves[m];
          const band = Array.isArray(c[metric + "_min"]) && Array.isArray(c[metric + "_max"])
            ? [c[metric + "_min"], c[metric + "_max"]] : null;
          return { name: m, x: pr.fractions, y: c[metric], band: band, dashed: m === "random" };
        });
        row.appendChild(lineChart({ series: series, xLabel: "fraction of heads pruned", yLabel: metric,
          reference: pr.unpruned && pr.unpruned[metric] !== undefined
            ? { y: pr.unpruned[metric], label: "unpruned " + metric + " " + fmt(pr.unpruned[metric]) } : null }));
      }
      out.push(row);
      if (pr.summary) {
        const rows = [];
        for (const m of methodNames(pr.summary)) {
          for (const [metric, s] of Object.entries(pr.summary[m] || {})) {
            rows.push([m, metric, s ? s.auc : null, s ? s.max_fraction_within : null]);
          }
        }
        out.push(table(["method", "metric", "auc", "max fraction within"], rows, [0, 1]));
        if (pr.summary_definition) out.push(el("p", { class: "caption" }, pr.summary_definition));
      }
    }
    return out;
  }

  function effectivenessSection(data) {
    const series = Object.entries(data.curves || {}).map(([name, y]) => ({ name: name, x: data.heads_pruned_per_layer,
      y: y }));
    return [lineChart({ series: series, xLabel: "heads pruned per layer", yLabel: "accuracy",
      caption: (data.n_examples ? data.n_examples + " " + (data.split || "") + " examples; " : "") + (data.definition || "") })];
  }

  function universalitySection(data) {
    const tasks = data.tasks || [];
    const row = el("div", { class: "row" });
    for (const kind of ["pearson", "spearman"]) {
      const matrix = data[kind];
      if (!Array.isArray(matrix)) continue;
      const map = new Heatmap({ class: "heatmap correlation", "data-kind": kind });
      map.draw({ values: matrix.flat(), rows: tasks.length, cols: tasks.length, rowLabels: tasks, colLabels: tasks,
        colour: diverging(1), cell: 52, annotate: true, rowName: "task", colName: "task", valueName: kind });
      row.appendChild(el("figure", null, el("div", null, kind + " correlation of head importance (" +
        (data.method || "") + ")"), map.canvas));
    }
    return [row];
  }

  function attackSection(data) {
    const out = [];
    const triggers = data.triggers || [];
    out.push(el("p", null, "Triggers mined from " + fmt(data.n_source) + " training examples, evaluated on " +
      fmt(data.n_dev) + " dev examples."));
    out.push(table(["#", "trigger", "source layer", "source head", "pattern score"],
      triggers.map((t, k) => [String(k + 1), t.text === null ? "" : String(t.text), t.layer, t.head, t.score]), [0, 1]));
    const tab = data.table;
    if (tab && Array.isArray(tab.rows)) {
      const header = ["class", "clean"].concat((tab.triggers || []).map((t) => "with “" + t + "”"), ["random control",
        "mean change"]);
      const pct = (v) => (typeof v === "number" ? (100 * v).toFixed(1) : "–");
      const signed = (v) => (typeof v === "number" ? (v >= 0 ? "+" : "") + (100 * v).toFixed(1) : "–");
      const rows = tab.rows.map((r) => [String(r.class), pct(r.clean)]
        .concat((r.triggers || []).map((t) => pct(t.accuracy) + " (" + signed(t.change) + ")"))
        .concat([r.control ? pct(r.control.mean) + " ± " + pct(r.control.std) + " (" + signed(r.control.change) + ")"
          : "–", signed(r.mean_change)]));
      out.push(el("h3", null, "Accuracy per gold class (%), with each trigger inserted"));
      out.push(table(header, rows));
    }
    const overall = data.overall_accuracy;
    if (overall && typeof overall.clean === "number") {
      out.push(el("p", { class: "caption" }, "overall accuracy: clean " + fmt(overall.clean) + "; with triggers " +
        (overall.triggers || []).map(fmt).join(", ")));
    }
    return out;
  }

  function faithfulnessSection(data) {
    const out = [];
    const methods = Object.keys(data.curves || {});
    const row = el("div", { class: "row" });
    for (const [key, label] of [["drop", "mean probability drop"], ["flip", "share of predictions flipped"]]) {
      const series = methods.filter((m) => Array.isArray(data.curves[m][key]))
        .map((m) => ({ name: m, x: data.ks, y: data.curves[m][key], dashed: m === "random" }));
      row.appendChild(lineChart({ series: series, xLabel: "k edges deleted (log scale)", yLabel: label, logX: true }));
    }
    out.push(el("p", null, "Deletion curves over " + fmt(data.n_examples) + " examples (" + fmt(data.mean_tokens) +
      " tokens on average): the top-k attention edges of each method are removed."));
    out.push(row);
    out.push(table(["method", "drop area", "flip area"],
      methods.map((m) => [m, data.curves[m].drop_area, data.curves[m].flip_area])));
    if (data.groundtruth) {
      // every number of groundtruth.json (the planted-pair hit rates) as a "path: value" row
      const rows = [];
      const walk = (value, path) => {
        if (typeof value === "number") rows.push([path.join(" / "), value]);
        else if (value && typeof value === "object") for (const [k, v] of Object.entries(value)) walk(v, path.concat(k));
      };
      walk(data.groundtruth, []);
      out.push(el("h3", { id: "groundtruth-title" }, "Ground truth: planted-pair hit rates"));
      if (data.groundtruth.hit) out.push(el("p", { class: "caption" }, "hit: " + data.groundtruth.hit));
      out.push(table(["quantity", "value"], rows, [0]));
    }
    if (data.trees) {
      out.push(el("h3", null, "Deleting the edges of each method's tree"));
      out.push(table(["method", "mean edges", "drop", "flip", "random drop", "random flip"],
        Object.entries(data.trees).map(([m, t]) => [m, t.mean_edges, t.drop, t.flip, t.random_drop, t.random_flip])));
    }
    return out;
  }

  /**
   * A `tree` results folder: its summary numbers (trees.json), a table of its examples and, for the
   * chosen example, its tokens and its tree or graph as the folder built it (`k`: the section's index).
   */
  function treesSection(data, k) {
    const out = [];
    const examples = data.examples || [];
    const graph = data.mode === "graph";
    const worst = data.max_completeness_error;
    const noun = (graph ? "graph" : "tree") + (examples.length === 1 ? "" : "s");
    out.push(el("p", { class: "trees-summary", id: "trees-" + k + "-summary" }, examples.length + " " + noun + " (mode " +
      data.mode + ", τ = " + data.tau + ", root rule " + data.root + ", on " + (data.words ? "words" : "tokens") +
      ")" + (worst === null || worst === undefined ? "." : "; worst completeness error of their maps: " + fmt(worst) +
      ".")));
    out.push(table(["example", "tokens", "predicted", "probability", "edges", "worst completeness error", "layer"],
      examples.map((e) => [e.name, e.tokens.length, String(e.predicted), e.prob, e.n_edges, e.max_completeness_error,
        e.max_completeness_error_layer === null || e.max_completeness_error_layer === undefined ? "–"
          : String(e.layers[e.max_completeness_error_layer])]), [0, 2, 6]));
    if (!examples.length) return out;
    const id = "trees-" + k;
    const drawing = new TreeDrawing(id);
    const title = el("h3", { class: "trees-title", id: id + "-title" });
    const tokens = el("div", { class: "tokens", id: id + "-tokens" });
    const show = (index) => {
      const e = examples[index];
      title.textContent = (graph ? "Attribution graph of " : "Attribution tree of ") + e.name + " (predicted " +
        e.predicted + (typeof e.prob === "number" ? ", p = " + fmt(e.prob) : "") + ")";
      tokens.textContent = "";
      e.tokens.forEach((t, j) => tokens.appendChild(el("span", { class: "token", title: "token " + j }, t)));
      drawing.draw(e, graph && e.graph ? "graph" : "tree");
    };
    if (examples.length > 1) {
      out.push(el("div", { class: "controls" }, el("label", null, "example",
        select(examples.map((e, j) => [String(j), e.name]), (v) => show(Number(v)), { id: id + "-select" }))));
    }
    out.push(title, tokens, drawing.caption, drawing.box);
    show(0);
    return out;
  }

  const SECTIONS = {
    heads: ["Heads: importance and pruning", headsSection],
    effectiveness: ["Effectiveness: pruning heads per example", effectivenessSection],
    universality: ["Universality of important heads across tasks", universalitySection],
    attack: ["Adversarial triggers", attackSection],
    faithfulness: ["Faithfulness: edge deletion", faithfulnessSection],
    trees: ["Attribution trees", treesSection],
  };

  // ------------------------------------------------------------------ page

  function main() {
    const data = JSON.parse(document.getElementById("report-data").textContent);
    const root = document.getElementById("report");
    root.textContent = "";
    const nav = el("nav");
    const total = data.n_examples_total || 0;
    append(root, el("header", null,
      el("h1", null, "AttAttr report: " + data.title),
      el("p", { class: "note" }, "Self-attention attribution (Hao et al., AAAI 2021, arXiv:2004.11207). Precision: " +
        data.precision + "."),
      el("p", { class: "note", id: "included-folders" }, "Included folders: " + (data.included || []).join(", ") +
        "."),
      (data.skipped || []).length ? el("p", { class: "note", id: "skipped-folders" }, "Not shown: " +
        data.skipped.map((s) => s.folder + " (" + s.reason + ")").join("; ") + ".") : null,
      nav));
    let view = null;
    if (data.examples.length) {
      nav.appendChild(el("a", { href: "#examples" }, "examples"));
      view = new ExampleView(data.examples);
      root.appendChild(view.build());
      if (total > data.examples.length) {
        view.root.insertBefore(el("p", { class: "note" }, "Showing " + data.examples.length + " of " + total +
          " examples."), view.root.children[1]);
      }
    }
    data.sections.forEach((section, k) => {
      const [title, render] = SECTIONS[section.kind] || [section.kind, () => []];
      const id = "section-" + k;
      nav.appendChild(el("a", { href: "#" + id }, section.folder + ": " + section.kind));
      append(root, el("section", { id: id, class: "model-section", "data-kind": section.kind },
        el("h2", null, title + " — " + section.folder), render(section.data, k)));
    });
    if (view) {
      return view.setExample(0);
    }
    window.__reportRendered = performance.now();
    return Promise.resolve();
  }

  function fail(error) {
    const root = document.getElementById("report");
    root.insertBefore(el("p", { class: "error" }, "The report could not be drawn: " + error.message), root.firstChild);
    console.error(error);
  }

  try {
    main().then(() => {
      window.__reportReady = true;
    }, fail);
  } catch (error) {
    fail(error);
  }
})();
