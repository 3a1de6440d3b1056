// legacygpu data-movement kernels: strided copies (transpose, slice, expand,
// layout changes), block copies (concat, split), gather and pad. float32.

// out[i] = in[in_off + sum_d coord_d(i) * stride_d]; meta = out dims[rank], in strides[rank].
// Strides may be 0 (expand) or negative (reversed slices).
__kernel void copy_strided(__global const float* in, int in_off, __global float* out, int out_off,
                           int n, int rank, __global const int* meta) {
    int i = get_global_id(0);
    if (i >= n) return;
    int rem = i, src = in_off;
    for (int d = rank - 1; d >= 0; --d) {
        int dim = meta[d];
        src += (rem % dim) * meta[rank + d];
        rem /= dim;
    }
    out[out_off + i] = in[src];
}

// Copy an (outer x cols) block into columns [col_off, col_off + cols) of an (outer x out_cols) matrix
// (concat) or out of one (split, with swap = 1).
__kernel void copy_block(__global const float* in, int in_off, __global float* out, int out_off,
                         int outer, int cols, int big_cols, int col_off, int swap) {
    int c = get_global_id(0);
    int o = get_global_id(1);
    if (c >= cols || o >= outer) return;
    if (swap)
        out[out_off + o * cols + c] = in[in_off + o * big_cols + col_off + c];
    else
        out[out_off + o * big_cols + col_off + c] = in[in_off + o * cols + c];
}

// out[o, j, k] = in[o, idx[j], k] with in viewed as (outer, axis_len, inner), idx already non-negative.
__kernel void gather(__global const float* in, __global const int* idx, __global float* out,
                     int outer, int axis_len, int n_idx, int inner) {
    int i = get_global_id(0);
    int total = outer * n_idx * inner;
    if (i >= total) return;
    int k = i % inner;
    int j = (i / inner) % n_idx;
    int o = i / (inner * n_idx);
    out[i] = in[(o * axis_len + idx[j]) * inner + k];
}

// Pad: meta = out dims[rank], in dims[rank], pads_begin[rank]. mode 0 constant, 1 edge, 2 reflect.
__kernel void pad(__global const float* in, __global float* out, int n, int rank,
                  __global const int* meta, int mode, float value) {
    int i = get_global_id(0);
    if (i >= n) return;
    int rem = i, src = 0, stride = 1, inside = 1;
    for (int d = rank - 1; d >= 0; --d) {
        int od = meta[d], id = meta[rank + d], pb = meta[2 * rank + d];
        int c = rem % od - pb;
        rem /= od;
        if (c < 0 || c >= id) {
            if (mode == 0) { inside = 0; }
            else if (mode == 1) { c = c < 0 ? 0 : id - 1; }
            else {
                int period = 2 * (id - 1);
                if (period == 0) c = 0;
                else {
                    c = c % period; if (c < 0) c += period;
                    if (c >= id) c = period - c;
                }
            }
        }
        src += c * stride;
        stride *= id;
    }
    out[i] = inside ? in[src] : value;
}
