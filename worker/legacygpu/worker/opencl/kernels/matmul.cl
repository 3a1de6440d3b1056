// legacygpu batched matrix multiply for two run-time operands (attention scores and the like):
// C[b] = alpha * A[b] @ B[b], with A, B addressed through strides so transposed or broadcast
// (stride 0) operands need no copy. 16x16 tiles staged in local memory.

#define TS 16

__kernel __attribute__((reqd_work_group_size(TS, TS, 1)))
void bmm(__global const float* A, __global const float* B, __global float* C,
         int M, int N, int K,
         int a_bs, int a_rs, int a_cs, int b_bs, int b_rs, int b_cs, float alpha) {
    int col = get_global_id(0);
    int row = get_global_id(1);
    int bat = get_global_id(2);
    int lc = get_local_id(0), lr = get_local_id(1);
    __local float As[TS][TS];
    __local float Bs[TS][TS + 1];
    __global const float* a = A + (long)bat * a_bs;
    __global const float* b = B + (long)bat * b_bs;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += TS) {
        int ka = k0 + lc, kb = k0 + lr;
        As[lr][lc] = (row < M && ka < K) ? a[(long)row * a_rs + (long)ka * a_cs] : 0.0f;
        Bs[lr][lc] = (col < N && kb < K) ? b[(long)kb * b_rs + (long)col * b_cs] : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < TS; ++kk) acc = fma(As[lr][kk], Bs[kk][lc], acc);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (row < M && col < N) C[((long)bat * M + row) * N + col] = alpha * acc;
}
