// A small live line chart drawn as inline SVG: no library, no canvas scaling issues,
// and screen readers get a one-line summary through aria-label.
//
// Two series share the time axis; each has its own scale (finished tasks per
// second on the left, queue depth on the right) because their magnitudes differ.

const SVG_NS = "http://www.w3.org/2000/svg";
const WIDTH = 600;
const HEIGHT = 170;
const PAD = { left: 44, right: 44, top: 12, bottom: 22 };

function el(name, attrs = {}, text = null) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const exponent = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * exponent) return step * exponent;
  }
  return 10 * exponent;
}

function fmt(value) {
  if (value >= 100 || Number.isInteger(value)) return String(Math.round(value));
  return value.toFixed(value >= 10 ? 0 : 1);
}

export class ActivityChart {
  /** @param {HTMLElement} container @param {number} capacity samples kept */
  constructor(container, capacity) {
    this.container = container;
    this.capacity = capacity;
    this.samples = [];
    this.svg = el("svg", {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", class: "chart-svg",
    });
    this.title = el("title", {}, "Activity");
    this.svg.append(this.title);
    container.append(this.svg);
    this.render();
  }

  /** @param {{time: number, done: number, queue: number}} sample */
  push(sample) {
    this.samples.push(sample);
    if (this.samples.length > this.capacity) this.samples.shift();
    this.render();
  }

  render() {
    const svg = this.svg;
    while (svg.lastChild && svg.lastChild !== this.title) svg.lastChild.remove();
    const innerW = WIDTH - PAD.left - PAD.right;
    const innerH = HEIGHT - PAD.top - PAD.bottom;
    const samples = this.samples;
    const doneMax = niceMax(Math.max(0, ...samples.map((s) => s.done)));
    const queueMax = niceMax(Math.max(0, ...samples.map((s) => s.queue)));

    for (const frac of [0, 0.5, 1]) {
      const y = PAD.top + innerH * (1 - frac);
      svg.append(el("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y, y2: y, class: "grid-line" }));
      svg.append(el("text", { x: PAD.left - 6, y: y + 4, class: "axis axis-done", "text-anchor": "end" },
        fmt(doneMax * frac)));
      svg.append(el("text", { x: WIDTH - PAD.right + 6, y: y + 4, class: "axis axis-queue" },
        fmt(queueMax * frac)));
    }
    svg.append(el("text", { x: PAD.left, y: HEIGHT - 4, class: "axis" }, "-3 min"));
    svg.append(el("text", { x: WIDTH - PAD.right, y: HEIGHT - 4, class: "axis", "text-anchor": "end" }, "now"));

    const x = (i) => PAD.left + innerW * (1 - (samples.length - 1 - i) / (this.capacity - 1));
    const line = (key, max, cls) => {
      if (samples.length < 2) return;
      const points = samples.map((s, i) => `${x(i).toFixed(1)},${(PAD.top + innerH * (1 - s[key] / max)).toFixed(1)}`);
      svg.append(el("polyline", { points: points.join(" "), class: cls, fill: "none" }));
    };
    if (samples.length < 2) {
      svg.append(el("text", { x: WIDTH / 2, y: PAD.top + innerH / 2, class: "axis", "text-anchor": "middle" },
        "collecting samples…"));
    }
    line("queue", queueMax, "series-queue");
    line("done", doneMax, "series-done");

    const last = samples[samples.length - 1];
    const summary = last
      ? `Activity over the last minutes: now ${fmt(last.done)} tasks finished per second, ${last.queue} queued`
      : "Activity: no samples yet";
    this.title.textContent = summary;
    svg.setAttribute("aria-label", summary);
  }
}
