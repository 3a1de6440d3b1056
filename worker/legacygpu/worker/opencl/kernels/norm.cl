// legacygpu normalisation and reduction kernels.

#define WG 64

// Reduce an (outer, len, inner) view along len. op: 0 sum 1 mean 2 max 3 min 4 prod
// 5 sum of squares 6 L2 norm 7 L1 norm 8 log-sum-exp. One work-item per (outer, inner).
__kernel void reduce_axis(__global const float* x, __global float* y, int outer, int len, int inner, int op) {
    int k = get_global_id(0);
    int o = get_global_id(1);
    if (k >= inner || o >= outer) return;
    __global const float* src = x + (long)o * len * inner + k;
    float acc = (op == 2) ? -INFINITY : (op == 3) ? INFINITY : (op == 4) ? 1.0f : 0.0f;
    float m = -INFINITY;
    if (op == 8) for (int j = 0; j < len; ++j) m = fmax(m, src[(long)j * inner]);
    for (int j = 0; j < len; ++j) {
        float v = src[(long)j * inner];
        switch (op) {
        case 2: acc = fmax(acc, v); break;
        case 3: acc = fmin(acc, v); break;
        case 4: acc *= v; break;
        case 5: case 6: acc = fma(v, v, acc); break;
        case 7: acc += fabs(v); break;
        case 8: acc += exp(v - m); break;
        default: acc += v;
        }
    }
    if (op == 1) acc /= (float)len;
    if (op == 6) acc = sqrt(acc);
    if (op == 8) acc = m + log(acc);
    y[o * inner + k] = acc;
}

// Layer normalisation over the last `cols` elements of each row: y = (x - mean) / sqrt(var + eps)
// * scale + bias; scale/bias have `cols` entries. One work-group per row; two passes (mean, then
// the variance of the centred values) so large means do not cancel.
__kernel __attribute__((reqd_work_group_size(WG, 1, 1)))
void layer_norm(__global const float* x, __global const float* scale, __global const float* bias,
                __global float* y, int cols, float eps, int has_bias) {
    int row = get_group_id(0);
    int lid = get_local_id(0);
    __global const float* src = x + (long)row * cols;
    __global float* dst = y + (long)row * cols;
    __local float red[WG];
    float a = 0.0f;
    for (int j = lid; j < cols; j += WG) a += src[j];
    red[lid] = a;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = WG / 2; s > 0; s >>= 1) {
        if (lid < s) red[lid] += red[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float mean = red[0] / (float)cols;
    barrier(CLK_LOCAL_MEM_FENCE);
    float b = 0.0f;
    for (int j = lid; j < cols; j += WG) { float d = src[j] - mean; b = fma(d, d, b); }
    red[lid] = b;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = WG / 2; s > 0; s >>= 1) {
        if (lid < s) red[lid] += red[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float inv = rsqrt(red[0] / (float)cols + eps);
    for (int j = lid; j < cols; j += WG) {
        float v = (src[j] - mean) * inv * scale[j];
        dst[j] = has_bias ? v + bias[j] : v;
    }
}
