// legacygpu softmax / log-softmax / hardmax-free reductions along one axis of an
// (outer, len, inner) view. One work-group of WG items per (outer, inner) row.

#define WG 64

__kernel __attribute__((reqd_work_group_size(WG, 1, 1)))
void softmax(__global const float* x, __global float* y, int len, int inner, int log_mode) {
    int row = get_group_id(0);
    int lid = get_local_id(0);
    int o = row / inner, k = row % inner;
    __global const float* src = x + (long)o * len * inner + k;
    __global float* dst = y + (long)o * len * inner + k;
    __local float red[WG];
    float m = -INFINITY;
    for (int j = lid; j < len; j += WG) m = fmax(m, src[(long)j * inner]);
    red[lid] = m;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = WG / 2; s > 0; s >>= 1) {
        if (lid < s) red[lid] = fmax(red[lid], red[lid + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    m = red[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    float sum = 0.0f;
    for (int j = lid; j < len; j += WG) sum += exp(src[(long)j * inner] - m);
    red[lid] = sum;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = WG / 2; s > 0; s >>= 1) {
        if (lid < s) red[lid] += red[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    sum = red[0];
    if (log_mode) {
        float ls = log(sum);
        for (int j = lid; j < len; j += WG) dst[(long)j * inner] = src[(long)j * inner] - m - ls;
    } else {
        float inv = 1.0f / sum;
        for (int j = lid; j < len; j += WG) dst[(long)j * inner] = exp(src[(long)j * inner] - m) * inv;
    }
}
