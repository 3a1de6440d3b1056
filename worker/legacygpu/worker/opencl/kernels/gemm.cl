// legacygpu SGEMM kernel family: C = act(alpha * A @ B + bias), row-major, float32.
//
// A is M x K (row stride LDA), B is K x N (row stride LDB), C is M x N (row
// stride LDC); transposes are handled by the host (packing). Any M, N, K:
// rows past M are clamped on load and skipped on store; K is consumed by an
// unrolled main loop plus a tail (or zero-filled local tiles); B has NB >= VW
// loadable columns (NB = N, or the padded width when the host padded B), and a
// vector that would cross NB is loaded shifted left to end at NB, its lanes
// mapped back in the epilogue, so edge work-items never read out of bounds.
//
// Compile-time parameters (all -D defines):
//   MWI   rows of C per work-item              MDIMC  work-group size along M
//   VW    vector width along N (1,2,4,8,16)    NWV    vectors of C per work-item along N
//   NDIMC work-group size along N              KU     unroll of the k loop
//   LOCAL 1: stage A and B tiles of KWG in local memory (GPU style), 0: read global (CPU style)
//   KWG   k tile when LOCAL=1                  STRN   1: a work-item's N vectors are NDIMC*VW apart
//   PA    1: A arrives packed in panels: [ceil(M/MWG)][K][MWG] (zero rows past M)
//   MFIRST 1: consecutive work-groups walk down M (sharing a B panel), 0: along N
//   PB    1: B arrives packed in panels: [N/NWG][K][NWG]; 0: B is K x N with stride LDB
//   TRANS 1: the epilogue can also apply sigmoid and tanh (see below); 0: piecewise-linear only
//   EDGE  1: N may not be a multiple of VW (vectors that straddle N are stored lane by lane);
//         0: the host guarantees N % VW == 0, so every vector is wholly inside N or wholly past it
//         (on llvmpipe the lane-by-lane store path, though never run, made the whole GEMM 2x slower)
// Run-time epilogue arguments: has_bias (0/1), act (numbered as in common.cl's apply_act: 0 none,
// 1 relu, 2 clip, 3 sigmoid, 4 tanh, 5 leaky_relu, 26 relu6) and lo, hi, slope: every activation
// but sigmoid and tanh is min(max(x, lo), hi) + slope * min(x, 0), with lo/hi/slope set by the host.

#ifndef MWI
#define MWI 4
#endif
#ifndef MDIMC
#define MDIMC 1
#endif
#ifndef VW
#define VW 8
#endif
#ifndef NWV
#define NWV 1
#endif
#ifndef NDIMC
#define NDIMC 8
#endif
#ifndef KU
#define KU 4
#endif
#ifndef LOCAL
#define LOCAL 0
#endif
#ifndef KWG
#define KWG 16
#endif
#ifndef STRN
#define STRN 0
#endif
#ifndef MFIRST
#define MFIRST 0
#endif
#if MFIRST
  #define GROUP_M get_group_id(0)
  #define GROUP_N get_group_id(1)
#else
  #define GROUP_M get_group_id(1)
  #define GROUP_N get_group_id(0)
#endif
#ifndef PA
#define PA 0
#endif
#ifndef PB
#define PB 0
#endif

#define MWG (MWI * MDIMC)
#define NWI (VW * NWV)
#define NWG (NWI * NDIMC)

#if VW == 1
  typedef float realV;
  #define LOADV(p) (*(p))
  #define STOREV(v, p) (*(p) = (v))
#elif VW == 2
  typedef float2 realV;
  #define LOADV(p) vload2(0, (p))
  #define STOREV(v, p) vstore2((v), 0, (p))
#elif VW == 4
  typedef float4 realV;
  #define LOADV(p) vload4(0, (p))
  #define STOREV(v, p) vstore4((v), 0, (p))
#elif VW == 8
  typedef float8 realV;
  #define LOADV(p) vload8(0, (p))
  #define STOREV(v, p) vstore8((v), 0, (p))
#elif VW == 16
  typedef float16 realV;
  #define LOADV(p) vload16(0, (p))
  #define STOREV(v, p) vstore16((v), 0, (p))
#else
  #error "VW must be 1, 2, 4, 8 or 16"
#endif

// Column offset (inside the work-group tile) of vector j of work-item lid_n.
#if STRN
  #define COL_IN_TILE(lid_n, j) ((j) * (NDIMC * VW) + (lid_n) * VW)
#else
  #define COL_IN_TILE(lid_n, j) ((lid_n) * NWI + (j) * VW)
#endif

// The epilogue's activation is a run-time argument (one program serves every piecewise-linear
// activation, which matters where each build costs seconds, as on PoCL). sigmoid and tanh are
// compiled in only with TRANS=1: on llvmpipe (rusticl 22.3) an exp() anywhere in the kernel, even
// behind a run-time branch that is never taken, halved the speed of the whole GEMM.
#ifndef TRANS
#define TRANS 0
#endif
#ifndef EDGE
#define EDGE 1
#endif
#if TRANS
  #define TRANSCENDENTAL(T)                                                   \
    if (act == 3) return (T)(1.0f) / ((T)(1.0f) + exp(-x));                   \
    if (act == 4) return tanh(x);
#else
  #define TRANSCENDENTAL(T)
#endif
#define DEFINE_ACTIVATE(NAME, T)                                              \
  inline T NAME(const T x, const int act, const float lo, const float hi,    \
                const float slope) {                                          \
    if (act == 0) return x;                                                   \
    TRANSCENDENTAL(T)                                                         \
    const T y = fmin(fmax(x, (T)(lo)), (T)(hi));                              \
    return slope != 0.0f ? y + (T)(slope) * fmin(x, (T)(0.0f)) : y;           \
  }
DEFINE_ACTIVATE(activate_v, realV)
DEFINE_ACTIVATE(activate_s, float)

__kernel __attribute__((reqd_work_group_size(NDIMC, MDIMC, 1)))
void gemm_nn(const int M, const int N, const int K, const int NB, const float alpha,
             const __global float* restrict A, const int a_off, const int lda,
             const __global float* restrict B, const int b_off, const int ldb,
             __global float* restrict C, const int c_off, const int ldc,
             const __global float* restrict bias, const int bias_off, const int has_bias,
             const int act, const float lo, const float hi, const float slope)
{
  const int lid_n = get_local_id(0);
  const int lid_m = get_local_id(1);
  const int tile_n = GROUP_N * NWG;
  const int tile_m = GROUP_M * MWG;
  const int m0 = tile_m + lid_m * MWI;
#if PA
  const __global float* a_base = A + a_off + GROUP_M * K * MWG;
  #define A_AT(mt, kg) a_base[(kg) * MWG + (mt)]
#else
  #define A_AT(mt, kg) A[a_off + min(tile_m + (mt), M - 1) * lda + (kg)]
#endif
#if PB
  const __global float* b_base = B + b_off + GROUP_N * K * NWG;
  const int b_stride = NWG;
#else
  const __global float* b_base = B + b_off + tile_n;
  const int b_stride = ldb;
#endif
  // Column (relative to the tile) where this work-item's vector j is loaded from.
  int bcol_of[NWV];
  #pragma unroll
  for (int j = 0; j < NWV; j++) {
#if PB
    bcol_of[j] = COL_IN_TILE(lid_n, j);
#else
    bcol_of[j] = min(tile_n + COL_IN_TILE(lid_n, j), NB - VW) - tile_n;
#endif
  }

  realV acc[MWI][NWV];
  #pragma unroll
  for (int i = 0; i < MWI; i++) {
    #pragma unroll
    for (int j = 0; j < NWV; j++) {
      acc[i][j] = (realV)(0.0f);
    }
  }

#if LOCAL
  // GPU style: the work-group stages a KWG-deep slab of A (transposed, so a
  // work-item's MWI rows are contiguous) and of B in local memory.
  __local float a_tile[KWG * MWG];
  __local float b_tile[KWG * NWG];
  const int tid = lid_m * NDIMC + lid_n;
  for (int k0 = 0; k0 < K; k0 += KWG) {
    for (int idx = tid; idx < KWG * MWG; idx += MDIMC * NDIMC) {
      const int kk = idx % KWG;
      const int mm = idx / KWG;
      const int kg = k0 + kk;
      a_tile[kk * MWG + mm] = (kg < K) ? A_AT(mm, kg) : 0.0f;
    }
    for (int idx = tid; idx < KWG * (NWG / VW); idx += MDIMC * NDIMC) {
      const int vv = idx % (NWG / VW);
      const int kk = idx / (NWG / VW);
      const int kg = k0 + kk;
      realV v = (realV)(0.0f);
      if (kg < K) {
#if PB
        v = LOADV(b_base + kg * b_stride + vv * VW);
#else
        v = LOADV(b_base + kg * b_stride + (min(tile_n + vv * VW, NB - VW) - tile_n));
#endif
      }
      STOREV(v, b_tile + kk * NWG + vv * VW);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    #pragma unroll KU
    for (int kk = 0; kk < KWG; kk++) {
      realV bv[NWV];
      #pragma unroll
      for (int j = 0; j < NWV; j++) {
        bv[j] = LOADV(b_tile + kk * NWG + COL_IN_TILE(lid_n, j));
      }
      #pragma unroll
      for (int i = 0; i < MWI; i++) {
        const float av = a_tile[kk * MWG + lid_m * MWI + i];
        #pragma unroll
        for (int j = 0; j < NWV; j++) {
          acc[i][j] = mad((realV)(av), bv[j], acc[i][j]);
        }
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
  }
#else
  // CPU style: every work-item streams its rows of A and its columns of B
  // straight from global memory (the caches do the tiling).
  const __global float* arow[MWI];
#if PA
  const int a_stride = MWG;
  #pragma unroll
  for (int i = 0; i < MWI; i++) {
    arow[i] = a_base + lid_m * MWI + i;
  }
#else
  const int a_stride = 1;
  #pragma unroll
  for (int i = 0; i < MWI; i++) {
    arow[i] = A + a_off + min(m0 + i, M - 1) * lda;
  }
#endif
  const __global float* bcol = b_base;
  int k = 0;
  for (; k + KU <= K; k += KU) {
    #pragma unroll
    for (int u = 0; u < KU; u++) {
      realV bv[NWV];
      #pragma unroll
      for (int j = 0; j < NWV; j++) {
        bv[j] = LOADV(bcol + (k + u) * b_stride + bcol_of[j]);
      }
      #pragma unroll
      for (int i = 0; i < MWI; i++) {
        const float av = arow[i][(k + u) * a_stride];
        #pragma unroll
        for (int j = 0; j < NWV; j++) {
          acc[i][j] = mad((realV)(av), bv[j], acc[i][j]);
        }
      }
    }
  }
  for (; k < K; k++) {
    realV bv[NWV];
    #pragma unroll
    for (int j = 0; j < NWV; j++) {
      bv[j] = LOADV(bcol + k * b_stride + bcol_of[j]);
    }
    #pragma unroll
    for (int i = 0; i < MWI; i++) {
      const float av = arow[i][k * a_stride];
      #pragma unroll
      for (int j = 0; j < NWV; j++) {
        acc[i][j] = mad((realV)(av), bv[j], acc[i][j]);
      }
    }
  }
#endif

  // Epilogue: scale, bias, activation, store (masked at the M and N edges).
  #pragma unroll
  for (int i = 0; i < MWI; i++) {
    const int m = m0 + i;
    if (m < M) {
      #pragma unroll
      for (int j = 0; j < NWV; j++) {
        const int n = tile_n + COL_IN_TILE(lid_n, j);  // first column this vector owns
        const int n_load = tile_n + bcol_of[j];          // first column it holds
        realV v = acc[i][j] * alpha;
        if (n_load == n && n + VW <= N) {
          if (has_bias) {
            v += LOADV(bias + bias_off + n);
          }
          v = activate_v(v, act, lo, hi, slope);
          STOREV(v, C + c_off + m * ldc + n);
        }
#if EDGE
        else {
          realV t = v;
          const float* lanes = (const float*)&t;
          for (int l = 0; l < VW; l++) {
            const int col = n_load + l;
            if (col >= n && col < N) {
              float s = lanes[l];
              if (has_bias) {
                s += bias[bias_off + col];
              }
              C[c_off + m * ldc + col] = activate_s(s, act, lo, hi, slope);
            }
          }
        }
#endif
      }
    }
  }
}

// Panel packing. X = op(src) is rows x cols (src is rows x ld, or with trans
// cols x ld and X = src^T). dst holds X in panels of `width` columns:
// dst[(c / width) * rows * width + r * width + c % width], zero for c >= cols.
// width == padded cols gives a plain zero-padded copy. One work-item copies
// one row of one panel: global size (panels, rows).
__kernel void gemm_pack(const int rows, const int cols,
                        const __global float* restrict src, const int src_off, const int ld,
                        const int trans, __global float* restrict dst, const int width)
{
  const int p = get_global_id(0);
  const int r = get_global_id(1);
  const int c0 = p * width;
  __global float* out = dst + ((size_t)p * rows + r) * width;
  const int n = clamp(cols - c0, 0, width);
  if (trans) {
    const __global float* in = src + src_off + (size_t)c0 * ld + r;
    for (int cc = 0; cc < n; cc++) {
      out[cc] = in[(size_t)cc * ld];
    }
  } else {
    const __global float* in = src + src_off + (size_t)r * ld + c0;
    for (int cc = 0; cc < n; cc++) {
      out[cc] = in[cc];
    }
  }
  for (int cc = n; cc < width; cc++) {
    out[cc] = 0.0f;
  }
}
