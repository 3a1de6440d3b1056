// legacygpu Resize on channels-last (N, H, W, C) activations.
// coord mode: 0 half_pixel 1 asymmetric 2 align_corners 3 pytorch_half_pixel 4 tf_half_pixel_for_nn
// nearest mode: 0 round_prefer_floor 1 round_prefer_ceil 2 floor 3 ceil. mode: 0 nearest 1 linear.

inline float src_coord(int o, float scale, int in_len, int out_len, int cmode) {
    switch (cmode) {
    case 1: return (float)o / scale;
    case 2: return out_len > 1 ? (float)o * (float)(in_len - 1) / (float)(out_len - 1) : 0.0f;
    case 3: return out_len > 1 ? ((float)o + 0.5f) / scale - 0.5f : 0.0f;
    case 4: return ((float)o + 0.5f) / scale;
    default: return ((float)o + 0.5f) / scale - 0.5f;
    }
}

inline int nearest_index(float v, int nmode, int len) {
    int r;
    switch (nmode) {
    case 1: r = (v - floor(v) == 0.5f) ? (int)ceil(v) : (int)round(v); break;
    case 2: r = (int)floor(v); break;
    case 3: r = (int)ceil(v); break;
    default: r = (v - floor(v) == 0.5f) ? (int)floor(v) : (int)round(v);
    }
    return clamp(r, 0, len - 1);
}

__kernel void resize(__global const float* x, __global float* y, int N, int H, int W, int C,
                     int OH, int OW, float scale_h, float scale_w, int mode, int cmode, int nmode) {
    int c = get_global_id(0);
    int p = get_global_id(1);
    if (c >= C || p >= N * OH * OW) return;
    int n, oy, ox;
    split_pixel(p, OH, OW, &n, &oy, &ox);
    float fy = src_coord(oy, scale_h, H, OH, cmode);
    float fx = src_coord(ox, scale_w, W, OW, cmode);
    __global const float* img = x + (long)n * H * W * C + c;
    float v;
    if (mode == 0) {
        v = img[((long)nearest_index(fy, nmode, H) * W + nearest_index(fx, nmode, W)) * C];
    } else {
        fy = clamp(fy, 0.0f, (float)(H - 1));
        fx = clamp(fx, 0.0f, (float)(W - 1));
        int y0 = (int)floor(fy), x0 = (int)floor(fx);
        int y1 = min(y0 + 1, H - 1), x1 = min(x0 + 1, W - 1);
        float dy = fy - (float)y0, dx = fx - (float)x0;
        float a = img[((long)y0 * W + x0) * C], b = img[((long)y0 * W + x1) * C];
        float cc = img[((long)y1 * W + x0) * C], d = img[((long)y1 * W + x1) * C];
        v = (a * (1.0f - dx) + b * dx) * (1.0f - dy) + (cc * (1.0f - dx) + d * dx) * dy;
    }
    y[(long)p * C + c] = v;
}
