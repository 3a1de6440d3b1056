// legacygpu pooling kernels on channels-last (N, H, W, C) activations; 1-D pooling uses H = 1.

// One work-item per output element (channel fastest). Padding cells never win a max.
__kernel void max_pool(__global const float* x, __global float* y, int N, int H, int W, int C,
                       int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW, int DH, int DW) {
    int c = get_global_id(0);
    int p = get_global_id(1);
    if (c >= C || p >= N * OH * OW) return;
    int n, oy, ox;
    split_pixel(p, OH, OW, &n, &oy, &ox);
    float acc = -INFINITY;
    for (int ky = 0; ky < KH; ++ky) {
        int iy = oy * SH - PH + ky * DH;
        if (iy < 0 || iy >= H) continue;
        for (int kx = 0; kx < KW; ++kx) {
            int ix = ox * SW - PW + kx * DW;
            if (ix < 0 || ix >= W) continue;
            acc = fmax(acc, x[((n * H + iy) * W + ix) * C + c]);
        }
    }
    y[(long)p * C + c] = acc;
}

// Average pooling. count_pad: 1 divides by the window clipped to the padded input (ONNX
// count_include_pad=1), 0 by the number of real input cells.
__kernel void avg_pool(__global const float* x, __global float* y, int N, int H, int W, int C,
                       int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW,
                       int PH_END, int PW_END, int count_pad) {
    int c = get_global_id(0);
    int p = get_global_id(1);
    if (c >= C || p >= N * OH * OW) return;
    int n, oy, ox;
    split_pixel(p, OH, OW, &n, &oy, &ox);
    int y0 = oy * SH - PH, x0 = ox * SW - PW;
    int y1 = min(y0 + KH, H + PH_END), x1 = min(x0 + KW, W + PW_END);
    int pool = (y1 - y0) * (x1 - x0);
    int ys = max(y0, 0), xs = max(x0, 0), ye = min(y1, H), xe = min(x1, W);
    float acc = 0.0f;
    for (int iy = ys; iy < ye; ++iy)
        for (int ix = xs; ix < xe; ++ix)
            acc += x[((n * H + iy) * W + ix) * C + c];
    int cnt = count_pad ? pool : (ye - ys) * (xe - xs);
    y[(long)p * C + c] = cnt > 0 ? acc / (float)cnt : 0.0f;
}

// Global average (mode 0) or max (mode 1) over the HW cells of each (n, c).
__kernel void global_pool(__global const float* x, __global float* y, int N, int HW, int C, int mode) {
    int c = get_global_id(0);
    int n = get_global_id(1);
    if (c >= C || n >= N) return;
    __global const float* src = x + (long)n * HW * C + c;
    float acc = mode ? -INFINITY : 0.0f;
    for (int i = 0; i < HW; ++i) {
        float v = src[(long)i * C];
        acc = mode ? fmax(acc, v) : acc + v;
    }
    y[n * C + c] = mode ? acc : acc / (float)HW;
}

// Local response normalisation across channels (channels-last: the window runs over c).
__kernel void lrn(__global const float* x, __global float* y, int total, int C, int size,
                  float alpha, float beta, float bias) {
    int i = get_global_id(0);
    if (i >= total) return;
    int c = i % C;
    int base = i - c;
    int lo = max(0, c - (size - 1) / 2), hi = min(C - 1, c + size / 2);
    float sq = 0.0f;
    for (int j = lo; j <= hi; ++j) { float v = x[base + j]; sq += v * v; }
    y[i] = x[i] / pow(bias + alpha / (float)size * sq, beta);
}
