// legacygpu element-wise kernels: unary functions (apply_act, common.cl) and broadcasting
// binary ops, each with an optional fused activation epilogue. float32, flat indexing.
//
// Binary op ids: 0 add 1 sub 2 mul 3 div 4 pow 5 max 6 min 7 prelu (a<0 ? a*b : a)
//   8 rsub (b-a) 9 rdiv (b/a) 10 rpow (b^a) 11 mod-float (fmod)

inline float apply_binary(float a, float b, int op) {
    switch (op) {
    case 0: return a + b;
    case 1: return a - b;
    case 2: return a * b;
    case 3: return a / b;
    case 4: return pow(a, b);
    case 5: return fmax(a, b);
    case 6: return fmin(a, b);
    case 7: return a < 0.0f ? a * b : a;
    case 8: return b - a;
    case 9: return b / a;
    case 10: return pow(b, a);
    case 11: return fmod(a, b);
    default: return a;
    }
}

__kernel void unary(__global const float* x, int x_off, __global float* y, int y_off, int n,
                    int act, float p0, float p1) {
    int i = get_global_id(0);
    if (i < n) y[y_off + i] = apply_act(x[x_off + i], act, p0, p1);
}

// b broadcast: b index = (i / inner) % bn  (bn == 1: scalar; inner == 1: trailing axis).
__kernel void binary_bcast(__global const float* a, int a_off, __global const float* b, int b_off,
                           __global float* y, int y_off, int n, int inner, int bn,
                           int op, int act, float p0, float p1) {
    int i = get_global_id(0);
    if (i >= n) return;
    int j = (i / inner) % bn;
    y[y_off + i] = apply_act(apply_binary(a[a_off + i], b[b_off + j], op), act, p0, p1);
}

// General broadcasting: meta = out dims[rank], a strides[rank], b strides[rank] (0 on broadcast axes).
__kernel void binary_strided(__global const float* a, int a_off, __global const float* b, int b_off,
                             __global float* y, int y_off, int n, int rank, __global const int* meta,
                             int op, int act, float p0, float p1) {
    int i = get_global_id(0);
    if (i >= n) return;
    int rem = i, ia = 0, ib = 0;
    for (int d = rank - 1; d >= 0; --d) {
        int dim = meta[d];
        int c = rem % dim;
        rem /= dim;
        ia += c * meta[rank + d];
        ib += c * meta[2 * rank + d];
    }
    y[y_off + i] = apply_act(apply_binary(a[a_off + ia], b[b_off + ib], op), act, p0, p1);
}

// y = act(x * scale[c] + shift[c]) with c = (i / inner) % channels (batch norm, per-channel affine).
__kernel void channel_affine(__global const float* x, __global const float* scale,
                             __global const float* shift, __global float* y, int n, int inner,
                             int channels, int act, float p0, float p1) {
    int i = get_global_id(0);
    if (i >= n) return;
    int c = (i / inner) % channels;
    y[i] = apply_act(fma(x[i], scale[c], shift[c]), act, p0, p1);
}

