// legacygpu helpers shared by every kernel family: Programs prepends this file to each
// family's source (and to an override), so a family uses them without defining them.
//
// Unary / activation ids (ACT_*, graph.ACTIVATION_IDS), parameters p0/p1:
//   0 identity  1 relu  2 clip(p0,p1)  3 sigmoid  4 tanh  5 leaky_relu(p0)
//   6 hard_sigmoid(alpha p0, beta p1)  7 hard_swish  8 exp  9 log  10 sqrt
//   11 neg  12 abs  13 reciprocal  14 elu(p0)  15 softplus  16 erf
//   17 gelu(erf)  18 floor  19 ceil  20 sin  21 cos  22 selu(p0 alpha, p1 gamma)
//   23 softsign  24 round  25 sign  26 relu6  27 mish  28 not-used  29 celu(p0)

inline float apply_act(float x, int act, float p0, float p1) {
    switch (act) {
    case 0: return x;
    case 1: return fmax(x, 0.0f);
    case 2: return fmin(fmax(x, p0), p1);
    case 3: return 1.0f / (1.0f + exp(-x));
    case 4: return tanh(x);
    case 5: return x >= 0.0f ? x : p0 * x;
    case 6: return clamp(p0 * x + p1, 0.0f, 1.0f);
    case 7: return x * clamp(x / 6.0f + 0.5f, 0.0f, 1.0f);
    case 8: return exp(x);
    case 9: return log(x);
    case 10: return sqrt(x);
    case 11: return -x;
    case 12: return fabs(x);
    case 13: return 1.0f / x;
    case 14: return x >= 0.0f ? x : p0 * (exp(x) - 1.0f);
    case 15: return x > 20.0f ? x : log1p(exp(x));
    case 16: return erf(x);
    case 17: return 0.5f * x * (1.0f + erf(x * 0.70710678118654752f));
    case 18: return floor(x);
    case 19: return ceil(x);
    case 20: return sin(x);
    case 21: return cos(x);
    case 22: return x > 0.0f ? p1 * x : p1 * (p0 * exp(x) - p0);
    case 23: return x / (1.0f + fabs(x));
    case 24: return rint(x);
    case 25: return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
    case 26: return fmin(fmax(x, 0.0f), 6.0f);
    case 27: return x * tanh(x > 20.0f ? x : log1p(exp(x)));
    case 29: return fmax(x, 0.0f) + fmin(0.0f, p0 * (exp(x / p0) - 1.0f));
    default: return x;
    }
}

// (n, oy, ox) of output pixel p = (n * OH + oy) * OW + ox.
inline void split_pixel(int p, int OH, int OW, int* n, int* oy, int* ox) {
    int t = p / OW;
    *ox = p % OW;
    *oy = t % OH;
    *n = t / OH;
}
