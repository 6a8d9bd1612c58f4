// The region on the image tab's picture: the first corner tapped as a ringed dot, the box (tapped or typed) as a
// rectangle, drawn over the picture where it is shown (scaled down and letterboxed), in the picture's own pixels.
// Decorative (aria-hidden, no pointer events): the Region field stays what a screen reader reads and what is
// searched. The drawing's state is the value of a hidden gr.HTML (ui.py): {"corner": [x, y], "box": [x0, y0, x1,
// y1]}, either part optional; loaded by its `head`, mounted by its js_on_load, redrawn by watch('value').
(function () {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";
  const INK = "#d9480f", HALO = "#ffffff";  // the atlas's orange on a white halo: seen on dark and light pictures

  function parse(value) {
    if (!value) return {};
    try {
      const state = typeof value === "string" ? JSON.parse(value) : value;
      return state && typeof state === "object" && !Array.isArray(state) ? state : {};
    } catch (e) { return {}; }
  }

  // A box as the Region field may hold it: a JSON list of four finite numbers, neither empty nor inverted; else
  // null. (Whether it lies inside the picture is checked when drawn, against the picture's size.)
  function boxOf(text) {
    let value;
    try { value = JSON.parse(text); } catch (e) { return null; }
    if (!Array.isArray(value) || value.length !== 4 ||
        !value.every((v) => typeof v === "number" && Number.isFinite(v))) return null;
    const [x0, y0, x1, y1] = value;
    return x1 > x0 && y1 > y0 ? value : null;
  }

  // Where the picture is painted inside its <img> box, by the box's CSS object-fit and object-position (Gradio 6.31:
  // scale-down, centred; see gradio_patches.PICTURE_SHOWN): screen position of pixel (0, 0) and CSS px per pixel.
  function placement(img) {
    const rect = img.getBoundingClientRect(), style = getComputedStyle(img);
    const nw = img.naturalWidth, nh = img.naturalHeight;
    let sx = rect.width / nw, sy = rect.height / nh;
    const fit = style.objectFit;
    if (fit === "contain" || fit === "scale-down") sx = sy = Math.min(sx, sy, fit === "scale-down" ? 1 : Infinity);
    else if (fit === "cover") sx = sy = Math.max(sx, sy);
    else if (fit === "none") sx = sy = 1;
    const share = (style.objectPosition || "50% 50%").split(" ")
      .map((part) => (part.endsWith("%") ? parseFloat(part) / 100 : 0.5));
    const width = nw * sx, height = nh * sy;
    return { left: rect.left + (rect.width - width) * share[0], top: rect.top + (rect.height - height) * share[1],
      sx, sy, width, height, nw, nh };
  }

  function node(name, attributes) {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
    return element;
  }

  class Drawing {
    constructor(holder, picture) {
      this.holderSelector = holder;   // our elem_id on the Image component
      this.pictureSelector = picture; // Gradio's markup inside it (gradio_patches.PICTURE_SHOWN)
      this.state = {};
      this.svg = node("svg", { class: "region-drawing", "aria-hidden": "true", focusable: "false" });
      this.resized = new ResizeObserver(() => this.draw());
      // Gradio replaces the <img> for a new picture, which then loads: draw again once its size is known.
      document.addEventListener("load", (e) => {
        if (e.target instanceof HTMLImageElement && e.target.matches(`${holder} ${picture}`)) this.draw();
      }, true);
      window.addEventListener("resize", () => this.draw());
    }

    set(state) { this.state = state; this.draw(); }

    draw() {
      const holder = document.querySelector(this.holderSelector);
      const img = holder && holder.querySelector(this.pictureSelector);
      if (holder && holder !== this.observedHolder) { this.resized.observe(holder); this.observedHolder = holder; }
      if (img && img !== this.observedImg) {
        if (this.observedImg) this.resized.unobserve(this.observedImg);
        this.resized.observe(img);
        this.observedImg = img;
      }
      const svg = this.svg;
      svg.replaceChildren();
      const shown = img && img.complete && img.naturalWidth > 0 && img.getClientRects().length > 0;
      const at = shown ? placement(img) : null;
      const inside = (x, y) => at && x >= 0 && y >= 0 && x <= at.nw && y <= at.nh;
      const box = Array.isArray(this.state.box) ? this.state.box : null;
      const corner = Array.isArray(this.state.corner) ? this.state.corner : null;
      const drawBox = box && inside(box[0], box[1]) && inside(box[2], box[3]);
      const drawCorner = corner && inside(corner[0], corner[1]);
      if (!drawBox && !drawCorner) { svg.remove(); this.drawn = null; return; }
      if (svg.parentNode !== holder) holder.append(svg);  // after Gradio's own children: never in their way
      const origin = holder.getBoundingClientRect();
      // Absolutely placed in the holder's padding box, over exactly the painted picture.
      Object.assign(svg.style, { left: `${at.left - origin.left - holder.clientLeft}px`,
        top: `${at.top - origin.top - holder.clientTop}px`, width: `${at.width}px`, height: `${at.height}px` });
      svg.setAttribute("viewBox", `0 0 ${at.width} ${at.height}`);
      if (drawBox) {
        const [x0, y0, x1, y1] = [box[0] * at.sx, box[1] * at.sy, box[2] * at.sx, box[3] * at.sy];
        const frame = { x: x0, y: y0, width: x1 - x0, height: y1 - y0, fill: "none" };
        const outside = `M0 0H${at.width}V${at.height}H0Z M${x0} ${y0}V${y1}H${x1}V${y0}Z`;  // dimmed around the box
        svg.append(node("path", { d: outside, "fill-rule": "evenodd", fill: "rgba(0, 0, 0, 0.3)" }),
          node("rect", { ...frame, stroke: HALO, "stroke-width": 4, class: "region-halo" }),
          node("rect", { ...frame, stroke: INK, "stroke-width": 2, class: "region-box" }));
      }
      if (drawCorner) {
        const x = corner[0] * at.sx, y = corner[1] * at.sy;
        svg.append(node("circle", { cx: x, cy: y, r: 7, fill: "none", stroke: HALO, "stroke-width": 4 }),
          node("circle", { cx: x, cy: y, r: 7, fill: "none", stroke: INK, "stroke-width": 2, class: "region-corner" }),
          node("circle", { cx: x, cy: y, r: 2, fill: INK }));
      }
      this.drawn = { box: drawBox ? box : null, corner: drawCorner ? corner : null };  // read by the browser tests
    }
  }

  window.ClipRegion = {
    mount(element, props, watch, selectors) {
      const drawing = new Drawing(selectors.holder, selectors.picture);
      window.clipRegion = drawing;  // for the browser tests
      drawing.set(parse(props.value));
      watch("value", () => drawing.set(parse(props.value)));
    },
    // The Region field changed (typed, or filled by a second tap): the drawing shows its box, nothing when it is
    // empty or not a box; a pending first corner is dropped either way (a typed box replaces the taps).
    fromField(text) {
      if (typeof text !== "string" || !text.trim()) return "";
      const box = boxOf(text);
      return box ? JSON.stringify({ box }) : "";
    },
  };
})();
