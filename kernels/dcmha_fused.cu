// Fused DCMHA attention forward (dcmha.md §1.3-§1.4, §4.4), bf16 in/out, fp32 accumulation,
// mma.sync m16n8k16 on the tensor cores. Design (docs/perf/dcmha_fused.md has the numbers):
//
// * One CTA per (batch, 16 query rows), all N heads; 16N threads = 4 key-warps x N/8 head-warps.
//   Key tiles of 32: warp (kw, hw) owns keys [8kw, 8kw+8) of the tile and heads [8hw, 8hw+8), so its
//   score fragments (8 heads x 4 cells per thread) share one cell layout across heads.
// * Compose per cell: each warp forms the partial head reads (sum over its 8 heads of a * X, I = 2,
//   query and key side: 4 floats per cell), the N/8 head-warps of a key slice add them through
//   shared memory, then each finishes the writes (b, gates) for its own heads in registers.
// * Pass 1: scores, pre-Compose, mask, per-head online row max/sum; reduced over the quad and the
//   4 key-warps into (m, 1/l) per (head, row) in shared memory.
// * Pass 2: recompute, pre-Compose, p = exp(z - m) / l exactly, post-Compose, P' (bf16) to shared
//   memory, O += P' V with each warp owning 2/G heads. G = D/64 head groups bound the output
//   accumulators to 64 fp32 per thread (pass 2 runs once per group).
// * Q sits in shared memory in mma fragment order; K and V fragments come straight from global memory
//   with 16-byte loads: the contraction index d of QK^T is permuted identically for Q and K, and V is
//   transposed in registers by movmatrix (its output columns come out in an order that makes the
//   final O store 16 bytes wide too). Masked key tiles are never visited (causal and local window).
#include "kernels/dcmha_fused.h"

#include <cuda_bf16.h>

#include <cstdint>
#include <cstdlib>

#include "kernels/cuda_common.cuh"

namespace dcf::cuda {
namespace {

constexpr int kBQ = 16;  // query rows per CTA
constexpr int kBK = 32;  // keys per tile
constexpr int kI = 2;    // Compose rank

struct FusedArgs {
  const bf16 *q, *k, *v, *dw;
  bf16* o;
  int T, S, q_pos0, window;
};

__device__ __forceinline__ void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t mov_trans(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

__device__ __forceinline__ uint4 ldg16(const bf16* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
__device__ __forceinline__ uint4 lds16(const uint16_t* p) { return *reinterpret_cast<const uint4*>(p); }

__device__ __forceinline__ void unpack8(const uint4& u, float (&f)[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

__device__ __forceinline__ uint32_t comp(const uint4& u, int i) {
  return i == 0 ? u.x : i == 1 ? u.y : i == 2 ? u.z : u.w;
}

template <int N, int D, int G>
struct Cfg {
  static constexpr int H = N / 8;          // head-warps per key slice (8 heads each)
  static constexpr int NW = 4 * H;         // warps
  static constexpr int THREADS = 32 * NW;  // = 16 N
  static constexpr int WN = (2 * kI + 1) * N;
  static constexpr int WS = WN + 8;  // staged weight row stride (bf16): an odd number of 16-byte slots
  static constexpr int NC = D / 32;  // 32-wide chunks of d
  static constexpr int NG = N / G;   // heads per output group
  static constexpr int HPW = NG / NW;
  static_assert(N % 8 == 0 && NG % 8 == 0 && HPW >= 1 && NG % NW == 0, "fused dcmha config");
  static constexpr int Q_BYTES = N * NC * 2 * 32 * 16;
  static constexpr int QW_BYTES = 2 * kBQ * WS * 2;
  static constexpr int KW_BYTES = 2 * kBK * WS * 2;
  static constexpr int RED_BYTES = NW * 32 * 16 * 4;
  static constexpr int PART_BYTES = 4 * N * kBQ * 8;  // pass-1 partial statistics, aliases RED
  static constexpr int RED_U = RED_BYTES > PART_BYTES ? RED_BYTES : PART_BYTES;
  static constexpr int P_BYTES = NG * 4 * 32 * 8;
  static constexpr int ST_BYTES = N * kBQ * 8;
  static constexpr int OFF_QW = Q_BYTES;
  static constexpr int OFF_KW = OFF_QW + QW_BYTES;
  static constexpr int OFF_RED = OFF_KW + KW_BYTES;
  static constexpr int OFF_P = OFF_RED + RED_U;
  static constexpr int OFF_ST = OFF_P + P_BYTES;
  static constexpr int SMEM = OFF_ST + ST_BYTES;
};

__device__ __forceinline__ bool allowed(int tpos, int s, int window) {
  return s <= tpos && (window == 0 || tpos - s < window);
}

template <int N, int D, int G, int MINB>
__global__ void __launch_bounds__(16 * N, MINB) dcmha_fused_fwd_kernel(FusedArgs a) {
  using C = Cfg<N, D, G>;
  constexpr int NC = C::NC, WS = C::WS, THREADS = C::THREADS;
  constexpr int64_t WN = C::WN;
  constexpr int QP = C::WN / 8;  // 16-byte pieces of one token's branch weights
  extern __shared__ __align__(16) unsigned char smem[];
  uint4* Qs = reinterpret_cast<uint4*>(smem);                           // [N][NC][2][32]
  uint16_t* qw = reinterpret_cast<uint16_t*>(smem + C::OFF_QW);         // [2][kBQ][WS] branches 0, 2
  uint16_t* kw = reinterpret_cast<uint16_t*>(smem + C::OFF_KW);         // [2][kBK][WS] branches 1, 3
  float* red = reinterpret_cast<float*>(smem + C::OFF_RED);             // [NW][32][16]
  float2* part = reinterpret_cast<float2*>(smem + C::OFF_RED);          // [4][N][kBQ]
  uint2* Pb = reinterpret_cast<uint2*>(smem + C::OFF_P);                // [NG][4][32]
  float2* st = reinterpret_cast<float2*>(smem + C::OFF_ST);             // [N][kBQ]: (m, 1/l)

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int kwp = warp & 3, hw = warp >> 2;
  const int g = lane >> 2, c = lane & 3;
  const int b = blockIdx.y;
  const int t0 = (gridDim.x - 1 - blockIdx.x) * kBQ;  // heaviest (causal) tiles first
  const int T = a.T, S = a.S, W = a.window;
  const bf16* dwb = a.dw + int64_t(b) * S * 4 * WN;

  // ---- stage Q (fragment order) and the query-side weights of branches 0 and 2.
  for (int idx = tid; idx < N * NC * 64; idx += THREADS) {
    const int l = idx & 31, half = (idx >> 5) & 1, nj = idx >> 6, n = nj / NC, j = nj % NC;
    const int t = min(t0 + (l >> 2) + 8 * half, T - 1);
    Qs[idx] = ldg16(a.q + ((int64_t(b) * T + t) * N + n) * D + 32 * j + 8 * (l & 3));
  }
  for (int idx = tid; idx < 2 * kBQ * QP; idx += THREADS) {
    const int p = idx % QP, rr = idx / QP, row = rr % kBQ, br = rr / kBQ;
    const int64_t tpos = a.q_pos0 + min(t0 + row, T - 1);
    *reinterpret_cast<uint4*>(qw + (br * kBQ + row) * WS + 8 * p) =
        ldg16(dwb + (tpos * 4 + (br ? 2 : 0)) * WN + 8 * p);
  }
  const int tp[2] = {a.q_pos0 + min(t0 + g, T - 1), a.q_pos0 + min(t0 + g + 8, T - 1)};
  const int pfirst = a.q_pos0 + t0, plast = a.q_pos0 + min(t0 + kBQ - 1, T - 1);
  const int klo = W ? max(0, pfirst - W + 1) : 0;
  const int khi = min(S - 1, plast);
  const int kstart = klo & ~(kBK - 1);

  auto stage_kw = [&](int kb, int nbr) {
    for (int idx = tid; idx < nbr * kBK * QP; idx += THREADS) {
      const int p = idx % QP, rr = idx / QP, key = rr % kBK, br = rr / kBK;
      const int s = kb + key;
      uint4 val = make_uint4(0, 0, 0, 0);
      if (s < S) val = ldg16(dwb + (int64_t(s) * 4 + (br ? 3 : 1)) * WN + 8 * p);
      *reinterpret_cast<uint4*>(kw + (br * kBK + key) * WS + 8 * p) = val;
    }
  };

  float sc[8][4];  // [own head][cell]: cells (g, 2c), (g, 2c+1), (g+8, 2c), (g+8, 2c+1) of this warp's keys
  auto scores = [&](int kb) {
    const int key = min(kb + 8 * kwp + g, S - 1);  // keys past S are masked; clamping keeps loads in bounds
    const bf16* kp = a.k + ((int64_t(b) * S + key) * N + 8 * hw) * D + 8 * c;
#pragma unroll
    for (int h = 0; h < 8; ++h) {
      sc[h][0] = sc[h][1] = sc[h][2] = sc[h][3] = 0.f;
#pragma unroll
      for (int j = 0; j < NC; ++j) {
        const uint4 kk = ldg16(kp + h * D + 32 * j);
        const uint4 qa = Qs[(((8 * hw + h) * NC + j) * 2 + 0) * 32 + lane];
        const uint4 qb = Qs[(((8 * hw + h) * NC + j) * 2 + 1) * 32 + lane];
        mma_bf16(sc[h], qa.x, qb.x, qa.y, qb.y, kk.x, kk.y);
        mma_bf16(sc[h], qa.z, qb.z, qa.w, qb.w, kk.z, kk.w);
      }
    }
  };

  // Partial reads of one Compose over this warp's 8 heads -> red[warp][lane][e * 4 + r * 2 + {q, k}].
  auto partial_reads = [&](int slot) {
    float hp[16];
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
      const uint16_t* wq = qw + (slot * kBQ + g + 8 * ri) * WS + 8 * hw;
#pragma unroll
      for (int r = 0; r < kI; ++r) {
        float aw[8];
        unpack8(lds16(wq + r * N), aw);
#pragma unroll
        for (int ci = 0; ci < 2; ++ci) {
          float s = 0.f;
#pragma unroll
          for (int h = 0; h < 8; ++h) s = fmaf(aw[h], sc[h][2 * ri + ci], s);
          hp[(2 * ri + ci) * 4 + r * 2 + 0] = s;
        }
      }
    }
#pragma unroll
    for (int ci = 0; ci < 2; ++ci) {
      const uint16_t* wk = kw + (slot * kBK + 8 * kwp + 2 * c + ci) * WS + 8 * hw;
#pragma unroll
      for (int r = 0; r < kI; ++r) {
        float aw[8];
        unpack8(lds16(wk + r * N), aw);
#pragma unroll
        for (int ri = 0; ri < 2; ++ri) {
          float s = 0.f;
#pragma unroll
          for (int h = 0; h < 8; ++h) s = fmaf(aw[h], sc[h][2 * ri + ci], s);
          hp[(2 * ri + ci) * 4 + r * 2 + 1] = s;
        }
      }
    }
    float4* dst = reinterpret_cast<float4*>(red + (warp * 32 + lane) * 16);
#pragma unroll
    for (int i = 0; i < 4; ++i) dst[i] = make_float4(hp[4 * i], hp[4 * i + 1], hp[4 * i + 2], hp[4 * i + 3]);
  };
  // Sum of the partial reads over the head-warps of this key slice.
  auto total_reads = [&](float (&tot)[16]) {
#pragma unroll
    for (int i = 0; i < 16; ++i) tot[i] = 0.f;
#pragma unroll
    for (int h2 = 0; h2 < C::H; ++h2) {
      const float4* src = reinterpret_cast<const float4*>(red + ((h2 * 4 + kwp) * 32 + lane) * 16);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float4 v = src[i];
        tot[4 * i] += v.x;
        tot[4 * i + 1] += v.y;
        tot[4 * i + 2] += v.z;
        tot[4 * i + 3] += v.w;
      }
    }
  };
  // Writes of one Compose for this warp's heads, in place on sc.
  auto finish = [&](int slot, const float (&tot)[16]) {
#pragma unroll
    for (int ci = 0; ci < 2; ++ci) {
      const uint16_t* wk = kw + (slot * kBK + 8 * kwp + 2 * c + ci) * WS + 8 * hw;
      float bk0[8], bk1[8], gk[8];
      unpack8(lds16(wk + 2 * N), bk0);
      unpack8(lds16(wk + 3 * N), bk1);
      unpack8(lds16(wk + 4 * N), gk);
#pragma unroll
      for (int ri = 0; ri < 2; ++ri) {
        const uint16_t* wq = qw + (slot * kBQ + g + 8 * ri) * WS + 8 * hw;
        float bq0[8], bq1[8], gq[8];
        unpack8(lds16(wq + 2 * N), bq0);
        unpack8(lds16(wq + 3 * N), bq1);
        unpack8(lds16(wq + 4 * N), gq);
        const int e = 2 * ri + ci;
        const float hq0 = tot[e * 4 + 0], hk0 = tot[e * 4 + 1], hq1 = tot[e * 4 + 2], hk1 = tot[e * 4 + 3];
#pragma unroll
        for (int h = 0; h < 8; ++h) {
          float y = sc[h][e] * (1.f + gq[h] + gk[h]);
          y = fmaf(bq0[h], hq0, y);
          y = fmaf(bq1[h], hq1, y);
          y = fmaf(bk0[h], hk0, y);
          y = fmaf(bk1[h], hk1, y);
          sc[h][e] = y;
        }
      }
    }
  };
  auto cell_ok = [&](int kb, int e) { return allowed(tp[e >> 1], kb + 8 * kwp + 2 * c + (e & 1), W); };

  // ---- pass 1: per-head row max and sum of the pre-Composed, masked logits.
  float mrow[8][2], lrow[8][2];
#pragma unroll
  for (int h = 0; h < 8; ++h)
    for (int ri = 0; ri < 2; ++ri) mrow[h][ri] = -INFINITY, lrow[h][ri] = 0.f;
  for (int kb = kstart; kb <= khi; kb += kBK) {
    __syncthreads();
    stage_kw(kb, 1);
    __syncthreads();
    scores(kb);
    partial_reads(0);
    __syncthreads();
    float tot[16];
    total_reads(tot);
    finish(0, tot);
    bool ok[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) ok[e] = cell_ok(kb, e);
#pragma unroll
    for (int h = 0; h < 8; ++h)
#pragma unroll
      for (int ri = 0; ri < 2; ++ri) {
        const float z0 = ok[2 * ri] ? sc[h][2 * ri] : -INFINITY, z1 = ok[2 * ri + 1] ? sc[h][2 * ri + 1] : -INFINITY;
        const float mx = fmaxf(z0, z1);
        if (mx == -INFINITY) continue;
        const float mn = fmaxf(mrow[h][ri], mx);
        lrow[h][ri] = lrow[h][ri] * __expf(mrow[h][ri] - mn) + __expf(z0 - mn) + __expf(z1 - mn);
        mrow[h][ri] = mn;
      }
  }
  __syncthreads();  // red is reused as part below
#pragma unroll
  for (int h = 0; h < 8; ++h)
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
      float m = mrow[h][ri], l = lrow[h][ri];
#pragma unroll
      for (int off = 1; off <= 2; off <<= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, off), l2 = __shfl_xor_sync(0xffffffffu, l, off);
        const float M = fmaxf(m, m2);
        l = M == -INFINITY ? 0.f : l * __expf(m - M) + l2 * __expf(m2 - M);
        m = M;
      }
      if (c == 0) part[(kwp * N + 8 * hw + h) * kBQ + g + 8 * ri] = make_float2(m, l);
    }
  __syncthreads();
  for (int idx = tid; idx < N * kBQ; idx += THREADS) {
    float M = -INFINITY;
#pragma unroll
    for (int k4 = 0; k4 < 4; ++k4) M = fmaxf(M, part[k4 * N * kBQ + idx].x);
    float L = 0.f;
#pragma unroll
    for (int k4 = 0; k4 < 4; ++k4) {
      const float2 p = part[k4 * N * kBQ + idx];
      if (p.x != -INFINITY) L += p.y * __expf(p.x - M);
    }
    st[idx] = make_float2(M, L > 0.f ? 1.f / L : 0.f);
  }

  // ---- pass 2 (once per head group): recompute, normalise, post-Compose, O += P' V.
  for (int gi = 0; gi < G; ++gi) {
    float acc[C::HPW][NC][4][4];
#pragma unroll
    for (int hh = 0; hh < C::HPW; ++hh)
#pragma unroll
      for (int j = 0; j < NC; ++j)
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) acc[hh][j][jj][0] = acc[hh][j][jj][1] = acc[hh][j][jj][2] = acc[hh][j][jj][3] = 0.f;
    const bool in_group = (8 * hw) / C::NG == gi;
    for (int kb = kstart; kb <= khi; kb += kBK) {
      __syncthreads();
      stage_kw(kb, 2);
      __syncthreads();
      scores(kb);
      partial_reads(0);
      __syncthreads();
      float tot[16];
      total_reads(tot);
      finish(0, tot);
      bool ok[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) ok[e] = cell_ok(kb, e);
#pragma unroll
      for (int h = 0; h < 8; ++h)
#pragma unroll
        for (int ri = 0; ri < 2; ++ri) {
          const float2 ml = st[(8 * hw + h) * kBQ + g + 8 * ri];
#pragma unroll
          for (int ci = 0; ci < 2; ++ci) {
            const int e = 2 * ri + ci;
            sc[h][e] = ok[e] ? __expf(sc[h][e] - ml.x) * ml.y : 0.f;
          }
        }
      __syncthreads();  // everyone has read red
      partial_reads(1);
      __syncthreads();
      total_reads(tot);
      if (in_group) {
        finish(1, tot);
#pragma unroll
        for (int h = 0; h < 8; ++h) {
          const int ml = 8 * hw + h - gi * C::NG;
          Pb[(ml * 4 + kwp) * 32 + lane] =
              make_uint2(pack_bf16(sc[h][0], sc[h][1]), pack_bf16(sc[h][2], sc[h][3]));
        }
      }
      __syncthreads();
#pragma unroll
      for (int hh = 0; hh < C::HPW; ++hh) {
        const int ml = warp * C::HPW + hh, m = gi * C::NG + ml;
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
          const uint2 pa = Pb[(ml * 4 + 2 * kk) * 32 + lane], pb = Pb[(ml * 4 + 2 * kk + 1) * 32 + lane];
          const int keyA = min(kb + 16 * kk + g, S - 1), keyB = min(kb + 16 * kk + 8 + g, S - 1);
          const bf16* va_p = a.v + ((int64_t(b) * S + keyA) * N + m) * D + 8 * c;
          const bf16* vb_p = a.v + ((int64_t(b) * S + keyB) * N + m) * D + 8 * c;
#pragma unroll
          for (int j = 0; j < NC; ++j) {
            const uint4 va = ldg16(va_p + 32 * j), vb = ldg16(vb_p + 32 * j);
#pragma unroll
            for (int jj = 0; jj < 4; ++jj)
              mma_bf16(acc[hh][j][jj], pa.x, pa.y, pb.x, pb.y, mov_trans(comp(va, jj)), mov_trans(comp(vb, jj)));
          }
        }
      }
    }
    // O columns of n8 tile (j, jj), fragment columns 2c, 2c+1, are d = 32 j + 8 c + 2 jj + {0, 1}.
#pragma unroll
    for (int hh = 0; hh < C::HPW; ++hh) {
      const int m = gi * C::NG + warp * C::HPW + hh;
#pragma unroll
      for (int ri = 0; ri < 2; ++ri) {
        const int t = t0 + g + 8 * ri;
        if (t >= T) continue;
        bf16* op = a.o + ((int64_t(b) * T + t) * N + m) * D + 8 * c;
#pragma unroll
        for (int j = 0; j < NC; ++j) {
          uint4 out;
          out.x = pack_bf16(acc[hh][j][0][2 * ri], acc[hh][j][0][2 * ri + 1]);
          out.y = pack_bf16(acc[hh][j][1][2 * ri], acc[hh][j][1][2 * ri + 1]);
          out.z = pack_bf16(acc[hh][j][2][2 * ri], acc[hh][j][2][2 * ri + 1]);
          out.w = pack_bf16(acc[hh][j][3][2 * ri], acc[hh][j][3][2 * ri + 1]);
          *reinterpret_cast<uint4*>(op + 32 * j) = out;
        }
      }
    }
  }
}

template <int N, int D, int G, int MINB = 1>
void launch(const FusedArgs& a, int B, cudaStream_t st) {
  using C = Cfg<N, D, G>;
  auto kern = dcmha_fused_fwd_kernel<N, D, G, MINB>;
  DCF_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM));
  dim3 grid(unsigned((a.T + kBQ - 1) / kBQ), unsigned(B));
  kern<<<grid, C::THREADS, C::SMEM, st>>>(a);
  DCF_CUDA_LAUNCH_CHECK();
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

bool dcmha_fused_supported(const DcmhaShape& sh, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dw,
                           const Tensor& o, std::string* why) {
  auto no = [&](const char* r) {
    if (why) *why = r;
    return false;
  };
  if (q.dtype() != DType::bf16) return no("dtype is not bf16");
  if (!sh.compose) return no("compose off");
  if (sh.I != kI) return no("I != 2");
  if (sh.N != 16 && sh.N != 32) return no("N not in {16, 32}");
  if (sh.D != 64 && sh.D != 128) return no("D not in {64, 128}");
  if (sh.S >= (int64_t(1) << 30) || sh.B > 65535) return no("S or B too large");
  if (!dw.defined() || !aligned16(q.raw()) || !aligned16(k.raw()) || !aligned16(v.raw()) ||
      !aligned16(dw.raw()) || !aligned16(o.raw()))
    return no("pointers not 16-byte aligned");
  return true;
}

void dcmha_fused_forward(const DcmhaShape& sh, const void* q, const void* k, const void* v, const void* dw, void* o,
                         cudaStream_t st) {
  FusedArgs a;
  a.q = static_cast<const bf16*>(q);
  a.k = static_cast<const bf16*>(k);
  a.v = static_cast<const bf16*>(v);
  a.dw = static_cast<const bf16*>(dw);
  a.o = static_cast<bf16*>(o);
  a.T = int(sh.T);
  a.S = int(sh.S);
  a.q_pos0 = int(sh.q_pos0);
  a.window = int(sh.window);
  const int B = int(sh.B);
  // N = 16, D = 64 runs capped at 128 registers for two CTAs per SM (452 B of spills), 10-22 % faster
  // than one CTA at 228 registers (docs/perf/dcmha_fused.md, F1 vs F2). DCF_DCMHA_FUSED_OCC=1 (read at
  // every call) selects the one-CTA build, for timing the trade-off.
  const char* occ = std::getenv("DCF_DCMHA_FUSED_OCC");
  if (sh.N == 16 && sh.D == 64 && occ && occ[0] == '1') launch<16, 64, 1, 1>(a, B, st);
  else if (sh.N == 16 && sh.D == 64) launch<16, 64, 1, 2>(a, B, st);
  else if (sh.N == 16 && sh.D == 128) launch<16, 128, 2>(a, B, st);
  else if (sh.N == 32 && sh.D == 64) launch<32, 64, 1>(a, B, st);
  else if (sh.N == 32 && sh.D == 128) launch<32, 128, 2>(a, B, st);
  else DCF_CHECK(false, "dcmha_fused_forward: unsupported N=", sh.N, " D=", sh.D);
}

}  // namespace dcf::cuda
