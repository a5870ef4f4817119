// The live head-pose gauge: an SVG box, the target window as a rectangle, the
// current (yaw, pitch) as a dot (green while the pose is held).
//
// Orientation: drawn AS THE CAMERA SEES, like the (unmirrored) video beside it. yaw < 0 means
// turned to the person's own left (README "Head pose convention"): the nose points toward the
// image's RIGHT side, so yaw < 0 is plotted RIGHT of centre ("their left →" on the right) and
// the dot moves the same way as the face in the video. pitch > 0 (looking up) is plotted UP.
// The svg carries data-held, and data-yaw / data-pitch / data-side ("left" | "right" |
// "centre": where the dot is drawn) of the latest reading.

const NS = "http://www.w3.org/2000/svg";
const W = 240, H = 180, PAD = 16;
let svg, target, dot, nodata, range = { yaw: 60, pitch: 45 };

function el(name, attrs, parent) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}
// degrees -> SVG coordinates (see orientation note above)
const x = (yaw) => PAD + ((range.yaw - yaw) / (2 * range.yaw)) * (W - 2 * PAD);
const y = (pitch) => PAD + ((range.pitch - pitch) / (2 * range.pitch)) * (H - 2 * PAD);
const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));

export function initGauge(svgEl) {
  svg = svgEl;
  svg.replaceChildren();
  el("rect", { x: PAD, y: PAD, width: W - 2 * PAD, height: H - 2 * PAD, class: "g-frame" }, svg);
  el("line", { x1: W / 2, y1: PAD, x2: W / 2, y2: H - PAD, class: "g-axis" }, svg);
  el("line", { x1: PAD, y1: H / 2, x2: W - PAD, y2: H / 2, class: "g-axis" }, svg);
  const label = (tx, ty, text, anchor = "middle") =>
    (el("text", { x: tx, y: ty, "text-anchor": anchor, class: "g-label" }, svg).textContent = text);
  label(W / 2, 11, "up");
  label(W / 2, H - 4, "down");
  label(PAD, H - 4, "← their right", "start");
  label(W - PAD, H - 4, "their left →", "end");
  target = el("rect", { class: "g-target", visibility: "hidden" }, svg);
  dot = el("circle", { r: 7, class: "g-dot", visibility: "hidden" }, svg);
  nodata = el("text", { x: W / 2, y: H / 2 + 22, "text-anchor": "middle", class: "g-nodata", visibility: "hidden" }, svg);
  nodata.textContent = "no face";
}

/** Update from a registration_pose_feedback payload, or clear with null. */
export function updateGauge(fb) {
  if (!svg) return;
  if (!fb) {
    for (const k of ["yaw", "pitch", "side"]) delete svg.dataset[k];
    target.setAttribute("visibility", "hidden");
    dot.setAttribute("visibility", "hidden");
    nodata.setAttribute("visibility", "hidden");
    return;
  }
  const [y0, y1] = fb.target_yaw || [0, 0], [p0, p1] = fb.target_pitch || [0, 0];
  // Widen the scale if a configured window lies beyond the default ±60° / ±45°.
  range = {
    yaw: Math.max(60, Math.abs(y0) + 10, Math.abs(y1) + 10),
    pitch: Math.max(45, Math.abs(p0) + 10, Math.abs(p1) + 10),
  };
  target.setAttribute("x", Math.min(x(y0), x(y1))); // x() runs right to left
  target.setAttribute("width", Math.abs(x(y1) - x(y0)));
  target.setAttribute("y", y(Math.max(p0, p1)));
  target.setAttribute("height", Math.abs(y(p0) - y(p1)));
  target.setAttribute("visibility", "visible");
  const has = typeof fb.yaw === "number" && typeof fb.pitch === "number";
  dot.setAttribute("visibility", has ? "visible" : "hidden");
  nodata.setAttribute("visibility", has ? "hidden" : "visible");
  if (has) {
    const cx = x(clamp(fb.yaw, -range.yaw, range.yaw));
    dot.setAttribute("cx", cx);
    dot.setAttribute("cy", y(clamp(fb.pitch, -range.pitch, range.pitch)));
    dot.classList.toggle("held", !!fb.held);
    svg.dataset.yaw = fb.yaw.toFixed(1);
    svg.dataset.pitch = fb.pitch.toFixed(1);
    svg.dataset.side = Math.abs(cx - W / 2) < 1 ? "centre" : cx > W / 2 ? "right" : "left";
  } else {
    for (const k of ["yaw", "pitch", "side"]) delete svg.dataset[k];
  }
  svg.dataset.held = String(!!fb.held);
}
