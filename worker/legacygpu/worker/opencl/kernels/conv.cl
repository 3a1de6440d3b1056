// legacygpu convolution helpers, channels-last (N, H, W, C) activations.
// 1-D convolutions run as 2-D with H = 1.

// col[m, (ky * KW + kx) * CG + c] = x[n, oy*SH - PH + ky*DH, ox*SW - PW + kx*DW, C0 + c] (0 outside).
// m = (n * OH + oy) * OW + ox; one work-item per column element, columns fastest.
__kernel void im2col(__global const float* x, __global float* col, int m0, int rows,
                     int H, int W, int C, int OH, int OW, int KH, int KW,
                     int SH, int SW, int PH, int PW, int DH, int DW, int C0, int CG) {
    int k = get_global_id(0);
    int r = get_global_id(1);
    int K = KH * KW * CG;
    if (k >= K || r >= rows) return;
    int m = m0 + r;
    int c = k % CG;
    int kk = k / CG;
    int kx = kk % KW, ky = kk / KW;
    int ox = m % OW;
    int t = m / OW;
    int oy = t % OH;
    int n = t / OH;
    int iy = oy * SH - PH + ky * DH;
    int ix = ox * SW - PW + kx * DW;
    float v = 0.0f;
    if (iy >= 0 && iy < H && ix >= 0 && ix < W)
        v = x[((n * H + iy) * W + ix) * C + C0 + c];
    col[(long)r * K + k] = v;
}

// The same patch matrix, one work-item per (row, kernel tap) copying CG contiguous channels:
// on CPU devices (PoCL) this is 15-40x faster than one work-item per element; on GPUs the
// per-element form above keeps neighbouring work-items on neighbouring addresses.
__kernel void im2col_tap(__global const float* x, __global float* col, int m0, int rows,
                         int H, int W, int C, int OH, int OW, int KH, int KW,
                         int SH, int SW, int PH, int PW, int DH, int DW, int C0, int CG) {
    int tap = get_global_id(0);
    int r = get_global_id(1);
    if (tap >= KH * KW || r >= rows) return;
    int K = KH * KW * CG;
    int m = m0 + r;
    int kx = tap % KW, ky = tap / KW;
    int ox = m % OW;
    int t = m / OW;
    int oy = t % OH;
    int n = t / OH;
    int iy = oy * SH - PH + ky * DH;
    int ix = ox * SW - PW + kx * DW;
    __global float* dst = col + (long)r * K + tap * CG;
    if (iy >= 0 && iy < H && ix >= 0 && ix < W) {
        __global const float* src = x + ((long)(n * H + iy) * W + ix) * C + C0;
        for (int c = 0; c < CG; ++c) dst[c] = src[c];
    } else {
        for (int c = 0; c < CG; ++c) dst[c] = 0.0f;
    }
}

// Depthwise (group == in channels) convolution, channel multiplier MULT: out channel co reads
// input channel co / MULT. w is (KH, KW, COUT); one work-item per output element.
__kernel void depthwise(__global const float* x, __global const float* w, __global const float* bias,
                        __global float* y, int N, int H, int W, int C, int OH, int OW, int COUT,
                        int KH, int KW, int SH, int SW, int PH, int PW, int DH, int DW, int MULT,
                        int act, float p0, float p1) {
    int co = get_global_id(0);
    int p = get_global_id(1);
    if (co >= COUT || p >= N * OH * OW) return;
    int n, oy, ox;
    split_pixel(p, OH, OW, &n, &oy, &ox);
    int ci = co / MULT;
    float acc = bias[co];
    for (int ky = 0; ky < KH; ++ky) {
        int iy = oy * SH - PH + ky * DH;
        if (iy < 0 || iy >= H) continue;
        for (int kx = 0; kx < KW; ++kx) {
            int ix = ox * SW - PW + kx * DW;
            if (ix < 0 || ix >= W) continue;
            acc = fma(x[((n * H + iy) * W + ix) * C + ci], w[(ky * KW + kx) * COUT + co], acc);
        }
    }
    y[(long)p * COUT + co] = apply_act(acc, act, p0, p1);
}

// Depthwise convolution (multiplier 1), one work-item per output pixel running over all channels:
// on CPU devices the inner channel loops are contiguous and vectorise; GPUs use `depthwise`.
__kernel void depthwise_pixel(__global const float* x, __global const float* w, __global const float* bias,
                              __global float* y, int N, int H, int W, int C, int OH, int OW,
                              int KH, int KW, int SH, int SW, int PH, int PW, int DH, int DW,
                              int act, float p0, float p1) {
    int p = get_global_id(0);
    if (p >= N * OH * OW) return;
    int n, oy, ox;
    split_pixel(p, OH, OW, &n, &oy, &ox);
    __global float* dst = y + (long)p * C;
    for (int c = 0; c < C; ++c) dst[c] = bias[c];
    for (int ky = 0; ky < KH; ++ky) {
        int iy = oy * SH - PH + ky * DH;
        if (iy < 0 || iy >= H) continue;
        for (int kx = 0; kx < KW; ++kx) {
            int ix = ox * SW - PW + kx * DW;
            if (ix < 0 || ix >= W) continue;
            __global const float* src = x + ((long)(n * H + iy) * W + ix) * C;
            __global const float* wt = w + (ky * KW + kx) * C;
            for (int c = 0; c < C; ++c) dst[c] = fma(src[c], wt[c], dst[c]);
        }
    }
    if (act) for (int c = 0; c < C; ++c) dst[c] = apply_act(dst[c], act, p0, p1);
}

// Transposed convolution, gather form: col is (N*H*W, KH*KW*COUT) = x @ W; every output pixel sums
// the columns whose kernel tap lands on it, then adds bias and applies the activation.
__kernel void col2im_transposed(__global const float* col, __global const float* bias, __global float* y,
                                int N, int H, int W, int OH, int OW, int COUT, int KH, int KW,
                                int SH, int SW, int PH, int PW, int DH, int DW,
                                int act, float p0, float p1) {
    int co = get_global_id(0);
    int p = get_global_id(1);
    if (co >= COUT || p >= N * OH * OW) return;
    int n, oy, ox;
    split_pixel(p, OH, OW, &n, &oy, &ox);
    float acc = bias[co];
    int K = KH * KW * COUT;
    for (int ky = 0; ky < KH; ++ky) {
        int ty = oy + PH - ky * DH;
        if (ty < 0 || ty % SH) continue;
        int iy = ty / SH;
        if (iy >= H) continue;
        for (int kx = 0; kx < KW; ++kx) {
            int tx = ox + PW - kx * DW;
            if (tx < 0 || tx % SW) continue;
            int ix = tx / SW;
            if (ix >= W) continue;
            acc += col[(long)((n * H + iy) * W + ix) * K + (ky * KW + kx) * COUT + co];
        }
    }
    y[(long)p * COUT + co] = apply_act(acc, act, p0, p1);
}
