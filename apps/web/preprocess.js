// Image preprocessing as the export's preprocess.json declares, computing the same bytes as
// Pillow (what edgevl's reference uses): Pillow's separable resampling with its fixed-point
// 8-bit arithmetic (horizontal pass, then vertical, each rounded to uint8), torchvision's
// center-crop rounding, then (x / 255 - mean) / std in float32, CHW.
// Pillow: src/libImaging/Resample.c (precompute_coeffs, normalize_coeffs_8bpc, ImagingResample*).

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 2 ** PRECISION_BITS;

const FILTERS = {
  bilinear: { support: 1.0, f: (x) => { x = Math.abs(x); return x < 1.0 ? 1.0 - x : 0.0; } },
  bicubic: {
    support: 2.0,
    f: (x) => {
      const a = -0.5;
      x = Math.abs(x);
      if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
      if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
      return 0.0;
    },
  },
  lanczos: {
    support: 3.0,
    f: (x) => {
      const sinc = (v) => { if (v === 0.0) return 1.0; v *= Math.PI; return Math.sin(v) / v; };
      return -3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0;
    },
  },
};

// Integer weights and source bounds of each output pixel along one axis (Pillow's precompute_coeffs).
function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    const k = new Float64Array(xmax);
    for (let x = 0; x < xmax; x++) {
      const w = filter.f((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0.0 ? k[x] / ww : k[x];
      // normalize_coeffs_8bpc: round half away from zero, then C's truncating cast.
      weights[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * ONE) : Math.trunc(0.5 + v * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, weights };
}

function clip8(ss) {
  if (ss >= ONE * 256) return 255;
  if (ss <= 0) return 0;
  return Math.floor(ss / ONE);
}

// One separable pass over RGB rows; `horizontal` resamples along x, else along y.
function pass(src, width, height, outSize, filter, horizontal) {
  const { ksize, bounds, weights } = coefficients(horizontal ? width : height, outSize, filter);
  const outW = horizontal ? outSize : width;
  const outH = horizontal ? height : outSize;
  const out = new Uint8Array(outW * outH * 3);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      const i = horizontal ? x : y;
      const min = bounds[i * 2];
      const n = bounds[i * 2 + 1];
      for (let c = 0; c < 3; c++) {
        let ss = ONE / 2;
        for (let t = 0; t < n; t++) {
          const p = horizontal ? (y * width + min + t) * 3 + c : ((min + t) * width + x) * 3 + c;
          ss += src[p] * weights[i * ksize + t];
        }
        out[(y * outW + x) * 3 + c] = clip8(ss);
      }
    }
  }
  return out;
}

// Pillow's Image.resize for an 8-bit RGB image (`rgb`: Uint8Array, row-major, 3 bytes a pixel).
export function resize(rgb, width, height, newWidth, newHeight, interpolation) {
  const filter = FILTERS[interpolation];
  if (!filter) throw new Error(`interpolation ${interpolation} is not implemented here; use bilinear, bicubic or lanczos`);
  let data = rgb;
  let w = width;
  if (newWidth !== width) {
    data = pass(data, w, height, newWidth, filter, true);
    w = newWidth;
  }
  if (newHeight !== height) data = pass(data, w, height, newHeight, filter, false);
  return data;
}

// Resized and center-cropped RGB bytes ([crop, crop, 3]) of an image, as preprocess.json says.
export function cropRgb(rgb, width, height, pre) {
  let newW;
  let newH;
  if (pre.resize_mode === "squash") {
    newW = pre.resize;
    newH = pre.resize;
  } else if (pre.resize_mode === "shortest_edge") {
    // Python's int(): truncation, as the reference.
    if (width <= height) { newW = pre.resize; newH = Math.trunc((pre.resize * height) / width); }
    else { newW = Math.trunc((pre.resize * width) / height); newH = pre.resize; }
  } else {
    throw new Error(`resize_mode ${pre.resize_mode} is not implemented here; use shortest_edge or squash`);
  }
  const resized = newW === width && newH === height ? rgb : resize(rgb, width, height, newW, newH, pre.interpolation);
  // torchvision's rounding: Python's round() halves to even.
  const roundHalfEven = (v) => { const f = Math.floor(v); const d = v - f; return d > 0.5 || (d === 0.5 && f % 2 !== 0) ? f + 1 : f; };
  const top = roundHalfEven((newH - pre.crop) / 2.0);
  const left = roundHalfEven((newW - pre.crop) / 2.0);
  const out = new Uint8Array(pre.crop * pre.crop * 3);
  for (let y = 0; y < pre.crop; y++) {
    const from = ((top + y) * newW + left) * 3;
    out.set(resized.subarray(from, from + pre.crop * 3), y * pre.crop * 3);
  }
  return out;
}

// uint8 [H, W, 3] -> float32 [3, H, W]: (x / 255 - mean) / std, each step rounded to float32 as numpy does.
export function normalise(crop, side, pre) {
  const f = Math.fround;
  const out = new Float32Array(3 * side * side);
  for (let c = 0; c < 3; c++) {
    const mean = f(pre.mean[c]);
    const std = f(pre.std[c]);
    for (let i = 0; i < side * side; i++) out[c * side * side + i] = f(f(f(crop[i * 3 + c] / 255) - mean) / std);
  }
  return out;
}

// RGBA pixels (canvas ImageData) -> RGB bytes.
export function rgbaToRgb(rgba) {
  const out = new Uint8Array((rgba.length / 4) * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    out[j] = rgba[i];
    out[j + 1] = rgba[i + 1];
    out[j + 2] = rgba[i + 2];
  }
  return out;
}
