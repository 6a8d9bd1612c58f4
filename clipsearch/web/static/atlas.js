// The atlas: every gallery image as a dot on a canvas, its thumbnail once the zoom lets pictures be told apart.
// Pan by drag, zoom by wheel, pinch or the buttons; keys: arrows pan, + and - zoom, 0 resets. Clicking a picture (or
// a dot) sends its row to the app, which shows its details. Loaded by gr.HTML's `head`; mounted by its js_on_load.
(function () {
  "use strict";
  const COLOURS = ["#9aa0a6", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#17becf", "#bcbd22", "#393b79", "#637939", "#843c39"];  // colour 0: no common category
  const BACKGROUND = [250, 250, 250];
  const THUMB = 56;       // CSS px: a drawn thumbnail's side
  const CELL = 64;        // CSS px: at most one thumbnail per cell of this side (world-anchored: stable while panning)
  const THUMB_POINTS = 1500;  // thumbnails appear when at most this many images are in view
  const MAX_LOADING = 8;  // thumbnail requests in flight
  const MAX_CACHED = 800; // decoded thumbnails kept
  const GRID = 256;       // buckets per side of the spatial index (culling and hit tests)
  // Zoomed out, the map's dots are painted once per scale on a layer of at most LAYER_VIEWS canvases (and
  // LAYER_PIXELS): a pan is then one blit, and a repaint costs about as much as one direct frame, never ~16 MB.
  const LAYER_PIXELS = 4e6;
  const LAYER_VIEWS = 1.5;
  const STRETCH = 2;       // mid-zoom the painted layer is stretched (up to this ratio either way), not repainted
  const SHARPEN_MS = 120;  // ... and repainted sharp at the new scale and density once the zoom is this still

  function parse(value) {
    if (!value) return null;
    try { return typeof value === "string" ? JSON.parse(value) : value; } catch (e) { return null; }
  }

  function rgb(hex) { return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)); }

  class Atlas {
    constructor(element, trigger, config) {
      this.root = element.querySelector(".atlas");
      this.canvas = element.querySelector("canvas");
      this.status = element.querySelector(".atlas-status");
      this.ctx = this.canvas.getContext("2d");
      this.trigger = trigger;
      this.config = config;
      this.state = config;
      this.view = { s: 1, tx: 0, ty: 0 };
      this.pointers = new Map();
      this.images = new Map();  // row -> {img, ok}
      this.loading = 0;
      this.queue = [];
      this.drawn = [];           // thumbnails drawn last frame: [row, x, y, side] for hit tests
      this.frames = [];          // ms spent drawing each frame (read by the tests and the benchmark)
      this.pending = false;
      this.packed = COLOURS.map((c) => { const [r, g, b] = rgb(c); return (255 << 24) | (b << 16) | (g << 8) | r; });
      this.legend();
      this.listen();
      this.resize();
      new ResizeObserver(() => this.resize()).observe(this.canvas.parentElement);
      this.load();
    }

    async load() {
      this.status.textContent = `Loading the map of ${this.config.count.toLocaleString()} images…`;
      const response = await fetch(this.config.points);
      if (!response.ok) { this.status.textContent = "The map could not be loaded; reload the page."; return; }
      const buffer = await response.arrayBuffer();
      const n = this.config.count;
      this.x = new Float32Array(n); this.y = new Float32Array(n);
      const xs = new Uint16Array(buffer, 0, n), ys = new Uint16Array(buffer, 2 * n, n);
      this.colour = new Uint8Array(buffer, 4 * n, n);
      for (let i = 0; i < n; i++) { this.x[i] = xs[i] / 65535; this.y[i] = ys[i] / 65535; }
      this.index();
      this.status.textContent = "";
      this.root.dataset.ready = "true";
      this.reset();
    }

    index() {  // counting sort of the rows into GRID x GRID buckets
      const n = this.config.count, cell = new Uint32Array(n), start = new Uint32Array(GRID * GRID + 1);
      for (let i = 0; i < n; i++) {
        const c = Math.min(GRID - 1, (this.y[i] * GRID) | 0) * GRID + Math.min(GRID - 1, (this.x[i] * GRID) | 0);
        cell[i] = c; start[c + 1]++;
      }
      for (let c = 0; c < GRID * GRID; c++) start[c + 1] += start[c];
      const fill = start.slice(0, GRID * GRID), rows = new Uint32Array(n);
      for (let i = 0; i < n; i++) rows[fill[cell[i]]++] = i;
      this.start = start; this.rows = rows; this.picked = new Uint32Array(THUMB_POINTS + 1);
    }

    legend() {
      const list = this.root.querySelector(".atlas-legend");
      list.textContent = "";
      (this.config.legend || []).forEach((name, i) => {
        const item = document.createElement("li");
        const swatch = document.createElement("span");
        swatch.className = "atlas-swatch"; swatch.style.background = COLOURS[i];
        item.append(swatch, document.createTextNode(name));
        list.append(item);
      });
    }

    listen() {
      const c = this.canvas;
      c.addEventListener("pointerdown", (e) => {
        c.setPointerCapture(e.pointerId);
        this.pointers.set(e.pointerId, { x: e.offsetX, y: e.offsetY });
        if (this.pointers.size === 1) this.press = { x: e.offsetX, y: e.offsetY, moved: 0 };
        else this.press = null;  // a pinch is never a click
      });
      c.addEventListener("pointermove", (e) => {
        const last = this.pointers.get(e.pointerId);
        if (!last) return;
        const now = { x: e.offsetX, y: e.offsetY };
        if (this.pointers.size === 1) {
          this.panBy(now.x - last.x, now.y - last.y);
          if (this.press) this.press.moved += Math.abs(now.x - last.x) + Math.abs(now.y - last.y);
        } else if (this.pointers.size === 2) {
          const [other] = [...this.pointers].filter(([id]) => id !== e.pointerId).map(([, p]) => p);
          const before = Math.hypot(last.x - other.x, last.y - other.y);
          const after = Math.hypot(now.x - other.x, now.y - other.y);
          if (before > 0) this.zoomAt((now.x + other.x) / 2, (now.y + other.y) / 2, after / before);
          this.panBy((now.x - last.x) / 2, (now.y - last.y) / 2);
        }
        this.pointers.set(e.pointerId, now);
      });
      const up = (e) => {
        if (this.pointers.delete(e.pointerId) && this.press && this.press.moved < 6 && e.type === "pointerup") {
          this.click(e.offsetX, e.offsetY);
        }
        if (this.pointers.size === 0) this.press = null;
      };
      c.addEventListener("pointerup", up);
      c.addEventListener("pointercancel", up);
      c.addEventListener("wheel", (e) => {
        e.preventDefault();
        this.zoomAt(e.offsetX, e.offsetY, Math.exp(-e.deltaY * (e.deltaMode === 1 ? 0.05 : 0.0015)));
      }, { passive: false });
      c.addEventListener("keydown", (e) => {
        const step = 60, keys = {
          ArrowLeft: () => this.panBy(step, 0), ArrowRight: () => this.panBy(-step, 0),
          ArrowUp: () => this.panBy(0, step), ArrowDown: () => this.panBy(0, -step),
          "+": () => this.zoomAt(this.w / 2, this.h / 2, 1.5), "=": () => this.zoomAt(this.w / 2, this.h / 2, 1.5),
          "-": () => this.zoomAt(this.w / 2, this.h / 2, 1 / 1.5), "0": () => this.reset(),
          Enter: () => this.click(this.w / 2, this.h / 2, true),
        };
        if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
      });
      this.root.querySelector(".atlas-in").addEventListener("click", () => this.zoomAt(this.w / 2, this.h / 2, 2));
      this.root.querySelector(".atlas-out").addEventListener("click", () => this.zoomAt(this.w / 2, this.h / 2, 0.5));
      this.root.querySelector(".atlas-reset").addEventListener("click", () => this.reset());
    }

    resize() {
      const box = this.canvas.parentElement.getBoundingClientRect();
      const w = Math.max(1, Math.round(box.width)), h = Math.max(1, Math.round(this.canvas.clientHeight || box.height));
      // At most 2 canvas pixels per CSS pixel: a phone's 3x costs 2.25x the pixels for no visible gain.
      const dpr = Math.min(2, window.devicePixelRatio || 1);
      if (w === this.w && h === this.h && dpr === this.dpr) return;
      const first = !this.w || this.w < 50 || this.h < 50;  // never laid out while hidden: fit the map now
      this.w = w; this.h = h; this.dpr = dpr;
      this.canvas.width = Math.round(w * dpr); this.canvas.height = Math.round(h * dpr);
      this.pixels = this.ctx.createImageData(this.canvas.width, this.canvas.height);
      this.words = new Uint32Array(this.pixels.data.buffer);
      if (first || !this.x) this.reset(); else this.request();
    }

    reset() {
      const side = Math.min(this.w, this.h) * 0.94;
      this.view = { s: side, tx: (this.w - side) / 2, ty: (this.h - side) / 2 };
      this.request();
    }

    panBy(dx, dy) { this.view.tx += dx; this.view.ty += dy; this.request(); }

    zoomAt(x, y, factor) {
      const v = this.view, base = Math.min(this.w, this.h);
      const s = Math.min(base * 400, Math.max(base * 0.5, v.s * factor));
      v.tx = x - (x - v.tx) * (s / v.s); v.ty = y - (y - v.ty) * (s / v.s); v.s = s;
      this.request();
    }

    screenOf(row) { return [this.x[row] * this.view.s + this.view.tx, this.y[row] * this.view.s + this.view.ty]; }

    update(state) { this.state = state || this.config; this.request(); }

    // The page's results changed: while the map is in view, ask the app (its server function) to mark them, so the
    // rings and the star follow every search, page and "More like this"; while hidden, nothing (the Map tab's select
    // sends the marks when it is opened). Only the newest answer is drawn.
    follow(hits) {
      if (!this.server || !this.canvas.getClientRects().length) return;
      const asked = (this.asked = (this.asked || 0) + 1);
      const marked = (hits || []).map((hit) => ({ image_id: hit.image_id, score: hit.score }));
      this.server.atlas_marks(marked).then((value) => {
        if (asked === this.asked) this.update(parse(value));
      }, () => {});  // a failed request leaves the previous marks
    }

    request() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.draw(); });
    }

    // The rows in the buckets overlapping the view (a superset of what is in view) as flat pairs begin, end of
    // this.rows, one per bucket row: a frame walks them in place instead of copying up to every row into an array.
    visibleSpans() {
      const v = this.view, toCell = (p) => Math.max(0, Math.min(GRID - 1, Math.floor(p * GRID)));
      const x0 = toCell(-v.tx / v.s), x1 = toCell((this.w - v.tx) / v.s);
      const y0 = toCell(-v.ty / v.s), y1 = toCell((this.h - v.ty) / v.s);
      if (x0 === 0 && y0 === 0 && x1 === GRID - 1 && y1 === GRID - 1) return [0, this.rows.length];
      const spans = [];
      for (let cy = y0; cy <= y1; cy++) spans.push(this.start[cy * GRID + x0], this.start[cy * GRID + x1 + 1]);
      return spans;
    }

    visibleRows() {
      const spans = this.visibleSpans(), out = [];
      for (let k = 0; k < spans.length; k += 2) {
        for (let i = spans[k]; i < spans[k + 1]; i++) out.push(this.rows[i]);
      }
      return out;
    }

    draw() {
      if (!this.x) return;
      const t0 = performance.now();
      const v = this.view, dpr = this.dpr, W = this.canvas.width, H = this.canvas.height, words = this.words;
      const spans = this.visibleSpans(), s = v.s * dpr, tx = v.tx * dpr, ty = v.ty * dpr;
      // Dot size and subset follow the zoom alone (never the pan, so a pan can reuse the painted layer): dots grow
      // as images spread apart, and zoomed out, where one dot per 8 CSS px² of map already paints a solid field,
      // only every stride-th row is drawn (a stable subset: row order carries no meaning).
      const n = this.config.count, spacing = v.s / Math.sqrt(n);
      const dot = Math.max(1, Math.round(dpr * Math.min(5, Math.max(1.5, spacing / 6))));
      const stride = Math.max(1, Math.ceil(n / Math.max(20000, (v.s * v.s) / 8)));
      let count;
      if (stride > 1 && s * s <= Math.min(LAYER_PIXELS, LAYER_VIEWS * W * H)) {  // zoomed out: the layer
        const key = `${s}/${dot}/${stride}`, layer = this.layer, ratio = layer ? s / layer.s : 0;
        if (!layer || (layer.key !== key && (ratio > STRETCH || ratio < 1 / STRETCH))) {
          this.layer = this.paintLayer(s, dot, stride);
        } else if (layer.key !== key) {  // mid-zoom (a new density too): stretch it now, repaint it once still
          clearTimeout(this.sharpen);
          this.sharpen = setTimeout(() => { this.layer = null; this.request(); }, SHARPEN_MS);
        }
        const ratioNow = s / this.layer.s, side = this.layer.canvas.width * ratioNow;
        this.ctx.fillStyle = `rgb(${BACKGROUND})`;
        this.ctx.fillRect(0, 0, W, H);
        this.ctx.drawImage(this.layer.canvas, Math.round(tx), Math.round(ty), side, side);  // a pan is one blit
        let spanned = 0;
        for (let k = 0; k < spans.length; k += 2) spanned += spans[k + 1] - spans[k];
        count = Math.ceil(spanned / stride);
      } else {
        words.fill((255 << 24) | (BACKGROUND[2] << 16) | (BACKGROUND[1] << 8) | BACKGROUND[0]);
        count = this.paintDots(spans, s, tx, ty, dot, stride, words, W, H);
        this.ctx.putImageData(this.pixels, 0, 0);
      }
      const inView = count <= THUMB_POINTS ? Array.from(this.picked.subarray(0, count)) : null;
      this.ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      this.drawn = inView ? this.thumbnails(inView) : [];
      this.marks();
      this.ctx.setTransform(1, 0, 0, 1, 0, 0);
      this.inView = count * stride;  // about how many images are in view
      this.root.dataset.thumbnails = String(this.drawn.filter((d) => d[4]).length);
      this.frames.push(performance.now() - t0);
      if (this.frames.length > 2000) this.frames.splice(0, 1000);
    }

    paintDots(spans, s, tx, ty, dot, stride, words, W, H) {  // into `words`; the rows in view go to this.picked
      const xs = this.x, ys = this.y, colours = this.colour, packed = this.packed, picked = this.picked;
      const rows = this.rows, right = W - dot, bottom = H - dot;
      let count = 0;
      for (let k = 0; k < spans.length; k += 2) {
        for (let r = spans[k], end = spans[k + 1]; r < end; r++) {
          const i = rows[r];
          if (stride > 1 && i % stride) continue;
          const px = (xs[i] * s + tx) | 0, py = (ys[i] * s + ty) | 0;
          if (px < 0 || py < 0 || px >= right || py >= bottom) continue;
          if (count <= THUMB_POINTS) picked[count] = i;
          count++;
          const colour = packed[colours[i]];
          for (let dy = 0, o = py * W + px; dy < dot; dy++, o += W) {
            for (let dx = 0; dx < dot; dx++) words[o + dx] = colour;
          }
        }
      }
      return count;
    }

    paintLayer(s, dot, stride) {  // the whole map at scale s on a transparent canvas of its own
      const side = Math.ceil(s) + dot + 1, canvas = document.createElement("canvas");
      canvas.width = side; canvas.height = side;
      const ctx = canvas.getContext("2d"), pixels = ctx.createImageData(side, side);
      this.paintDots([0, this.rows.length], s, 0, 0, dot, stride, new Uint32Array(pixels.data.buffer), side, side);
      ctx.putImageData(pixels, 0, 0);
      return { key: `${s}/${dot}/${stride}`, canvas, s };
    }

    thumbnails(inView) {
      const v = this.view, taken = new Set(), drawn = [], ctx = this.ctx, wanted = [];
      const cellWorld = CELL / v.s;
      const first = (this.state && this.state.highlight || []).filter((r) => this.onScreen(r));
      for (const i of first.concat(inView)) {  // the results first, then row order: stable whatever the pan
        const key = Math.floor(this.x[i] / cellWorld) * 1e6 + Math.floor(this.y[i] / cellWorld);
        if (taken.has(key)) continue;
        taken.add(key);
        const [x, y] = this.screenOf(i), image = this.image(i);
        wanted.push(i);
        const left = x - THUMB / 2, top = y - THUMB / 2;
        if (image && image.ok) {
          const bitmap = image.bitmap, side = Math.min(bitmap.width, bitmap.height);
          ctx.drawImage(bitmap, (bitmap.width - side) / 2, (bitmap.height - side) / 2, side, side,
            left, top, THUMB, THUMB);
          ctx.strokeStyle = "#ffffff"; ctx.lineWidth = 2; ctx.strokeRect(left, top, THUMB, THUMB);
        }
        drawn.push([i, left, top, THUMB, Boolean(image && image.ok)]);
      }
      this.fetchQueue(wanted);
      return drawn;
    }

    onScreen(row) {
      const [x, y] = this.screenOf(row);
      return x >= 0 && y >= 0 && x < this.w && y < this.h;
    }

    image(row) {
      const known = this.images.get(row);
      if (known) { this.images.delete(row); this.images.set(row, known); }  // most recently used last
      return known;
    }

    fetchQueue(rows) {
      this.queue = rows.filter((r) => !this.images.has(r));
      this.pump();
    }

    // Each thumbnail is decoded off the main thread (createImageBitmap on the fetched bytes): an <img> decodes on
    // its first drawImage, inside a frame, which is what made panning among pictures stutter on a phone.
    pump() {
      while (this.loading < MAX_LOADING && this.queue.length) {
        const row = this.queue.shift(), entry = { bitmap: null, ok: false };
        this.images.set(row, entry);
        this.loading++;
        fetch(this.config.thumb + row + ".jpg")
          .then((response) => (response.ok ? response.blob() : Promise.reject(response.status)))
          .then((blob) => createImageBitmap(blob))
          .then((bitmap) => {
            if (this.images.get(row) === entry) { entry.bitmap = bitmap; entry.ok = true; this.request(); }
            else bitmap.close();  // evicted while it loaded
          }, () => {})
          .finally(() => { this.loading--; this.pump(); });
      }
      while (this.images.size > MAX_CACHED) {
        const [row, entry] = this.images.entries().next().value;
        if (entry.bitmap) entry.bitmap.close();
        this.images.delete(row);
      }
    }

    marks() {
      const ctx = this.ctx, state = this.state || {};
      ctx.lineWidth = 3;
      for (const row of state.highlight || []) {
        const [x, y] = this.screenOf(row), box = this.drawn.find((d) => d[0] === row);
        ctx.strokeStyle = "#d9480f";
        if (box && box[4]) ctx.strokeRect(box[1] - 2, box[2] - 2, box[3] + 4, box[3] + 4);
        else { ctx.beginPath(); ctx.arc(x, y, 7, 0, 2 * Math.PI); ctx.stroke(); }
      }
      if (state.query) {
        const x = state.query[0] * this.view.s + this.view.tx, y = state.query[1] * this.view.s + this.view.ty;
        ctx.fillStyle = "#d9480f"; ctx.strokeStyle = "#ffffff"; ctx.lineWidth = 2;
        ctx.beginPath();
        for (let k = 0; k < 10; k++) {  // a star
          const r = k % 2 ? 5 : 12, a = -Math.PI / 2 + (k * Math.PI) / 5;
          ctx.lineTo(x + r * Math.cos(a), y + r * Math.sin(a));
        }
        ctx.closePath(); ctx.fill(); ctx.stroke();
        if (state.label) {
          ctx.font = "600 13px system-ui, sans-serif";
          const text = state.label.length > 40 ? state.label.slice(0, 39) + "…" : state.label;
          const width = ctx.measureText(text).width;
          ctx.fillStyle = "rgba(255,255,255,0.9)"; ctx.fillRect(x + 14, y - 10, width + 8, 20);
          ctx.fillStyle = "#1a1a1a"; ctx.fillText(text, x + 18, y + 5);
        }
      }
    }

    click(x, y, keyboard) {
      if (!this.x) return;
      let row = -1;
      for (let k = this.drawn.length - 1; k >= 0 && row < 0; k--) {
        const [i, left, top, side, shown] = this.drawn[k];
        if (shown && x >= left && x <= left + side && y >= top && y <= top + side) row = i;
      }
      if (row < 0) {  // the nearest dot within reach (anywhere in view for the keyboard's Enter)
        let best = keyboard ? Infinity : 10 * 10;
        for (const i of this.visibleRows()) {
          const [px, py] = this.screenOf(i), d = (px - x) ** 2 + (py - y) ** 2;
          if (d < best) { best = d; row = i; }
        }
      }
      if (row >= 0) this.trigger("select", { index: row, value: row });
    }
  }

  window.ClipAtlas = {
    mount(element, props, trigger, watch, server) {
      const config = parse(props.value);
      if (!config || !element.querySelector("canvas")) return;
      const atlas = new Atlas(element, trigger, config);
      atlas.server = server;
      element.atlas = atlas;
      window.clipAtlas = atlas;  // for the browser tests and the frame-time benchmark
      watch("value", () => atlas.update(parse(props.value)));
    },
  };
})();
