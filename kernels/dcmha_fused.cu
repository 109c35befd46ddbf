// Fused DCMHA attention forward (dcmha.md §1.3-§1.4, §4.4), bf16 in/out, fp32 accumulation,
// mma.sync m16n8k16 on the tensor cores. Design (docs/perf/dcmha_fused.md has the numbers):
//
// * One CTA per (batch, 16 query rows), all N heads; 16N threads = 4 key-warps x N/8 head-warps.
//   Key tiles of 32: warp (kw, hw) owns keys [8kw, 8kw+8) of the tile and heads [8hw, 8hw+8), so its
//   score fragments (8 heads x 4 cells per thread) share one cell layout across heads.
// * Compose per cell: each warp forms the partial head reads (sum over its 8 heads of a * X, I = 2,
//   query and key side: 4 floats per cell), the N/8 head-warps of a key slice add them through
//   shared memory ([warp][cell][lane] float4, bank-conflict free; two buffers alternate between
//   consecutive Composes where shared memory allows, so each Compose costs one barrier, a named
//   barrier of the key slice's head-warps only), then each finishes the writes (b, gates) for its own
//   heads in registers.
// * Key tiles run through for_key_tiles (one or two barriers per tile; optional cp.async prefetch of
//   the next tile's key-side weights).
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

#include <cuda.h>  // CUtensorMap (the driver's encoder is reached through the runtime, see encode_ws_map)
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/grid_order.h"
#include "kernels/tensor.h"

#ifndef DCF_KERNEL_TIMING_BUILDS
#define DCF_KERNEL_TIMING_BUILDS 0
#endif
// The N32 builds: 1 = the head split over 2-CTA clusters (SPL) is the default and the one-CTA build of
// 512 threads a timing-only build; 0 = the reverse (see n32_split).
#ifndef DCF_N32_SPLIT_DEFAULT
#define DCF_N32_SPLIT_DEFAULT 1
#endif
// The backward's tensor-core stage where Q and dO are not staged for the CTA (every build but N16 D64):
// 1 (measured faster, the default) = its operand blocks come in by cp.async into two per-warp buffers, the
// next block's copy in flight while the current one is multiplied; 0 = one buffer, each block loaded and
// stored synchronously.
#ifndef DCF_BWD_B_ASYNC
#define DCF_BWD_B_ASYNC 1
#endif
// The backward's dQ/dK/dV reductions: per row of a 16 x CB output block (cp.reduce.async.bulk from 16
// lanes, which compiles to a loop over the lanes), or per 16 x 32 box from one lane (bulk-tensor
// reductions, cp.reduce.async.bulk.tensor through a tensor map per workspace; the output blocks dense and
// 128-byte swizzled as the maps describe them). 0 = per row everywhere; 1 (the default) = per box in the
// N16 D64 builds that stage Q and dO (measured 6 % faster there); 2 = also in N16 D128 and the N32 head
// split (measured 1-5 % slower there: their spills grow).
#ifndef DCF_BWD_TMA_RED
#define DCF_BWD_TMA_RED 1
#endif
// The N16 D64 cluster build's hand-over of the pair block (arrival and wait (B) of the key-tile loop):
// 0 = a cluster barrier (its release arrival compiles to a GPU-scope memory barrier, which waits for the
// thread's outstanding weight-gradient atomics); 1 (the default) = the stores into the peer's half as
// st.async, which count their bytes on the peer's mbarrier, and the reader waits on its own mbarrier (no
// fence). Measured: 1 is 1.2-1.5 % faster at T 2048 and 1.3 % slower at T 8192 (docs/perf, B22).
#ifndef DCF_CL2_B_ASYNC
#define DCF_CL2_B_ASYNC 1
#endif

// The key-side half of every Compose on the tensor cores (N16 builds without the head split): 1 (the
// default) = the key-side partial reads and the key-side writes as mma.sync m16n8k16, two score fragments
// side by side as the A operand and one key's weights per B column (docs/perf, rounds 11 and 12), f16
// operands for the Composes of scores and probabilities, bf16 for the transposed Composes (gradients),
// fp32 accumulation; 0 = all of it in fp32 on the CUDA cores. Measured: 1 is 1-2 % faster on every N16
// shape (forward 1.7 %, T 8192 2 %), three calls side by side (docs/perf, round 12). Range: f16 holds
// the logits and their key-side reads up to 65504 (logits in the thousands overflow: a non-finite step).
#ifndef DCF_KEY_MMA
#define DCF_KEY_MMA 1
#endif

// The order in which the CTAs of a launch take their work (grid_slot): 0 = as blockIdx gives it, each
// batch's tiles heaviest first, batch by batch; 1 (the default) = the forward's heaviest causal tiles first
// over all batches, the backward as blockIdx gives it; 2 = both over all batches. Measured (docs/perf,
// round 14, O1): over all batches the forward is 15 % faster at B8 T2048 N16 D64 and 5 % at W256 (its
// tail: the last batch's heavy tiles started last), the backward up to 14 % slower (W256, N16 D128).
#ifndef DCF_GRID_LPT
#define DCF_GRID_LPT 1
#endif
// With the order over batches: how many batch elements are interleaved (groups of that many, one after
// the other, each heaviest first); 0 (the default) = all of them. Fewer keep fewer sequences' K and V in
// L2 at once (built, not yet timed: docs/perf/dcmha_fused.md, round 14).
#ifndef DCF_GRID_GROUP
#define DCF_GRID_GROUP 0
#endif

// Timing only (wrong results; compiled only beside -DDCF_KERNEL_TIMING_BUILDS=ON): what parts of every
// Compose cost, in all kernels at once. 1 = no exchange barrier (the key slice's named barrier between the
// partial reads and their sum is skipped; the sums read whatever the buffer holds); 2 = no weight loads
// (every staged weight is one value the thread computes once: the bound for weights held in registers);
// 3 = both.
#ifndef DCF_ABLATE_COMPOSE
#define DCF_ABLATE_COMPOSE 0
#endif
#if DCF_ABLATE_COMPOSE && !DCF_KERNEL_TIMING_BUILDS
#error "DCF_ABLATE_COMPOSE gives wrong results: timing builds only (-DDCF_KERNEL_TIMING_BUILDS=ON)"
#endif

namespace dcf::cuda {
namespace {

constexpr int kBQ = 16;  // query rows per CTA
constexpr int kBK = 32;  // keys per tile
constexpr int kI = 2;    // Compose rank

struct FusedArgs {
  const bf16 *q, *k, *v, *dw;
  bf16* o;
  float2* stats;  // optional [B, T, N] (m, 1/l) out
  int T, S, q_pos0, window;
};

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

[[maybe_unused]] __device__ __forceinline__ uint32_t pack_f16(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <bool F16>
__device__ __forceinline__ uint32_t pack16(float lo, float hi) {
  return F16 ? pack_f16(lo, hi) : pack_bf16(lo, hi);
}
// mma.sync m16n8k16 with f16 (F16) or bf16 operands into fp32, free to be scheduled (no side effects).
template <bool F16>
__device__ __forceinline__ void mma16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                      uint32_t b1) {
  if constexpr (F16)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
// Bytes of a picked by selector (prmt with a zero second operand: selector nibble 4 gives a zero byte).
[[maybe_unused]] __device__ __forceinline__ uint32_t prmt0(uint32_t a, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(0u), "r"(sel));
  return r;
}

__device__ __forceinline__ uint32_t comp(const uint4& u, int i) {
  return i == 0 ? u.x : i == 1 ? u.y : i == 2 ? u.z : u.w;
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

// Four 8x8 bf16 matrices from shared memory (lane l gives the address of row l % 8 of matrix l / 8), as
// stored (ldsm4) or transposed (ldsm4t).
__device__ __forceinline__ void ldsm4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm4t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// 16 bytes global -> shared without a register round trip; zero-filled (nothing read) when !valid.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(uint32_t(__cvta_generic_to_shared(dst))),
               "l"(src), "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// Per-thread view of one (16 query rows x 32 keys, all N heads) tile, shared by the forward and the
// backward kernels. Warp (kwp, hw) holds the scores of keys [8 kwp, 8 kwp + 8) and heads
// [HP hw, HP hw + HP): x[h][e], cells e = (g, 2c), (g, 2c+1), (g+8, 2c), (g+8, 2c+1). HP = 8 heads per warp
// (every default build) or 4 (a timing-only backward: twice the warps, half the per-thread state).
// Staged dynamic weights: qw [2][kBQ][WS] (branches 0, 2), kw [2][kBK][WS] (branches 1, 3); each row is
// [a (I x N) | b (I x N) | g (N)], in bf16 (W = uint16_t, unpacked to fp32 at every use) or, where shared
// memory allows, converted to fp32 when staged (W = float). red [NW][4][32] float4 exchanges the per-cell
// partial reads. With two exchange buffers (red2 != red) consecutive Composes alternate between them, so a
// Compose needs one barrier (between its writes and reads of the partial reads) instead of two: by the
// time any thread passes Compose j + 1's barrier, every thread has finished reading Compose j's buffer.
// The exchange barriers are per key slice (slice_sync): a slice's warps touch only their own rows of red.
// Head split (NT = 2 N, the N32 builds): the CTA is one of a cluster of two that hold the same query rows
// and NT heads between them, N each (cluster rank r: heads [N r, N r + N)); tensors and weight rows are
// laid out for all NT heads. The per-cell reads are sums over all NT heads, so red has a slot for every
// head-warp of the pair, each warp writes its partial reads into its slot in both CTAs (the peer's
// through st.async, which counts the bytes on the peer's mbarrier of that key slice and buffer), and the
// slice's exchange barrier is that mbarrier (exchange_sync): the slice's local threads arrive, one of them
// expecting the peer's bytes. The two buffers must alternate strictly between consecutive Composes (a
// CTA can be one Compose ahead of its peer, never two), and a pass boundary needs a cluster barrier.
template <int N, class W = uint16_t, int NT = N, int HP_ = 8>
struct Tile {
  static constexpr int HP = HP_;           // heads per warp: 8, or 4 (timing builds, DCF_DCMHA_FUSED_HP4)
  static_assert(HP == 8 || HP == 4, "8 or 4 heads per warp");
  static constexpr bool F32 = std::is_same_v<W, float>;
  static_assert(F32 || std::is_same_v<W, uint16_t>, "staged weights are bf16 or fp32");
  static constexpr bool SPLIT = NT != N;
  static_assert(NT == N || NT == 2 * N, "a CTA holds all heads or half of them");
  static_assert(!SPLIT || HP == 8, "the head split has 8 heads per warp");
  static constexpr int H = N / HP;         // head-warps per key slice (HP heads each)
  static constexpr int NW = 4 * H;         // warps
  static constexpr int THREADS = 32 * NW;  // = 128 N / HP
  static constexpr int WN = (2 * kI + 1) * NT;
  // Staged weight row stride (elements): an odd number of 16-byte slots (WN / 4 is even for N % 8 == 0).
  static constexpr int WS = F32 ? WN + 4 : WN + 8;
  static constexpr int QP = WN / 8;  // 16-byte pieces of one token's branch weights (bf16, in global memory)
  static constexpr int RED_BYTES = 4 * (NT / HP) * 32 * 16 * 4;  // a slot per head-warp of the CTA (or pair)
  static constexpr bool KMMA = DCF_KEY_MMA && N == 16 && !SPLIT;
  static_assert(N % 8 == 0, "N must be a multiple of 8");

  // The staged weights of this warp's HP consecutive heads as fp32.
  static __device__ __forceinline__ void ldh(const W* p, float (&f)[HP]) {
    if constexpr (DCF_ABLATE_COMPOSE & 2) {
      (void)p;
      const float v = __uint_as_float((threadIdx.x & 0x3f0u) | 0x3c000000u);
#pragma unroll
      for (int i = 0; i < HP; ++i) f[i] = v;
    } else if constexpr (HP == 4 && F32) {
      const float4 lo = reinterpret_cast<const float4*>(p)[0];
      f[0] = lo.x, f[1] = lo.y, f[2] = lo.z, f[3] = lo.w;
    } else if constexpr (HP == 4) {
      const uint2 u = *reinterpret_cast<const uint2*>(p);
      f[0] = __uint_as_float(u.x << 16), f[1] = __uint_as_float(u.x & 0xffff0000u);
      f[2] = __uint_as_float(u.y << 16), f[3] = __uint_as_float(u.y & 0xffff0000u);
    } else if constexpr (F32) {
      const float4 lo = reinterpret_cast<const float4*>(p)[0], hi = reinterpret_cast<const float4*>(p)[1];
      f[0] = lo.x, f[1] = lo.y, f[2] = lo.z, f[3] = lo.w, f[4] = hi.x, f[5] = hi.y, f[6] = hi.z, f[7] = hi.w;
    } else {
      unpack8(lds16(p), f);
    }
  }
  // Stores eight bf16 weights (one 16-byte piece of global memory) at dst in the staged type.
  static __device__ __forceinline__ void st8(W* dst, const uint4& u) {
    if constexpr (F32) {
      float f[8];
      unpack8(u, f);
      reinterpret_cast<float4*>(dst)[0] = make_float4(f[0], f[1], f[2], f[3]);
      reinterpret_cast<float4*>(dst)[1] = make_float4(f[4], f[5], f[6], f[7]);
    } else {
      *reinterpret_cast<uint4*>(dst) = u;
    }
  }

  W* qw;
  W* kw;
  float* red;
  float* red2;
  int tid, lane, warp, kwp, hw, g, c;
  int hs;                        // SPLIT: this CTA's first head (N x cluster rank); else unused
  uint32_t mb;                   // SPLIT: this CTA's mbarriers [4 slices][2 buffers] (shared::cta address)
  uint32_t red_peer, red2_peer, mb_peer;  // SPLIT: the same in the peer CTA (shared::cluster addresses)

  __device__ Tile(W* qw_, W* kw_, float* red_, float* red2_, void* mbar = nullptr)
      : qw(qw_), kw(kw_), red(red_), red2(red2_) {
    tid = int(threadIdx.x);
    lane = tid & 31;
    warp = tid >> 5;
    kwp = warp & 3;
    hw = warp >> 2;
    g = lane >> 2;
    c = lane & 3;
    hs = 0;
    mb = red_peer = red2_peer = mb_peer = 0;
    if constexpr (SPLIT) {
      uint32_t rank;
      asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(rank));
      hs = N * int(rank);
      mb = smem_u32(mbar);
      red_peer = peer_addr(smem_u32(red), rank ^ 1u);
      red2_peer = peer_addr(smem_u32(red2), rank ^ 1u);
      mb_peer = peer_addr(mb, rank ^ 1u);
    }
  }
  // The warp's first head among the NT, and its exchange slot in red (kwp + 4 x its head-warp among NT / 8).
  __device__ __forceinline__ int hbase() const { return SPLIT ? hs + HP * hw : HP * hw; }
  __device__ __forceinline__ int xslot() const { return SPLIT ? warp + hs / 2 : warp; }
  static __device__ __forceinline__ uint32_t peer_addr(uint32_t a, uint32_t rank) {
    uint32_t r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(a), "r"(rank));
    return r;
  }
  // SPLIT: the mbarriers (one per key slice and exchange buffer, each completing a phase when the slice's
  // H * 32 local threads have arrived and the peer's H warps' partial reads have come), then a cluster
  // barrier, so that both CTAs' mbarriers are initialised before either sends its first partial reads.
  // Called by every thread of both CTAs before the first Compose.
  __device__ void init_exchange() const;

  // Query-side weights (branches 0 and 2) of rows t0 .. t0 + kBQ - 1 (clamped to T - 1).
  __device__ void stage_query_weights(const bf16* dwb, int q_pos0, int t0, int T) const {
    for (int idx = tid; idx < 2 * kBQ * QP; idx += THREADS) {
      const int p = idx % QP, rr = idx / QP, row = rr % kBQ, br = rr / kBQ;
      const int64_t tpos = q_pos0 + min(t0 + row, T - 1);
      const uint4 u = ldg16(dwb + (tpos * 4 + (br ? 2 : 0)) * WN + 8 * p);
      st8(qw + (br * kBQ + row) * WS + 8 * p, u);
    }
  }
  // Key-side weights of keys kb .. kb + kBK - 1 into dst: branch 1 (nbr = 1) or branches 1 and 3
  // (nbr = 2), keys past S zeroed; bf16: asynchronous (cp.async, the caller commits and waits; the thread
  // index is re-read so that the address arithmetic is not hoisted out of the key-tile loop, where it
  // would hold registers across the whole tile), fp32: converted on the way (synchronous, through
  // load_key_weights and store_key_weights).
  __device__ void stage_key_weights(const bf16* dwb, int kb, int nbr, int S, W* dst) const {
    if constexpr (F32) {
      uint4 r[KWR];
      load_key_weights(dwb, kb, S, r, nbr);
      store_key_weights(r, dst, nbr);
    } else {
      int t;
      asm volatile("mov.u32 %0, %%tid.x;\n" : "=r"(t));
      for (int idx = t; idx < nbr * kBK * QP; idx += THREADS) {
        const int p = idx % QP, rr = idx / QP, key = rr % kBK, br = rr / kBK;
        const int s = kb + key;
        cp_async16(dst + (br * kBK + key) * WS + 8 * p,
                   dwb + (int64_t(min(s, S - 1)) * 4 + (br ? 3 : 1)) * WN + 8 * p, s < S);
      }
    }
  }
  // The fp32 staging split in two, so that the loads can be issued early: load_key_weights fills this
  // thread's pieces (at most KWR 16-byte loads) into registers, store_key_weights converts and stores them.
  static constexpr int KWR = (2 * kBK * QP + THREADS - 1) / THREADS;
  __device__ void load_key_weights(const bf16* dwb, int kb, int S, uint4 (&r)[KWR], int nbr = 2) const {
#pragma unroll
    for (int i = 0; i < KWR; ++i) {
      const int idx = tid + THREADS * i, p = idx % QP, rr = idx / QP, key = rr % kBK, br = rr / kBK;
      const int s = kb + key;
      r[i] = idx < nbr * kBK * QP && s < S ? ldg16(dwb + (int64_t(s) * 4 + (br ? 3 : 1)) * WN + 8 * p)
                                           : make_uint4(0, 0, 0, 0);
    }
  }
  __device__ void store_key_weights(const uint4 (&r)[KWR], W* dst, int nbr = 2) const {
#pragma unroll
    for (int i = 0; i < KWR; ++i) {
      const int idx = tid + THREADS * i, p = idx % QP, rr = idx / QP, key = rr % kBK, br = rr / kBK;
      if (idx < nbr * kBK * QP) st8(dst + (br * kBK + key) * WS + 8 * p, r[i]);
    }
  }
  __device__ float* red_buf(int rb) const { return rb ? red2 : red; }
  // The barrier of a Compose's exchange: only the H head-warps of one key slice (warps kwp, kwp + 4, ...)
  // write and read each other's partial reads, so they sync among themselves (named barrier 1 + kwp)
  // and the four key slices do not wait for each other.
  __device__ void slice_sync() const { asm volatile("bar.sync %0, %1;\n" ::"r"(1 + kwp), "n"(32 * H) : "memory"); }
  // Where one exchange buffer serves every Compose, the barrier that frees it for the next one.
  __device__ void red_free() const {
    if constexpr (!SPLIT)
      if (red2 == red) slice_sync();
  }

  // KMMA: what a lane needs for the B fragments, which carry one key's weights per column n = g (key
  // 8 kwp + g of the tile): weight rows row0 and row0 + 1 of key g (this warp's HP heads) into w0 and w1,
  // and the prmt0 selectors s0 / s1. A lane's registers b0 (rows k = 2c, 2c + 1) and b1 (rows 2c + 8,
  // 2c + 9) are nonzero only where key g is 2c or 2c + 1 (g / 2 == c), at half g & 1: from the packed pair
  // (lo, hi) of two weights, b0 takes lo and b1 takes hi into that half.
  __device__ __forceinline__ void key_b_setup(int slot, int row0, float (&w0)[HP], float (&w1)[HP], uint32_t& s0,
                                              uint32_t& s1) const {
    const W* w = kw + (slot * kBK + 8 * kwp + g) * WS + hbase();
    ldh(w + row0 * NT, w0);
    ldh(w + (row0 + 1) * NT, w1);
    const bool mine = (g >> 1) == c, hi = g & 1;
    s0 = !mine ? 0x4444u : hi ? 0x1044u : 0x4410u;
    s1 = !mine ? 0x4444u : hi ? 0x3244u : 0x4432u;
  }
  // KMMA: the key-side partial reads over this warp's HP heads (hp[e * 4 + r * 2 + 1]): for heads 2j, 2j + 1
  // the two score fragments side by side are an A fragment (k = 8 (head & 1) + key), B_jr[k][n] = (key ==
  // n) a_k[n][r][2j + k / 8]; the four products per read land in the scores' own layout.
  template <bool F16>
  __device__ __forceinline__ void key_reads_mma(const float (&x)[HP][4], int slot, int roff, float (&hp)[16]) const {
    float a0[HP], a1[HP];
    uint32_t s0, s1;
    key_b_setup(slot, roff, a0, a1, s0, s1);
    float acc[2][4] = {};
#pragma unroll
    for (int j = 0; j < HP / 2; ++j) {
      const uint32_t f0 = pack16<F16>(x[2 * j][0], x[2 * j][1]), f1 = pack16<F16>(x[2 * j][2], x[2 * j][3]);
      const uint32_t f2 = pack16<F16>(x[2 * j + 1][0], x[2 * j + 1][1]);
      const uint32_t f3 = pack16<F16>(x[2 * j + 1][2], x[2 * j + 1][3]);
      const uint32_t p0 = pack16<F16>(a0[2 * j], a0[2 * j + 1]), p1 = pack16<F16>(a1[2 * j], a1[2 * j + 1]);
      mma16<F16>(acc[0], f0, f1, f2, f3, prmt0(p0, s0), prmt0(p0, s1));
      mma16<F16>(acc[1], f0, f1, f2, f3, prmt0(p1, s0), prmt0(p1, s1));
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) hp[e * 4 + 1] = acc[0][e], hp[e * 4 + 3] = acc[1][e];
  }
  // KMMA: the key-side writes, x_h += sum_r Rk_r diag(b_k[:, r, h]) with the total reads Rk_0, Rk_1 side by
  // side as the A fragment (k = 8 r + key) and B_h[k][n] = (key == n) b_k[n][r][h], into x_h's fragment.
  template <bool F16>
  __device__ __forceinline__ void key_writes_mma(float (&x)[HP][4], int slot, int woff, const float (&tot)[16]) const {
    float b0[HP], b1[HP];
    uint32_t s0, s1;
    key_b_setup(slot, woff, b0, b1, s0, s1);
    const uint32_t f0 = pack16<F16>(tot[1], tot[5]), f1 = pack16<F16>(tot[9], tot[13]);
    const uint32_t f2 = pack16<F16>(tot[3], tot[7]), f3 = pack16<F16>(tot[11], tot[15]);
#pragma unroll
    for (int h = 0; h < HP; ++h) {
      const uint32_t p = pack16<F16>(b0[h], b1[h]);
      mma16<F16>(x[h], f0, f1, f2, f3, prmt0(p, s0), prmt0(p, s1));
    }
  }
  // Partial reads of one Compose over this warp's HP heads, weight rows roff .. roff + I - 1 of the
  // query-side and key-side weights of `slot` (0: pre, 1: post) -> red[xslot()][e][lane] = float4 (r*2 + {q, k}).
  // Forward Compose reads with a (roff = 0); its transpose reads dY with b (roff = I).
  __device__ void partial_reads(const float (&x)[HP][4], int slot, int roff, int rb) const {
    float hp[16];
    // side 0: query-side weights of row g + 8 o against the row's two cells; side 1: key-side weights
    // of key 2c + o against the key's two cells. Cell e, read r -> hp[e * 4 + r * 2 + side].
#pragma unroll
    for (int side = 0; side < (KMMA ? 1 : 2); ++side)
#pragma unroll
      for (int o = 0; o < 2; ++o) {
        const W* w = side ? kw + (slot * kBK + 8 * kwp + 2 * c + o) * WS + hbase()
                          : qw + (slot * kBQ + g + 8 * o) * WS + hbase();
#pragma unroll
        for (int r = 0; r < kI; ++r) {
          float aw[HP];
          ldh(w + (roff + r) * NT, aw);
#pragma unroll
          for (int p = 0; p < 2; ++p) {
            const int e = side ? 2 * p + o : 2 * o + p;
            float s = 0.f;
#pragma unroll
            for (int h = 0; h < HP; ++h) s = fmaf(aw[h], x[h][e], s);
            hp[e * 4 + r * 2 + side] = s;
          }
        }
      }
    if constexpr (KMMA) {
      if (roff == 0) key_reads_mma<true>(x, slot, roff, hp);
      else key_reads_mma<false>(x, slot, roff, hp);
    }
    const int xs = xslot();
    float4* dst = reinterpret_cast<float4*>(red_buf(rb)) + xs * 128 + lane;  // [slot][i][lane]: no bank conflicts
#pragma unroll
    for (int i = 0; i < 4; ++i) dst[32 * i] = make_float4(hp[4 * i], hp[4 * i + 1], hp[4 * i + 2], hp[4 * i + 3]);
    if constexpr (SPLIT) {
      const uint32_t rdst = (rb ? red2_peer : red_peer) + (xs * 128 + lane) * 16, rbar = mb_peer + 8 * (2 * kwp + rb);
#pragma unroll
      for (int i = 0; i < 4; ++i)
        asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.f32 [%0], {%1, %2, %3, %4}, [%5];\n"
                     ::"r"(rdst + 512 * i), "f"(hp[4 * i]), "f"(hp[4 * i + 1]), "f"(hp[4 * i + 2]), "f"(hp[4 * i + 3]),
                     "r"(rbar)
                     : "memory");
    }
  }
  // The barrier between a Compose's partial reads (written into buffer rb) and their sum: the key slice's
  // named barrier or, with a head split, its mbarrier of buffer rb (see above).
  __device__ void exchange_sync(int rb) const {
    if constexpr (!SPLIT) {
      if constexpr (!(DCF_ABLATE_COMPOSE & 1)) slice_sync();
    } else {
      constexpr int XBYTES = H * 32 * 4 * 16;  // what the peer's warps of the slice write per Compose
      const uint32_t bar = mb + 8 * (2 * kwp + rb);
      uint64_t state;
      if (hw == 0 && lane == 0)
        asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 %0, [%1], %2;\n"
                     : "=l"(state) : "r"(bar), "n"(XBYTES) : "memory");
      else
        asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 %0, [%1];\n" : "=l"(state) : "r"(bar) : "memory");
      // The cluster-scope acquire compiles to an L1 invalidation after every wait (CCTL.IVALL); a
      // CTA-scope acquire (measured: docs/perf/dcmha_fused.md, B16) was no faster, within the spread
      // between runs, so the wait keeps the acquire whose ordering argument needs nothing more.
      uint32_t done = 0;
      while (!done)
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.acquire.cluster.shared::cta.b64 p, [%1], %2;\n"
                     " selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done) : "r"(bar), "l"(state) : "memory");
    }
  }
  // Sum of the partial reads over the head-warps of this key slice (after a barrier).
  __device__ void total_reads(float (&tot)[16], int rb) const {
#pragma unroll
    for (int i = 0; i < 16; ++i) tot[i] = 0.f;
#pragma unroll
    for (int h2 = 0; h2 < NT / HP; ++h2) {
      const float4* src = reinterpret_cast<const float4*>(red_buf(rb)) + (h2 * 4 + kwp) * 128 + lane;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float4 v = src[32 * i];
        tot[4 * i] += v.x;
        tot[4 * i + 1] += v.y;
        tot[4 * i + 2] += v.z;
        tot[4 * i + 3] += v.w;
      }
    }
  }
  // Writes of one Compose for this warp's heads, in place on x: x (1 + g_q + g_k) + sum_r w_r * reads_r
  // with weight rows woff .. woff + I - 1 (forward: the b rows, woff = I; transpose: the a rows, 0).
  __device__ void finish(float (&x)[HP][4], int slot, int woff, const float (&tot)[16]) const {
#pragma unroll
    for (int ci = 0; ci < 2; ++ci) {
      const W* wk = kw + (slot * kBK + 8 * kwp + 2 * c + ci) * WS + hbase();
      [[maybe_unused]] float bk0[HP], bk1[HP];
      float gk[HP];
      if constexpr (!KMMA) {
        ldh(wk + woff * NT, bk0);
        ldh(wk + (woff + 1) * NT, bk1);
      }
      ldh(wk + 2 * kI * NT, gk);
#pragma unroll
      for (int ri = 0; ri < 2; ++ri) {
        const W* wq = qw + (slot * kBQ + g + 8 * ri) * WS + hbase();
        float bq0[HP], bq1[HP], gq[HP];
        ldh(wq + woff * NT, bq0);
        ldh(wq + (woff + 1) * NT, bq1);
        ldh(wq + 2 * kI * NT, gq);
        const int e = 2 * ri + ci;
        const float hq0 = tot[e * 4 + 0], hk0 = tot[e * 4 + 1], hq1 = tot[e * 4 + 2], hk1 = tot[e * 4 + 3];
#pragma unroll
        for (int h = 0; h < HP; ++h) {
          float y = x[h][e] * (1.f + gq[h] + gk[h]);
          y = fmaf(bq0[h], hq0, y);
          y = fmaf(bq1[h], hq1, y);
          if constexpr (!KMMA) {
            y = fmaf(bk0[h], hk0, y);
            y = fmaf(bk1[h], hk1, y);
          }
          x[h][e] = y;
        }
      }
    }
    if constexpr (KMMA) {
      if (woff == kI) key_writes_mma<true>(x, slot, woff, tot);
      else key_writes_mma<false>(x, slot, woff, tot);
    }
  }
  // One Compose in place on x (forward: transpose = false) through exchange buffer rb, with its reads
  // left in tot; on_reads(tot) runs between the reads and the writes, while x still holds the input
  // (the backward's weight gradients). Contains one (key-slice) barrier; the buffer must be free on entry
  // (see red2 above).
  struct NoReadsHook {
    __device__ void operator()(const float (&)[16]) const {}
  };
  template <class OnReads = NoReadsHook>
  __device__ void compose(float (&x)[HP][4], int slot, bool transpose, float (&tot)[16], int rb,
                          OnReads&& on_reads = {}) const {
    partial_reads(x, slot, transpose ? kI : 0, rb);
    exchange_sync(rb);
    total_reads(tot, rb);
    on_reads(static_cast<const float (&)[16]>(tot));
    finish(x, slot, transpose ? 0 : kI, tot);
  }
};

__device__ __forceinline__ bool allowed(int tpos, int s, int window) {
  return s <= tpos && (window == 0 || tpos - s < window);
}

// The two halves of a barrier over every thread of the CTA's thread-block cluster (each thread alternates
// them): memory accesses before a thread's arrive are visible to, and performed before, those after any
// thread's matching wait.
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory"); }
// Arrival without release semantics (no memory fence before it): for a CTA that only tells its peer it
// has finished reading (their values already consumed), not that it has written.
__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_sync() {
  cluster_arrive();
  cluster_wait();
}

template <int N, class W, int NT, int HP_>
__device__ void Tile<N, W, NT, HP_>::init_exchange() const {
  if constexpr (SPLIT) {
    if (tid < 8) asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(mb + 8 * tid), "n"(32 * H) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    cluster_sync();
  }
}

// Where this CTA sits in the grid: (x, batch) by grid_slot_of (kernels/grid_order.h), with units of U CTAs
// (one CTA, or a cluster along x) and the order over all batches where ALL.
template <int U, bool ALL>
__device__ __forceinline__ uint2 grid_slot() {
  // (Read in this order, the kernels compile to the same code as the inline form they were measured with.)
  const unsigned bx = blockIdx.x, gx = gridDim.x, by = blockIdx.y, gy = gridDim.y;
  const GridSlot s = grid_slot_of<U, ALL, DCF_GRID_GROUP>(bx, by, gx, gy);
  return make_uint2(s.x, s.batch);
}
// The first query row of the CTA's tile from its x: tiles in reverse order of x, so that the heaviest
// (causal) ones start first; with a head split (SPL) the two CTAs of a cluster (consecutive x) share a tile.
template <bool SPL>
__device__ __forceinline__ int tile_row0(unsigned x) {
  return ((SPL ? gridDim.x / 2 : gridDim.x) - 1 - (SPL ? x / 2 : x)) * kBQ;
}

// The key-tile loop of every pass: key tiles kstart .. khi (step kBK), each with its key-side weights
// (nbr branches) staged, body(tile view, kb) called with them. With a second weight buffer (kw2 != null)
// the next tile's weights are fetched (cp.async) while the current one is processed and each tile costs
// one barrier; otherwise the tile's weights are fetched and waited for between two barriers. The loop
// starts with a barrier (every thread done with both buffers) and leaves no copy in flight.
template <int N, class W, int NT, int HP, class Body>
__device__ __forceinline__ void for_key_tiles(const Tile<N, W, NT, HP>& tl, W* kw2, const bf16* dwb, int kstart, int khi,
                                              int nbr, int S, Body&& body) {
  if (kw2 == nullptr) {
    for (int kb = kstart; kb <= khi; kb += kBK) {
      __syncthreads();
      tl.stage_key_weights(dwb, kb, nbr, S, tl.kw);
      cp_async_commit();
      cp_async_wait_all();
      __syncthreads();
      body(tl, kb);
    }
    return;
  }
  __syncthreads();
  tl.stage_key_weights(dwb, kstart, nbr, S, tl.kw);
  cp_async_commit();
  Tile<N, W, NT, HP> tk = tl;
  W* next = kw2;
  for (int kb = kstart; kb <= khi; kb += kBK) {
    cp_async_wait_all();
    __syncthreads();  // this tile's weights visible; every thread done with the previous tile
    if (kb + kBK <= khi) {
      tl.stage_key_weights(dwb, kb + kBK, nbr, S, next);
      cp_async_commit();
    }
    body(static_cast<const Tile<N, W, NT, HP>&>(tk), kb);
    W* cur = tk.kw;
    tk.kw = next;
    next = cur;
  }
}

// The key-tile loop of a body that stages the next tile's key-side weights (both branches) into
// tl.kw itself, at a point after the tile's last read of them and a barrier: each tile then costs one
// barrier. The first tile's weights are staged here.
template <int N, class W, int NT, int HP, class Body>
__device__ __forceinline__ void for_key_tiles_self_staged(const Tile<N, W, NT, HP>& tl, const bf16* dwb, int kstart,
                                                          int khi, int S, Body&& body) {
  __syncthreads();  // every thread done with the previous loop's weights
  tl.stage_key_weights(dwb, kstart, 2, S, tl.kw);
  if constexpr (!Tile<N, W, NT, HP>::F32) {  // bf16: staged by cp.async
    cp_async_commit();
    cp_async_wait_all();
  }
  for (int kb = kstart; kb <= khi; kb += kBK) {
    __syncthreads();  // this tile's weights visible
    body(tl, kb);
  }
}

// Staged query-side blocks (the backward's Q and dO, [N][kBQ][D] bf16 in shared memory): 16-byte chunk ch
// of row r sits at chunk ch ^ qd_swz(r). Rows 2i and 2i + 1 differ in bit 2 (the score loads read two rows
// x four consecutive chunks per 8 lanes) and rows 0-7 map to distinct values (ldmatrix reads one chunk of
// eight rows), so both access patterns are bank-conflict free.
__device__ __forceinline__ int qd_swz(int r) { return ((r & 1) << 2) | ((r >> 1) & 3); }

// Scores of this warp's HP heads for key tile kb: x[h] = A_rows[h] . B_keys[h]^T, with the B rows
// (key-side: k or v, [keys][N][D] at the batch element, clamped to S - 1) and the A rows (query-side: q or
// dO, rows clamped to R - 1 of the [rows][N][D] tensor at A) loaded straight from global memory. The
// contraction index d is permuted identically on both sides (8 consecutive d per 16-byte load). Where the
// A rows are staged in shared memory, load_key_frags + scores_staged below do the same.
template <int N, int D, class W, int NT, int HP>
__device__ __forceinline__ void scores_global(float (&x)[HP][4], const bf16* A, int r0, int R, const bf16* B, int kb,
                                              int S, const Tile<N, W, NT, HP>& tl) {
  constexpr int NC = D / 32;
  const int ra = min(r0 + tl.g, R - 1), rb = min(r0 + tl.g + 8, R - 1);
  const int key = min(kb + 8 * tl.kwp + tl.g, S - 1);
  const bf16* pa = A + (int64_t(ra) * NT + tl.hbase()) * D + 8 * tl.c;
  const bf16* pb = A + (int64_t(rb) * NT + tl.hbase()) * D + 8 * tl.c;
  const bf16* pk = B + (int64_t(key) * NT + tl.hbase()) * D + 8 * tl.c;
#pragma unroll
  for (int h = 0; h < HP; ++h) {
    x[h][0] = x[h][1] = x[h][2] = x[h][3] = 0.f;
#pragma unroll
    for (int j = 0; j < NC; ++j) {
      const uint4 kk = ldg16(pk + h * D + 32 * j), qa = ldg16(pa + h * D + 32 * j), qb = ldg16(pb + h * D + 32 * j);
      mma16<false>(x[h], qa.x, qb.x, qa.y, qb.y, kk.x, kk.y);
      mma16<false>(x[h], qa.z, qb.z, qa.w, qb.w, kk.z, kk.w);
    }
  }
}

// The B fragments of scores_global (key rows of k or v for this warp's HP heads), loaded ahead of use, and
// the scores from them with the A rows from the staged block As (see qd_swz).
template <int N, int D, class W, int NT, int HP>
__device__ __forceinline__ void load_key_frags(uint4 (&kf)[HP][D / 32], const bf16* B, int kb, int S,
                                               const Tile<N, W, NT, HP>& tl) {
  const int key = min(kb + 8 * tl.kwp + tl.g, S - 1);
  const bf16* pk = B + (int64_t(key) * NT + tl.hbase()) * D + 8 * tl.c;
#pragma unroll
  for (int h = 0; h < HP; ++h)
#pragma unroll
    for (int j = 0; j < D / 32; ++j) kf[h][j] = ldg16(pk + h * D + 32 * j);
}
template <int N, int D, class W, int NT, int HP>
__device__ __forceinline__ void scores_staged(float (&x)[HP][4], const uint4 (&kf)[HP][D / 32],
                                              const Tile<N, W, NT, HP>& tl, const uint16_t* As) {
  const uint16_t* ps = As + (HP * tl.hw * kBQ + tl.g) * D;
  const int sw = qd_swz(tl.g);
#pragma unroll
  for (int h = 0; h < HP; ++h) {
    x[h][0] = x[h][1] = x[h][2] = x[h][3] = 0.f;
#pragma unroll
    for (int j = 0; j < D / 32; ++j) {
      const uint16_t* pr = ps + h * kBQ * D + 8 * ((4 * j + tl.c) ^ sw);
      const uint4 qa = lds16(pr), qb = lds16(pr + 8 * D), kk = kf[h][j];
      mma16<false>(x[h], qa.x, qb.x, qa.y, qb.y, kk.x, kk.y);
      mma16<false>(x[h], qa.z, qb.z, qa.w, qb.w, kk.z, kk.w);
    }
  }
}

// The mask of this thread's four cells of key tile kb: okc[e] = ok(kb, e).
template <class OkFn>
__device__ __forceinline__ void cell_mask(OkFn& ok, int kb, bool (&okc)[4]) {
#pragma unroll
  for (int e = 0; e < 4; ++e) okc[e] = ok(kb, e);
}

// Both tiles' partial reads of one Compose (weights of `slot`, roff 0) before one exchange barrier (the
// key slice's barrier covers both buffers), and both tiles' total reads: the two-tile builds' Compose up to
// its writes (see pair_pre).
template <int N, class W, int NT>
__device__ __forceinline__ void pair_reads(const Tile<N, W, NT>& tl, const Tile<N, W, NT>& tb, const float (&xa)[8][4],
                                           const float (&xb)[8][4], int slot, float (&ta)[16], float (&tt)[16]) {
  tl.partial_reads(xa, slot, 0, 0);
  tb.partial_reads(xb, slot, 0, 0);
  tl.exchange_sync(0);
  tl.total_reads(ta, 0);
  tb.total_reads(tt, 0);
}
// Two key tiles per iteration (the forward's PR build): tile kb through tl (its key weights in tl.kw, its
// exchange in tl.red), tile kb + kBK through tb (kw and red of its own). pair_pre starts an iteration:
// after a barrier (every thread done with both tiles' weights, exchange buffers and P' blocks) it stages
// both tiles' key weights (nbr branches), computes both tiles' scores into xa and xb and pre-Composes
// them (pair_reads, then both tiles' writes). An odd last tile runs alone (one-tile staging through
// for_key_tiles, which the PR build runs without a prefetch buffer).
template <int N, class W, int NT, class ScoreFn>
__device__ __forceinline__ void pair_pre(const Tile<N, W, NT>& tl, const Tile<N, W, NT>& tb, const bf16* dwb, int kb,
                                         int nbr, int S, ScoreFn& scores, float (&xa)[8][4], float (&xb)[8][4]) {
  __syncthreads();
  tl.stage_key_weights(dwb, kb, nbr, S, tl.kw);
  tl.stage_key_weights(dwb, kb + kBK, nbr, S, tb.kw);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();
  float ta[16], tt[16];
  scores(xa, kb);
  scores(xb, kb + kBK);
  pair_reads(tl, tb, xa, xb, 0, ta, tt);
  tl.finish(xa, 0, kI, ta);
  tb.finish(xb, 0, kI, tt);
}

template <int HP, class OkFn>
__device__ __forceinline__ void stats_update(const float (&x)[HP][4], OkFn& ok, int kb, float (&mrow)[HP][2],
                                             float (&lrow)[HP][2]) {
  bool okc[4];
  cell_mask(ok, kb, okc);
#pragma unroll
  for (int h = 0; h < HP; ++h)
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
      const float z0 = okc[2 * ri] ? x[h][2 * ri] : -INFINITY, z1 = okc[2 * ri + 1] ? x[h][2 * ri + 1] : -INFINITY;
      const float mx = fmaxf(z0, z1);
      if (mx == -INFINITY) continue;
      const float mn = fmaxf(mrow[h][ri], mx);
      lrow[h][ri] = lrow[h][ri] * __expf(mrow[h][ri] - mn) + __expf(z0 - mn) + __expf(z1 - mn);
      mrow[h][ri] = mn;
    }
}

// Pass 1 of both kernels: per-head row max and sum of the pre-Composed, masked logits, reduced to
// st[n * kBQ + row] = (m, 1/l). `scores(x, kb)` fills the tile's logits; `ok(kb, e)` is the mask.
// `part` aliases red. Ends with st written and visible (barrier). With PAIR (the forward's PR build) the
// key tiles go two per iteration through tl and *tb (pair_pre), an odd last one alone; kw2 must then be
// null. stats_update adds one tile to this lane's running (max, sum) per head and row.
template <int N, bool PAIR = false, class W, int NT, int HP, class ScoreFn, class OkFn>
__device__ void row_stats(const Tile<N, W, NT, HP>& tl, W* kw2, const bf16* dwb, int kstart, int khi, int S,
                          ScoreFn scores, OkFn ok, float2* st, const Tile<N, W, NT, HP>* tb = nullptr) {
  using Tl = Tile<N, W, NT, HP>;
  float mrow[HP][2], lrow[HP][2];
#pragma unroll
  for (int h = 0; h < HP; ++h)
    for (int ri = 0; ri < 2; ++ri) mrow[h][ri] = -INFINITY, lrow[h][ri] = 0.f;
  int kb = kstart;
  if constexpr (PAIR)
    for (; kb + kBK <= khi; kb += 2 * kBK) {
      float xa[HP][4], xb[HP][4];
      pair_pre(tl, *tb, dwb, kb, 1, S, scores, xa, xb);
      stats_update(xa, ok, kb, mrow, lrow);
      stats_update(xb, ok, kb + kBK, mrow, lrow);
    }
  if (!PAIR || kb <= khi)
    for_key_tiles<N>(tl, kw2, dwb, kb, khi, 1, S, [&](const Tl& tk, int k1) {
      float x[HP][4], tot[16];
      scores(x, k1);
      tk.compose(x, 0, false, tot, Tl::SPLIT ? (k1 / kBK) & 1 : 0);  // (a head split alternates)
      stats_update(x, ok, k1, mrow, lrow);
    });
  float2* part = reinterpret_cast<float2*>(tl.red);  // [4][N][kBQ]
  __syncthreads();  // red is reused as part below
#pragma unroll
  for (int h = 0; h < HP; ++h)
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
      if (tl.c == 0) part[(tl.kwp * N + HP * tl.hw + h) * kBQ + tl.g + 8 * ri] = make_float2(m, l);
    }
  __syncthreads();
  for (int idx = tl.tid; idx < N * kBQ; idx += Tl::THREADS) {
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
  __syncthreads();
}

// Softmax with the row statistics, in place on the pre-Composed logits: p = exp(z - m) / l, 0 where masked.
template <int N, class W, int NT, int HP, class OkFn>
__device__ __forceinline__ void probs(float (&x)[HP][4], const Tile<N, W, NT, HP>& tl, const float2* st, int kb,
                                      OkFn ok) {
  bool okc[4];
  cell_mask(ok, kb, okc);
#pragma unroll
  for (int h = 0; h < HP; ++h)
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
      const float2 ml = st[(HP * tl.hw + h) * kBQ + tl.g + 8 * ri];
#pragma unroll
      for (int ci = 0; ci < 2; ++ci) {
        const int e = 2 * ri + ci;
        x[h][e] = okc[e] ? __expf(x[h][e] - ml.x) * ml.y : 0.f;
      }
    }
}

// SPL: the head split of the N32 builds (as in the backward): clusters of two CTAs over the same query
// rows, NL = N / 2 heads each; both exchange buffers are needed (they must alternate).
template <int N, int D, int G, int MINB, bool PF, bool SPL = false, bool PR = false>
struct Cfg {
  static constexpr int NL = SPL ? N / 2 : N;  // heads of a CTA
  using WT = uint16_t;
  using Tl = Tile<NL, WT, N>;
  static constexpr int NW = Tl::NW, THREADS = Tl::THREADS;
  static constexpr int NC = D / 32;  // 32-wide chunks of d
  static constexpr int NG = NL / G;  // heads per output group
  static constexpr int HPW = NG / NW;
  static_assert(NG % 8 == 0 && HPW >= 1 && NG % NW == 0, "fused dcmha config");
  // Shared memory per CTA next to MINB CTAs per SM (228 KiB per SM, 1 KiB reserved per CTA, 227 KiB per CTA).
  static constexpr int LIMIT = MINB == 1 ? 227 * 1024 : 228 * 1024 / MINB - 1024;
  static constexpr int Q_BYTES = NL * NC * 2 * 32 * 16;
  static constexpr int PART_BYTES = 4 * NL * kBQ * 8;  // pass-1 partial statistics, aliases RED
  static constexpr int RED_U = Tl::RED_BYTES > PART_BYTES ? Tl::RED_BYTES : PART_BYTES;
  static constexpr int P_BYTES = NG * 4 * 32 * 8;
  static constexpr int ST_BYTES = NL * kBQ * 8;
  // The dynamic weights stay bf16 here: fp32 staging (as in the backward) measured 12 % slower at N16 D64
  // (two CTAs per SM at 128 registers: more spills, twice the shared loads; docs/perf/dcmha_fused.md, F6).
  static constexpr int WS = Tl::WS;
  static constexpr int QW_BYTES = 2 * kBQ * WS * int(sizeof(WT));
  static constexpr int KW_BYTES = 2 * kBK * WS * int(sizeof(WT));
  static constexpr int OFF_QW = Q_BYTES;
  static constexpr int OFF_KW = OFF_QW + QW_BYTES;
  static constexpr int OFF_RED = OFF_KW + KW_BYTES;
  static constexpr int OFF_P = OFF_RED + RED_U;
  static constexpr int OFF_ST = OFF_P + P_BYTES;
  static constexpr int SMEM1 = OFF_ST + ST_BYTES;
  static_assert(SMEM1 <= LIMIT, "forward shared memory");
  // A second key-weight buffer and a second exchange buffer (prefetch, one barrier less per Compose)
  // where PF asks for them and they fit.
  static constexpr int DBL_BYTES = KW_BYTES + Tl::RED_BYTES;
  static constexpr bool DBL = PF && SMEM1 + DBL_BYTES <= LIMIT;
  static constexpr int OFF_KW2 = SMEM1, OFF_RED2 = SMEM1 + KW_BYTES;
  static_assert(!SPL || DBL, "the head split needs the second exchange buffer");
  static constexpr int OFF_MB = DBL ? SMEM1 + DBL_BYTES : SMEM1;  // SPL: the exchange mbarriers [4][2]
  // PR: the second tile's key weights, exchange buffer and P' block.
  static_assert(!PR || (!SPL && !PF && G == 1 && MINB == 1), "the two-tile forward: one CTA per SM, one group");
  static constexpr int OFF_KWB = OFF_MB + (SPL ? 64 : 0), OFF_REDB = OFF_KWB + KW_BYTES;
  static constexpr int OFF_PB = OFF_REDB + Tl::RED_BYTES;
  static constexpr int SMEM = PR ? OFF_PB + P_BYTES : OFF_KWB;
  static_assert(SMEM <= LIMIT, "forward shared memory");
};

template <int N, int D, int G, int MINB, bool PF, bool SPL = false, bool PR = false>
__global__ void __launch_bounds__(SPL ? 8 * N : 16 * N, MINB) dcmha_fused_fwd_kernel(FusedArgs a) {
  using C = Cfg<N, D, G, MINB, PF, SPL, PR>;
  constexpr int NL = C::NL;  // heads of this CTA; N is the tensors' head count
  using Tl = typename C::Tl;
  using WT = typename C::WT;
  constexpr int NC = C::NC, THREADS = Tl::THREADS;
  constexpr int64_t WN = Tl::WN;
  extern __shared__ __align__(128) unsigned char smem[];  // as the backward declares it (128-byte aligned blocks)
  uint4* Qs = reinterpret_cast<uint4*>(smem);                           // [NL][NC][2][32]
  uint2* Pb = reinterpret_cast<uint2*>(smem + C::OFF_P);                // [NG][4][32]
  float2* st = reinterpret_cast<float2*>(smem + C::OFF_ST);             // [NL][kBQ]: (m, 1/l)
  const Tl tl(reinterpret_cast<WT*>(smem + C::OFF_QW), reinterpret_cast<WT*>(smem + C::OFF_KW),
                   reinterpret_cast<float*>(smem + C::OFF_RED),
                   reinterpret_cast<float*>(smem + (C::DBL ? C::OFF_RED2 : C::OFF_RED)), smem + C::OFF_MB);
  WT* kw2 = C::DBL ? reinterpret_cast<WT*>(smem + C::OFF_KW2) : nullptr;
  const int tid = tl.tid, lane = tl.lane, warp = tl.warp, kwp = tl.kwp, hw = tl.hw, g = tl.g, c = tl.c;
  const int hoff = tl.hs;  // this CTA's first head (0 without a head split)
  const uint2 slot = grid_slot<SPL ? 2 : 1, DCF_GRID_LPT != 0>();
  const int b = int(slot.y);
  const int t0 = tile_row0<SPL>(slot.x);
  const int T = a.T, S = a.S, W = a.window;
  const bf16* dwb = a.dw + int64_t(b) * S * 4 * WN;
  tl.init_exchange();

  // ---- stage Q (fragment order) and the query-side weights of branches 0 and 2.
  for (int idx = tid; idx < NL * NC * 64; idx += THREADS) {
    const int l = idx & 31, half = (idx >> 5) & 1, nj = idx >> 6, n = nj / NC, j = nj % NC;
    const int t = min(t0 + (l >> 2) + 8 * half, T - 1);
    Qs[idx] = ldg16(a.q + ((int64_t(b) * T + t) * N + hoff + n) * D + 32 * j + 8 * (l & 3));
  }
  tl.stage_query_weights(dwb, a.q_pos0, t0, T);
  const int tp[2] = {a.q_pos0 + min(t0 + g, T - 1), a.q_pos0 + min(t0 + g + 8, T - 1)};
  const int pfirst = a.q_pos0 + t0, plast = a.q_pos0 + min(t0 + kBQ - 1, T - 1);
  const int klo = W ? max(0, pfirst - W + 1) : 0;
  const int khi = min(S - 1, plast);
  const int kstart = klo & ~(kBK - 1);

  const bf16* kbase = a.k + int64_t(b) * S * N * D;
  auto scores = [&](float (&sc)[8][4], int kb) {
    const int key = min(kb + 8 * kwp + g, S - 1);  // keys past S are masked; clamping keeps loads in bounds
    const bf16* kp = kbase + (int64_t(key) * N + hoff + 8 * hw) * D + 8 * c;
#pragma unroll
    for (int h = 0; h < 8; ++h) {
      sc[h][0] = sc[h][1] = sc[h][2] = sc[h][3] = 0.f;
#pragma unroll
      for (int j = 0; j < NC; ++j) {
        const uint4 kk = ldg16(kp + h * D + 32 * j);
        const uint4 qa = Qs[(((8 * hw + h) * NC + j) * 2 + 0) * 32 + lane];
        const uint4 qb = Qs[(((8 * hw + h) * NC + j) * 2 + 1) * 32 + lane];
        mma16<false>(sc[h], qa.x, qb.x, qa.y, qb.y, kk.x, kk.y);
        mma16<false>(sc[h], qa.z, qb.z, qa.w, qb.w, kk.z, kk.w);
      }
    }
  };
  auto cell_ok = [&](int kb, int e) { return allowed(tp[e >> 1], kb + 8 * kwp + 2 * c + (e & 1), W); };

  // ---- pass 1: per-head row max and sum of the pre-Composed, masked logits.
  __syncthreads();  // Qs staged
  // PR: the second tile's view (key weights, exchange buffer) and P' block.
  Tl tlb = tl;
  tlb.kw = reinterpret_cast<WT*>(smem + C::OFF_KWB);
  tlb.red = tlb.red2 = reinterpret_cast<float*>(smem + C::OFF_REDB);
  [[maybe_unused]] uint2* PbB = reinterpret_cast<uint2*>(smem + C::OFF_PB);
  row_stats<NL, PR>(tl, kw2, dwb, kstart, khi, S, scores, cell_ok, st, &static_cast<const Tl&>(tlb));
  if constexpr (SPL) cluster_sync();  // exchange buffer 0 (part in row_stats) free in both CTAs
  if (a.stats)
    for (int idx = tid; idx < NL * kBQ; idx += THREADS) {
      const int n = idx / kBQ, row = idx % kBQ;
      if (t0 + row < T) a.stats[(int64_t(b) * T + t0 + row) * N + hoff + n] = st[idx];
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
    // P' of this warp's heads and keys into the block P (bf16 A fragments of P' V), and O += P' V for
    // the warp's output heads from block P of key tile kb.
    auto store_p = [&](const float (&sc)[8][4], uint2* P) {
#pragma unroll
      for (int h = 0; h < 8; ++h) {
        const int ml = 8 * hw + h - gi * C::NG;
        P[(ml * 4 + kwp) * 32 + lane] = make_uint2(pack_bf16(sc[h][0], sc[h][1]), pack_bf16(sc[h][2], sc[h][3]));
      }
    };
    auto pv = [&](const uint2* P, int kb) {
#pragma unroll
      for (int hh = 0; hh < C::HPW; ++hh) {
        const int ml = warp * C::HPW + hh, m = gi * C::NG + ml;
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
          const uint2 pa = P[(ml * 4 + 2 * kk) * 32 + lane], pb = P[(ml * 4 + 2 * kk + 1) * 32 + lane];
          const int keyA = min(kb + 16 * kk + g, S - 1), keyB = min(kb + 16 * kk + 8 + g, S - 1);
          const bf16* va_p = a.v + ((int64_t(b) * S + keyA) * N + hoff + m) * D + 8 * c;
          const bf16* vb_p = a.v + ((int64_t(b) * S + keyB) * N + hoff + m) * D + 8 * c;
#pragma unroll
          for (int j = 0; j < NC; ++j) {
            const uint4 va = ldg16(va_p + 32 * j), vb = ldg16(vb_p + 32 * j);
#pragma unroll
            for (int jj = 0; jj < 4; ++jj)
              mma16<false>(acc[hh][j][jj], pa.x, pa.y, pb.x, pb.y, mov_trans(comp(va, jj)), mov_trans(comp(vb, jj)));
          }
        }
      }
    };
    // One key tile: recompute and pre-Compose the scores, softmax, post-Compose, O += P' V.
    auto tile1 = [&](const Tl& tk, int kb) {
      float sc[8][4], tot[16];
      scores(sc, kb);
      tk.compose(sc, 0, false, tot, 0);
      probs<NL>(sc, tk, st, kb, cell_ok);
      tk.red_free();
      tk.partial_reads(sc, 1, 0, 1);
      tk.exchange_sync(1);
      tk.total_reads(tot, 1);
      if (in_group) {
        tk.finish(sc, 1, kI, tot);
        store_p(sc, Pb);
      }
      __syncthreads();
      pv(Pb, kb);
    };
    // PR: two key tiles per iteration (see pair_pre): each Compose's partial reads of both tiles before
    // one exchange barrier, both P' blocks before one CTA barrier; an odd last tile alone (kw2 is null).
    int kb = kstart;
    if constexpr (PR)
      for (const Tl& tb = tlb; kb + kBK <= khi; kb += 2 * kBK) {
        float sa[8][4], sb[8][4], ta[16], tt[16];
        pair_pre(tl, tb, dwb, kb, 2, S, scores, sa, sb);
        probs<NL>(sa, tl, st, kb, cell_ok);
        probs<NL>(sb, tb, st, kb + kBK, cell_ok);
        tl.slice_sync();  // both exchange buffers read: free for the post-Compose
        pair_reads(tl, tb, sa, sb, 1, ta, tt);
        if (in_group) {
          tl.finish(sa, 1, kI, ta);
          tb.finish(sb, 1, kI, tt);
          store_p(sa, Pb);
          store_p(sb, PbB);
        }
        __syncthreads();
        pv(Pb, kb);
        pv(PbB, kb + kBK);
      }
    if (!PR || kb <= khi) for_key_tiles<NL>(tl, kw2, dwb, kb, khi, 2, S, tile1);
    // O columns of n8 tile (j, jj), fragment columns 2c, 2c+1, are d = 32 j + 8 c + 2 jj + {0, 1}.
#pragma unroll
    for (int hh = 0; hh < C::HPW; ++hh) {
      const int m = gi * C::NG + warp * C::HPW + hh;
#pragma unroll
      for (int ri = 0; ri < 2; ++ri) {
        const int t = t0 + g + 8 * ri;
        if (t >= T) continue;
        bf16* op = a.o + ((int64_t(b) * T + t) * N + hoff + m) * D + 8 * c;
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
  if constexpr (SPL) cluster_sync();  // no st.async into a CTA that has exited
}

// ---------------------------------------------------------------------------------------------
// Backward (dcmha.md §3.1-§3.4). One CTA per (batch, 16 query rows), all heads, three passes over
// the key tiles of those rows:
//   1. row statistics (m, 1/l) of the pre-Composed logits (as the forward's pass 1);
//   A. Delta[n, t] = sum_s P dP, with dP = Compose_post^T(dP'), dP' = dO V^T (not rowsum(dO * O));
//   C. recompute Z, P, P', dP', dP; dZ = P (dP - Delta); dA = Compose_pre^T(dZ). Query-side weight
//      gradients (branches 0, 2) are row sums, kept in registers and added to ddw at the end; key-side
//      ones (branches 1, 3) are column sums over the tile's 16 rows, added to an fp32 workspace with
//      atomics; dQ += dA K, dK += dA^T Q and dV += P'^T dO run on the tensor cores (mma.sync with
//      ldmatrix operands from padded, bank-conflict-free shared memory; P' and dA staged there as
//      bf16). dK and dV are added to fp32 workspaces by bulk asynchronous reductions
//      (cp.reduce.async.bulk, one per row) from double-buffered output blocks, and dQ likewise. At N16 D64
//      the CTA's Q and dO rows are staged in shared memory once and feed every tile's matmuls.
// At N16 D64 (CL2) the CTAs run in clusters of two over 32 consecutive query rows, so that each key tile's
// dK and dV leave the SM summed over 32 rows instead of 16 (the reductions are L2-throughput bound): per
// tile, the rank-0 CTA computes the pair's dK = dA^T Q and the rank-1 CTA the pair's dV = P'^T dO, each
// from a 32-row P' or dA block in its own shared memory that both CTAs fill (the peer's half through
// distributed shared memory stores) and from both CTAs' Q or dO rows (the peer's staged once at the start);
// dQ stays per CTA. In pass C the two CTAs meet twice per tile at barriers split into arrive and wait (see
// the key-tile loop), and both walk the union of their key tiles. Each CTA issues 3 instead of 5
// bulk reductions per head and tile.
// No B x N x T x S state: the extra memory is the fp32 gradient workspaces (linear in T).

struct BwdArgs {
  const bf16 *q, *k, *v, *dw, *dout;
  bf16* ddw;                 // query-side branches (0, 2) are added here directly; null: no ddw
  const float2* stats;       // optional [B, T, N] (m, 1/l) from the forward: pass 1 is skipped
  float *dq, *dk, *dv, *kws;  // fp32 workspaces, zeroed: [B,T,N,D], [B,S,N,D] x 2, [B,S,2,5,N]
  int T, S, q_pos0, window;
};
// The tensor maps of the bulk-tensor reductions (BwdCfg::TR): dq, dk, dv as [B][rows][N][D] fp32, boxes of
// 16 rows x 1 head x 32 d, 128-byte swizzle. A kernel parameter of its own (__grid_constant__, as the
// reductions address it), so that the builds without them compile as before.
struct BwdMaps {
  CUtensorMap tm[3];
};

// CL2: the 2-CTA cluster build (N16 D64, see above). Its P'/dA region is one [N][2 kBQ][PS] block (the
// pair's dA on rank 0, the pair's P' on rank 1: the size of the one-CTA build's two [N][kBQ][PS] blocks),
// and its output blocks are single (its shared memory holds a third staged Q/dO block instead).
template <int N, int D, bool PF, bool CL2 = false, bool SPL = false, int HP = 8>
struct BwdCfg {
  // SPL: the head split (N = 32): clusters of two CTAs over the same query rows, NL = N / 2 heads each.
  static constexpr int NL = SPL ? N / 2 : N;
  // N16 D64 without the prefetch buffer (that shape's default build) has the shared memory for two
  // stagings the other builds cannot afford (their shared memory is taken, or cp.async prefetches the
  // weights into a second buffer), and the kernel's AHEAD loads rely on both:
  // - QD_SMEM: the CTA's Q and dO rows (2 x 16 rows x N x D bf16, 64 KiB) are staged once (swizzled, see
  //   qd_swz) and feed the score matmuls (QK^T, dO V^T: A operands shared by the 4 key-warps) and the
  //   dK/dV matmuls of every key tile, instead of being re-read from L2 five times per tile;
  // - F32W: the dynamic weights are staged as fp32 (the others keep bf16; so does the cluster build
  //   with four heads per warp, whose shared memory has no room for fp32 weights).
  static constexpr bool QD_SMEM = N == 16 && D == 64 && !PF;
  static constexpr bool F32W = QD_SMEM && !(CL2 && HP == 4);
  static_assert(!SPL || (N == 32 && PF && !CL2), "the head split is the N32 builds' (with the prefetch)");
  using WT = std::conditional_t<F32W, float, uint16_t>;
  using Tl = Tile<NL, WT, N, HP>;
  static constexpr int NW = Tl::NW, WS = Tl::WS;
  static constexpr int TC = NL / NW;  // heads per warp in the tensor-core stage
  static_assert(TC == 2 || TC == 1, "one or two heads per warp in the tensor-core stage");
  static constexpr int PS = 40;  // row stride (bf16) of the staged P' and dA tiles: [N][kBQ][PS]
  static constexpr int QW_BYTES = 2 * kBQ * WS * int(sizeof(WT));
  static constexpr int KW_BYTES = 2 * kBK * WS * int(sizeof(WT));
  static constexpr int PT_BYTES = NL * kBQ * PS * 2;
  static constexpr int QACC_BYTES = 2 * 4 * kBQ * NL * 5 * 4;  // final query-side reduction, aliases P'/dA
  static_assert(QACC_BYTES <= 2 * PT_BYTES, "qacc alias");
  static_assert(Tl::RED_BYTES >= 4 * NL * kBQ * 8, "part alias");
  // d columns per tensor-core block (32 with four heads per warp: 16 warps' output blocks must fit)
  static constexpr int CB = NL == 16 && HP == 8 ? 64 : 32;
  // Per warp: a bf16 16 x CB operand block (row stride SB; the dK/dV matmuls' Q or dO block, only where
  // those are not staged for the CTA), then one or two f32 16 x CB output blocks (row stride SF; two: a
  // block's bulk reduction may still be reading one while the next block is written to the other). The
  // paddings make ldmatrix and the fragment stores bank-conflict free.
  // TR (DCF_BWD_TMA_RED): the output blocks are dense (SF = CB) boxes of 16 x 32 fp32, 128-byte swizzled
  // (sw_off), each warp's scratch 1024-byte aligned with its output blocks first. Never in the one-CTA
  // N32 build (16 warps: the alignment's padding does not fit).
  static constexpr bool TR = (DCF_BWD_TMA_RED >= 1 && QD_SMEM) || (DCF_BWD_TMA_RED >= 2 && (SPL || N == 16));
  static constexpr int SB = CB + 8, SF = TR ? CB : CB + 4;
  static constexpr int SCR_B = QD_SMEM ? 0 : 16 * SB * 2, SCR_F = 16 * SF * 4;
  // BA (DCF_BWD_B_ASYNC): two operand blocks per warp, filled by cp.async one block ahead.
  static constexpr bool BA = DCF_BWD_B_ASYNC && !QD_SMEM;
  static constexpr int NB = BA ? 2 : 1;
  static constexpr int OFF_QW = 0;
  static constexpr int OFF_KW = OFF_QW + QW_BYTES;
  static constexpr int OFF_KW2 = OFF_KW + KW_BYTES;  // second key-weight buffer (prefetch), PF only
  static constexpr int OFF_RED = OFF_KW2 + (PF ? KW_BYTES : 0);
  // CL2 (clusters of two CTAs, see the kernel): a third block, the peer CTA's Q or dO rows.
  static_assert(!CL2 || QD_SMEM, "the cluster build is N16 D64's (it stages Q and dO)");
  static constexpr int QD_BYTES = QD_SMEM ? (CL2 ? 3 : 2) * N * kBQ * D * 2 : 0;
  static constexpr int OFF_PP = OFF_RED + Tl::RED_BYTES;
  static constexpr int ru(int x) { return TR ? (x + 1023) / 1024 * 1024 : x; }
  static constexpr int OFF_SCR = ru(OFF_PP + 2 * PT_BYTES);
  static constexpr int ST_BYTES = NL * kBQ * 12;
  // Two output blocks per warp where they fit.
  static constexpr bool DBL_SCR = OFF_SCR + NW * ru(NB * SCR_B + 2 * SCR_F) + ST_BYTES + QD_BYTES <= 227 * 1024;
  static constexpr int SCR_WARP = ru(NB * SCR_B + (DBL_SCR ? 2 : 1) * SCR_F);
  // Within a warp's scratch: the operand blocks and the output blocks (TR: output blocks first).
  static constexpr int OFF_WB = TR ? (DBL_SCR ? 2 : 1) * SCR_F : 0, OFF_WF = TR ? 0 : NB * SCR_B;
  static_assert(SCR_B % 128 == 0 && SCR_WARP % 128 == 0, "scratch alignment");
  // The second Compose exchange buffer aliases the tensor-core scratch: the Composes of a tile and its
  // tensor-core stage are separated by barriers, and the stage's bulk reads finish before the tile ends.
  static_assert(NW * SCR_WARP >= Tl::RED_BYTES, "red2 alias");
  static constexpr int OFF_ST = OFF_SCR + NW * SCR_WARP;
  static constexpr int OFF_QD = OFF_ST + ST_BYTES;  // [2 or 3][N][kBQ][D]: Q, dO (CL2: then the peer's Q or dO)
  static constexpr int OFF_MB = OFF_QD + QD_BYTES;  // SPL: the exchange mbarriers [4][2] (Tile)
  // CL2 with DCF_CL2_B_ASYNC: the pair block's mbarrier, after the exchange mbarriers' place.
  static constexpr bool BX = CL2 && DCF_CL2_B_ASYNC;
  static constexpr int OFF_PMB = OFF_MB + (SPL ? 64 : 0);
  static constexpr int SMEM = OFF_PMB + (BX ? 8 : 0);
  static_assert(SMEM <= 227 * 1024, "backward shared memory");
  static_assert(OFF_PP % 128 == 0 && OFF_SCR % 128 == 0 && PT_BYTES % 128 == 0 && OFF_QD % 128 == 0,
                "operand alignment");
  static_assert(!TR || (OFF_SCR % 1024 == 0 && SCR_WARP % 1024 == 0 && SCR_F % 1024 == 0 && CB % 32 == 0),
                "swizzled output boxes");
};

// TR output blocks (BwdCfg): the float index of (row r, column col) in a block of 16 x 32 fp32 boxes, each
// 128-byte swizzled as the tensor maps' CU_TENSOR_MAP_SWIZZLE_128B reads it (16-byte chunk k of row r at
// chunk k ^ (r & 7)). Fragment stores into it are bank-conflict free as with the padded rows.
__device__ __forceinline__ int sw_off(int r, int col) {
  return (col >> 5) * 512 + r * 32 + ((((col >> 2) & 7) ^ (r & 7)) << 2) + (col & 3);
}

// Reduce-scatter over the lanes lane ^ mask: of M values, the lane keeps half `bit` (0: first M/2, 1:
// second), summed with its partner's copy.
template <int M>
__device__ __forceinline__ void rs_step(const float (&v)[M], float (&out)[M / 2], int bit, int mask) {
#pragma unroll
  for (int i = 0; i < M / 2; ++i) {
    const float send = bit ? v[i] : v[i + M / 2], keep = bit ? v[i + M / 2] : v[i];
    out[i] = keep + __shfl_xor_sync(0xffffffffu, send, mask);
  }
}

// The 5 HP partial sums (HP heads x da0, da1, db0, db1, dg) of this thread's two cells in query row o
// (SIDE 0: cells e = 2 o + i, reads of the query-side weights) or in key column o (SIDE 1: e = 2 i + o,
// key-side weights).
template <int SIDE, int HP>
__device__ __forceinline__ void grad_sums(const float (&x)[HP][4], const float (&y)[HP][4], const float (&hr)[16],
                                          const float (&er)[16], int o, float (&v)[5 * HP]) {
#pragma unroll
  for (int h = 0; h < HP; ++h) {
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f, s4 = 0.f;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int e = SIDE ? 2 * i + o : 2 * o + i;
      const float X = x[h][e], Y = y[h][e];
      s0 = fmaf(X, er[e * 4 + SIDE], s0);
      s1 = fmaf(X, er[e * 4 + 2 + SIDE], s1);
      s2 = fmaf(hr[e * 4 + SIDE], Y, s2);
      s3 = fmaf(hr[e * 4 + 2 + SIDE], Y, s3);
      s4 = fmaf(X, Y, s4);
    }
    v[h * 5 + 0] = s0, v[h * 5 + 1] = s1, v[h * 5 + 2] = s2, v[h * 5 + 3] = s3, v[h * 5 + 4] = s4;
  }
}

// The weight gradients of one Compose over this tile (dcmha.md §3.1): X its input, Y the gradient of its
// output, hr the reads of X (a-weights) and er the back-reads of Y (b-weights), both in total_reads
// layout. Query side: row sums, reduce-scattered over the quad into qacc[ri * Q + i] (Q = 5 HP / 4; row
// g + 8 ri, head HP hw + (HP/2) (c&1) + (HP/4) (c>>1) + i/5, gradient i%5 in the order da0, da1, db0, db1,
// dg). Key side: column sums over the 16 rows, reduce-scattered over the 8 lanes of a key column (HP 4:
// over 4 of them, the last pair summed), added to kws.
template <int N, class W, int NT, int HP>
__device__ __forceinline__ void compose_grads(const Tile<N, W, NT, HP>& tl, const float (&x)[HP][4],
                                              const float (&y)[HP][4], const float (&hr)[16], const float (&er)[16],
                                              float (&qacc)[5 * HP / 2], float* kws_b, int slot, int kb, int S) {
  constexpr int V = 5 * HP, Q = V / 4;
#pragma unroll
  for (int ri = 0; ri < 2; ++ri) {
    float v[V], v2[V / 2], v3[Q];
    grad_sums<0>(x, y, hr, er, ri, v);
    rs_step<V>(v, v2, tl.c & 1, 1);
    rs_step<V / 2>(v2, v3, (tl.c >> 1) & 1, 2);
#pragma unroll
    for (int i = 0; i < Q; ++i) qacc[ri * Q + i] += v3[i];
  }
#pragma unroll
  for (int ci = 0; ci < 2; ++ci) {
    float v[V], v2[V / 2], v3[Q], v4[5];
    grad_sums<1>(x, y, hr, er, ci, v);
    rs_step<V>(v, v2, tl.g & 1, 4);
    rs_step<V / 2>(v2, v3, (tl.g >> 1) & 1, 8);
    if constexpr (HP == 8) {
      rs_step<Q>(v3, v4, (tl.g >> 2) & 1, 16);
    } else {
#pragma unroll
      for (int j = 0; j < 5; ++j) v4[j] = v3[j] + __shfl_xor_sync(0xffffffffu, v3[j], 16);
    }
    const int key = kb + 8 * tl.kwp + 2 * tl.c + ci;
    const int head = HP == 8 ? tl.hbase() + 4 * (tl.g & 1) + 2 * ((tl.g >> 1) & 1) + ((tl.g >> 2) & 1)
                             : tl.hbase() + 2 * (tl.g & 1) + ((tl.g >> 1) & 1);
    if (key < S && (HP == 8 || tl.g < 4)) {
      float* p = kws_b + (int64_t(key) * 2 + slot) * 5 * NT + head;
#pragma unroll
      for (int j = 0; j < 5; ++j) atomicAdd(p + j * NT, v4[j]);
    }
  }
}

// BwdCfg::BA: the tensor-core stage's operand blocks by cp.async, in the stage's order: per head (it) and
// column block cb, K rows kb and kb + 16 (dQ), Q rows t0 (dK), dO rows t0 (dV). Block i of the tile goes
// to the warp's buffer i & 1 ([16][SB] bf16 each, rows past S or T zeroed).
struct OpBlocks {
  const bf16 *k, *q, *dout;  // the batch element's [rows][N][D]
  bf16* buf;                 // the warp's two buffers
  int kb, t0, S, T, head0;   // head0: this warp's first head (2 warp + the CTA's first head)
};
template <int N, int D, int CB, int SB>
__device__ __forceinline__ void issue_op_block(const OpBlocks& o, int i, int lane) {
  constexpr int PER = 4 * (D / CB), PR = CB / 8;
  const int it = i / PER, cb = (i / 4) % (D / CB) * CB, s = i % 4, n = o.head0 + (it & 1);
  const bf16* base = s < 2 ? o.k : s == 2 ? o.q : o.dout;
  const int row0 = s < 2 ? o.kb + 16 * s : o.t0, nrows = s < 2 ? o.S : o.T;
  bf16* dst = o.buf + (i & 1) * 16 * SB;
#pragma unroll
  for (int j = 0; j < 16 * PR / 32; ++j) {
    const int e = lane + 32 * j, r = e / PR, p = e % PR;
    const bool ok = row0 + r < nrows;
    const bf16* src = base + (int64_t(ok ? row0 + r : 0) * N + n) * D + cb + 8 * p;
    cp_async16(dst + r * SB + 8 * p, src, ok);
  }
  cp_async_commit();
}
// Block i's turn: issues block i + 1 (its buffer's last reader, block i - 1's ldmatrix, is behind the
// __syncwarp) and waits for block i; the last block (i + 1 == nblk) leaves no copy in flight. Returns the
// byte offset of block i's buffer.
template <int N, int D, int CB, int SB>
__device__ __forceinline__ uint32_t take_op_block(const OpBlocks& o, int i, int nblk, int lane) {
  __syncwarp();
  if (i + 1 < nblk) {
    issue_op_block<N, D, CB, SB>(o, i + 1, lane);
    asm volatile("cp.async.wait_group 1;\n" ::: "memory");
  } else {
    cp_async_wait_all();
  }
  __syncwarp();
  return (i & 1) * 32 * SB;
}

// PF: the key-side weights of the next tile are prefetched (cp.async) into a second buffer.
// SPL: the N32 builds as clusters of two CTAs over the same 16 query rows, each for 16 of the 32 heads
// (cluster rank r: heads 16 r .. 16 r + 15) and otherwise the N16 kernel: the Composes' per-cell reads
// are exchanged through distributed shared memory (Tile), the rest is per head.
template <int N, int D, int PROF, bool PF, bool CL2 = false, bool SPL = false, int HP = 8>
__global__ void __launch_bounds__(SPL ? 8 * N : 128 * N / HP, 1)
    dcmha_fused_bwd_kernel(BwdArgs a, const __grid_constant__ BwdMaps maps) {
  using C = BwdCfg<N, D, PF, CL2, SPL, HP>;
  using Tl = typename C::Tl;
  using WT = typename C::WT;
  constexpr int NL = C::NL;  // heads of this CTA; N is the tensors' head count
  constexpr int THREADS = Tl::THREADS, NW = Tl::NW, PS = C::PS;
  constexpr int64_t WN = Tl::WN;
  constexpr int TC = C::TC;  // heads per warp in the tensor-core stage
  static_assert(!C::BA || TC == 2, "the operand blocks by cp.async assume two heads per warp");
  constexpr int HPS = HP == 8 ? 3 : 2;  // log2(HP)
  extern __shared__ __align__(128) unsigned char smem[];
  const Tl tl(reinterpret_cast<WT*>(smem + C::OFF_QW), reinterpret_cast<WT*>(smem + C::OFF_KW),
                   reinterpret_cast<float*>(smem + C::OFF_RED),
                   reinterpret_cast<float*>(smem + C::OFF_SCR), smem + C::OFF_MB);
  WT* kw2 = PF ? reinterpret_cast<WT*>(smem + C::OFF_KW2) : nullptr;
  bf16* Pp = reinterpret_cast<bf16*>(smem + C::OFF_PP);  // [NL][kBQ][PS] P' of the tile
  bf16* dAs = Pp + NL * kBQ * PS;                         // [NL][kBQ][PS] dA of the tile
  bf16* scr_b = reinterpret_cast<bf16*>(smem + C::OFF_SCR + tl.warp * C::SCR_WARP + C::OFF_WB);
  float* scr_f = reinterpret_cast<float*>(smem + C::OFF_SCR + tl.warp * C::SCR_WARP + C::OFF_WF);
  float2* st = reinterpret_cast<float2*>(smem + C::OFF_ST);                   // [NL][kBQ] (m, 1/l)
  float* dl = reinterpret_cast<float*>(smem + C::OFF_ST + NL * kBQ * 8);     // [NL][kBQ] Delta
  const int tid = tl.tid, lane = tl.lane, warp = tl.warp, kwp = tl.kwp, hw = tl.hw, g = tl.g, c = tl.c;
  const int hoff = tl.hs;  // this CTA's first head (0 without a head split)
  const uint2 slot = grid_slot<SPL || CL2 ? 2 : 1, DCF_GRID_LPT == 2>();
  const int b = int(slot.y);
  const int t0 = tile_row0<SPL>(slot.x);
  tl.init_exchange();
  const int T = a.T, S = a.S, W = a.window;
  // CL2: the two CTAs of a cluster hold the query rows [pb, pb + 32): cluster rank 1 the first 16, rank 0
  // (blockIdx.x one lower) the next 16 (none if they start past T: the grid is rounded up to even). The
  // rank-0 CTA computes the pair's dK, the rank-1 CTA its dV, each contracting over all 32 rows (see pass C).
  uint32_t crank = 0;
  if constexpr (CL2) asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(crank));
  const bool role_k = crank == 0;
  const int pb = crank == 0 && CL2 ? t0 - kBQ : t0;  // the pair's first row
  const int roff = t0 - pb;                           // this CTA's rows in the pair: [roff, roff + 16)
  const int peer_t0 = CL2 ? pb + kBQ - roff : t0;
  const bf16* dwb = a.dw + int64_t(b) * S * 4 * WN;
  const bf16* qb = a.q + int64_t(b) * T * N * D;
  const bf16* dob = a.dout + int64_t(b) * T * N * D;
  const bf16* kb_ = a.k + int64_t(b) * S * N * D;
  const bf16* vb = a.v + int64_t(b) * S * N * D;
  float* kws_b = a.kws ? a.kws + int64_t(b) * S * 2 * 5 * N : nullptr;

  tl.stage_query_weights(dwb, a.q_pos0, t0, T);
  uint16_t* qds = reinterpret_cast<uint16_t*>(smem + C::OFF_QD);  // QD_SMEM: [2 or 3][N][kBQ][D] (BwdCfg)
  if constexpr (C::QD_SMEM) {  // rows past T zeroed; visible after the first key-tile loop's barrier
    constexpr int CH = D / 8;
    // Blocks: this CTA's Q, its dO and (CL2) the peer CTA's Q (rank 0, for dK) or dO (rank 1, for dV).
    for (int idx = tid; idx < (CL2 ? 3 : 2) * N * kBQ * CH; idx += THREADS) {
      const int ch = idx % CH, row = (idx / CH) % kBQ, n = (idx / (CH * kBQ)) % N, which = idx / (CH * kBQ * N);
      const int r0 = which == 2 ? peer_t0 : t0, t = min(r0 + row, T - 1);
      const bf16* src = which == 1 || (which == 2 && !role_k) ? dob : qb;
      cp_async16(qds + ((which * N + n) * kBQ + row) * D + 8 * (ch ^ qd_swz(row)),
                 src + (int64_t(t) * N + n) * D + 8 * ch, r0 + row < T);
    }
    cp_async_commit();
    cp_async_wait_all();
  }
  const bool rowok[2] = {t0 + g < T, t0 + g + 8 < T};
  const int tp[2] = {a.q_pos0 + min(t0 + g, T - 1), a.q_pos0 + min(t0 + g + 8, T - 1)};
  const int pfirst = a.q_pos0 + t0, plast = a.q_pos0 + min(t0 + kBQ - 1, T - 1);
  const int klo = W ? max(0, pfirst - W + 1) : 0;
  const int kstart = klo & ~(kBK - 1);
  const int khi = t0 < T ? min(S - 1, plast) : kstart - kBK;  // no rows (CL2's padding CTA): no tiles
  // Pass C's key tiles: CL2 walks the pair's (both CTAs meet at every tile's cluster barriers); a tile
  // outside this CTA's own range is all masked (its P' and dA are 0).
  int kstart_c = kstart, khi_c = khi;
  if constexpr (CL2) {
    const int f2 = a.q_pos0 + pb, l2 = a.q_pos0 + min(pb + 2 * kBQ - 1, T - 1);
    kstart_c = (W ? max(0, f2 - W + 1) : 0) & ~(kBK - 1);
    khi_c = min(S - 1, l2);
  }
  auto cell_ok = [&](int kb, int e) {
    return rowok[e >> 1] && allowed(tp[e >> 1], kb + 8 * kwp + 2 * c + (e & 1), W);
  };
  auto qk_scores = [&](float (&x)[HP][4], int kb) {
    if constexpr (C::QD_SMEM) {
      uint4 kfr[HP][D / 32];
      load_key_frags<NL, D>(kfr, kb_, kb, S, tl);
      scores_staged<NL, D>(x, kfr, tl, qds);
    } else {
      scores_global<NL, D>(x, qb, t0, T, kb_, kb, S, tl);
    }
  };
  auto dov_mask = [&](float (&x)[HP][4], int kb) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const bool ok = cell_ok(kb, e);
#pragma unroll
      for (int h = 0; h < HP; ++h) x[h][e] = ok ? x[h][e] : 0.f;
    }
  };
  auto dov_scores = [&](float (&x)[HP][4], int kb) {  // dP' = dO V^T, 0 on masked cells (without AHEAD)
    scores_global<NL, D>(x, dob, t0, T, vb, kb, S, tl);
    dov_mask(x, kb);
  };

  // ---- pass 1: row statistics (or the forward's).
  if (a.stats) {
    for (int idx = tid; idx < NL * kBQ; idx += THREADS) {
      const int n = idx / kBQ, row = idx % kBQ;
      st[idx] = t0 + row < T ? a.stats[(int64_t(b) * T + t0 + row) * N + hoff + n] : make_float2(-INFINITY, 0.f);
    }
    __syncthreads();
  } else {
    row_stats<NL>(tl, kw2, dwb, kstart, khi, S, qk_scores, cell_ok, st);
    if constexpr (SPL) cluster_sync();  // exchange buffer 0 (part in row_stats) free in both CTAs
  }

  // AHEAD (N16 D64 with Q and dO staged, fp32 weights): the next tile's K fragments (kf) and key-side
  // weights (kwr) are loaded into registers during the current tile, where few registers are live (pass
  // A: before its second Compose; pass C: at the start of the tensor-core stage), so neither load is
  // exposed at the next tile's start. The weights are stored after a barrier that follows the tile's last
  // read of them (pass C: the one before its tensor-core stage, so a tile costs one barrier at its start
  // instead of two). Loads past the last tile are clamped and not used. The V fragments of dO V^T (vf) are
  // loaded early in their own tile (pass A: right after QK^T; pass C: before the P' Compose), so that
  // their latency overlaps a Compose.
  constexpr bool AHEAD = C::QD_SMEM;
  // (The loads ahead go through registers: load_key_weights / store_key_weights, fp32 or bf16.)
  uint4 kf[HP][D / 32], vf[HP][D / 32], kwr[Tl::KWR];
  auto load_ahead = [&](int kb) {
    load_key_frags<NL, D>(kf, kb_, kb, S, tl);
    tl.load_key_weights(dwb, kb, S, kwr);
  };

  // ---- pass A: Delta = rowsum(P * dP).
  {
    float dacc[HP][2];
#pragma unroll
    for (int h = 0; h < HP; ++h) dacc[h][0] = dacc[h][1] = 0.f;
    auto tile_a = [&](const Tl& tk, int kb) {
      float x[HP][4], y[HP][4], tot[16];
      if constexpr (AHEAD) {
        scores_staged<NL, D>(x, kf, tl, qds);
        load_key_frags<NL, D>(vf, vb, kb, S, tl);
      } else {
        qk_scores(x, kb);
      }
      tk.compose(x, 0, false, tot, 0);
      probs<NL>(x, tk, st, kb, cell_ok);
      if constexpr (AHEAD) {
        scores_staged<NL, D>(y, vf, tl, qds + N * kBQ * D);
        dov_mask(y, kb);
        load_ahead(kb + kBK);
      } else {
        dov_scores(y, kb);
      }
      tk.red_free();
      tk.compose(y, 1, true, tot, 1);  // dP
#pragma unroll
      for (int h = 0; h < HP; ++h)
#pragma unroll
        for (int e = 0; e < 4; ++e) dacc[h][e >> 1] = fmaf(x[h][e], y[h][e], dacc[h][e >> 1]);
      if constexpr (AHEAD) {
        __syncthreads();
        tl.store_key_weights(kwr, tl.kw);
      }
    };
    if constexpr (PROF & 8) {  // timing only: no Delta pass (Delta = 0)
    } else if constexpr (AHEAD) {
      load_key_frags<NL, D>(kf, kb_, kstart, S, tl);
      for_key_tiles_self_staged<NL>(tl, dwb, kstart, khi, S, tile_a);
    } else {
      for_key_tiles<NL>(tl, kw2, dwb, kstart, khi, 2, S, tile_a);
    }
    __syncthreads();
    float* part = tl.red;  // [4][N][kBQ]
#pragma unroll
    for (int h = 0; h < HP; ++h)
#pragma unroll
      for (int ri = 0; ri < 2; ++ri) {
        float s = dacc[h][ri];
        s += __shfl_xor_sync(0xffffffffu, s, 1);
        s += __shfl_xor_sync(0xffffffffu, s, 2);
        if (c == 0) part[(kwp * NL + HP * hw + h) * kBQ + g + 8 * ri] = s;
      }
    __syncthreads();
    for (int idx = tid; idx < NL * kBQ; idx += THREADS)
      dl[idx] = part[idx] + part[NL * kBQ + idx] + part[2 * NL * kBQ + idx] + part[3 * NL * kBQ + idx];
    if constexpr (SPL) cluster_sync();  // exchange buffer 0 (part) free in both CTAs
  }

  // ---- pass C: all gradients.
  constexpr int QA = 5 * HP / 2;  // query-side weight-gradient sums per lane and Compose
  float qacc[2][QA];
#pragma unroll
  for (int i = 0; i < QA; ++i) qacc[0][i] = qacc[1][i] = 0.f;
  constexpr int CB = C::CB, SB = C::SB, SF = C::SF;
  // B operand block of the dK/dV matmuls (without QD_SMEM or BA): rows [row0, row0 + 16) x columns
  // [d0, d0 + CB) of head n of a [rows][N][D] tensor -> scr_b [16][SB] (16-byte loads, rows past nrows
  // zeroed). BA builds fill the same blocks with cp.async one block ahead (take_op_block).
  auto stage_b = [&](const bf16* base, int row0, int nrows, int n, int d0) {
    constexpr int PR = CB / 8;  // 16-byte pieces per row
    uint4 val[16 * PR / 32];
#pragma unroll
    for (int i = 0; i < 16 * PR / 32; ++i) {
      const int idx = lane + 32 * i, r = idx / PR, p = idx % PR;
      val[i] = make_uint4(0, 0, 0, 0);
      if (row0 + r < nrows) val[i] = ldg16(base + (int64_t(row0 + r) * N + hoff + n) * D + d0 + 8 * p);
    }
    __syncwarp();
#pragma unroll
    for (int i = 0; i < 16 * PR / 32; ++i) {
      const int idx = lane + 32 * i;
      *reinterpret_cast<uint4*>(scr_b + (idx / PR) * SB + 8 * (idx % PR)) = val[i];
    }
    __syncwarp();
  };
  // Output blocks: out_block() returns the fp32 16 x CB block to fill next, after the bulk reduction
  // issued from it (one flush ago with one block, two with two) has finished reading it, so that the wait
  // comes after the matmuls of the next block; flush() adds it to rows
  // [row0, row0 + 16) (those < nrows), columns [d0, d0 + CB) of head n of the workspace: one bulk
  // asynchronous reduction (TMA) of 4 CB bytes per row, issued by lanes 0-15, or with TR one bulk-tensor
  // reduction per 16 x 32 box from lane 0 (workspace m of maps: 0 dq, 1 dk, 2 dv). Every lane commits a
  // (possibly empty) group per flush, so the group counts agree across the warp.
  int ob = 0;
  auto out_block = [&]() -> float* {
    if constexpr (C::DBL_SCR) asm volatile("cp.async.bulk.wait_group.read 1;\n" ::: "memory");
    else asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
    __syncwarp();
    return scr_f + ob * 16 * SF;
  };
  auto flush = [&]([[maybe_unused]] float* ws, int row0, [[maybe_unused]] int nrows, int n, int d0,
                   [[maybe_unused]] int m) {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncwarp();
    if constexpr (C::TR) {
      // One lane, one bulk-tensor reduction per 16 x 32 box (rows past the workspace's end are clipped).
      if (!(PROF & 4) && lane == 0) {
#pragma unroll
        for (int bx = 0; bx < CB / 32; ++bx)
          asm volatile("cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.tile.bulk_group"
                       " [%0, {%1, %2, %3, %4}], [%5];\n"
                       :: "l"(reinterpret_cast<uint64_t>(&maps.tm[m])), "r"(d0 + 32 * bx), "r"(hoff + n), "r"(row0),
                          "r"(b), "r"(smem_u32(scr_f + ob * 16 * SF + bx * 512)) : "memory");
      }
    } else if (!(PROF & 4) && lane < 16 && row0 + lane < nrows) {
      float* dst = ws + (int64_t(row0 + lane) * N + hoff + n) * D + d0;
      const uint32_t src = uint32_t(__cvta_generic_to_shared(scr_f + ob * 16 * SF + lane * SF));
      asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n"
                   :: "l"(dst), "r"(src), "n"(CB * 4) : "memory");
    }
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
    if constexpr (C::DBL_SCR) ob ^= 1;
  };
  auto stage_tile = [&](bf16* dst, const float (&x)[HP][4]) {
#pragma unroll
    for (int h = 0; h < HP; ++h)
#pragma unroll
      for (int ri = 0; ri < 2; ++ri)
        *reinterpret_cast<uint32_t*>(dst + ((HP * hw + h) * kBQ + g + 8 * ri) * PS + 8 * kwp + 2 * c) =
            pack_bf16(x[h][2 * ri], x[h][2 * ri + 1]);
  };
  // CL2: P' or dA into the pair's [N][32][PS] block at base, a shared::cluster address (this CTA's
  // own shared::cta addresses are valid ones; the peer's come from mapa), this CTA's rows at roff. Stores
  // to the peer are posted; the cluster barrier (B) of the tile orders them before the peer's reads, or
  // (C::BX, to_peer) they are st.async, each counting its 4 bytes on the peer's pair mbarrier.
  [[maybe_unused]] const uint32_t pmb = smem_u32(smem + C::OFF_PMB);  // C::BX: this CTA's pair mbarrier
  auto stage_pair = [&](uint32_t base, const float (&x)[HP][4], auto to_peer) {
    [[maybe_unused]] uint32_t pmb_peer = 0;
    if constexpr (C::BX) pmb_peer = Tl::peer_addr(pmb, crank ^ 1u);
#pragma unroll
    for (int h = 0; h < HP; ++h)
#pragma unroll
      for (int ri = 0; ri < 2; ++ri) {
        const uint32_t adr = base + 2 * (((HP * hw + h) * 2 * kBQ + roff + g + 8 * ri) * PS + 8 * kwp + 2 * c);
        const uint32_t v = pack_bf16(x[h][2 * ri], x[h][2 * ri + 1]);
        if constexpr (C::BX && decltype(to_peer)::value)
          asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];\n"
                       ::"r"(adr), "r"(v), "r"(pmb_peer) : "memory");
        else
          asm volatile("st.shared::cluster.u32 [%0], %1;\n" ::"r"(adr), "r"(v) : "memory");
      }
  };
  // C::BX: what the peer stores into this CTA's pair block per tile (4 bytes per store, 16 stores per
  // thread) are the expected bytes of each phase of the pair mbarrier (one local arrival per phase, by thread
  // 0 once its own half is written); pair_wait(kb) waits for the phase of the tile at kb (the tiles run
  // from kstart_c in steps of kBK in both CTAs: phase parity = tile index & 1).
  constexpr int PAIR_TX = THREADS * 2 * HP * 4;
  static_assert(!C::BX || AHEAD, "pair_wait's parity assumes pass C's tiles from kstart_c (the AHEAD loop)");
  auto pair_wait = [&](int kb) {
    const uint32_t par = uint32_t((kb - kstart_c) / kBK) & 1u;
    uint32_t done = 0;
    while (!done)
      asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n"
                   " selp.u32 %0, 1, 0, p;\n}\n"
                   : "=r"(done) : "r"(pmb), "r"(par) : "memory");
  };
  // CL2: this CTA's dA for its own dQ, in exchange buffer 0 (free from the dA Compose's barrier to the
  // next tile's first Compose): the warp's own exchange slot (2048 bytes at warp (kwp, hw)) holds heads
  // HP hw .. + HP - 1, rows 0-15, keys 8 kwp .. + 7 as [head][row][8] (its last readers, the dP Compose's,
  // are the warps of its own key slice, which the dA Compose's barrier has passed). ldmatrix reads 8 x 8
  // blocks of it conflict-free.
  auto stage_red = [&](const float (&x)[HP][4]) {
    unsigned char* base = reinterpret_cast<unsigned char*>(tl.red) + warp * 2048;
#pragma unroll
    for (int h = 0; h < HP; ++h)
#pragma unroll
      for (int ri = 0; ri < 2; ++ri)
        *reinterpret_cast<uint32_t*>(base + (h * kBQ + g + 8 * ri) * 16 + 4 * c) =
            pack_bf16(x[h][2 * ri], x[h][2 * ri + 1]);
  };
  static_assert(!CL2 || (Tl::RED_BYTES == NW * 2048 && HP * 256 <= 2048), "own dA in exchange buffer 0");
  uint32_t pp_own = smem_u32(Pp), pp_peer = pp_own;
  if constexpr (CL2) pp_peer = Tl::peer_addr(pp_own, crank ^ 1u);

  if constexpr (AHEAD) load_key_frags<NL, D>(kf, kb_, kstart_c, S, tl);
  // Exchange buffers of the four Composes of a tile: 0 (Z), 1 (P'), 0 (dP), 1 (dA); buffer 1 aliases
  // the tensor-core scratch, whose bulk reads end (wait below) before the next tile's first barrier.
  auto tile_c = [&](const Tl& tk, int kb) {
    float A[HP][4], x[HP][4], y[HP][4], tpre[16], tpost[16], te[16];
    if constexpr (AHEAD) scores_staged<NL, D>(A, kf, tl, qds);
    else qk_scores(A, kb);
#pragma unroll
    for (int h = 0; h < HP; ++h)
#pragma unroll
      for (int e = 0; e < 4; ++e) x[h][e] = A[h][e];
    tk.compose(x, 0, false, tpre, 0);  // Z
    probs<NL>(x, tk, st, kb, cell_ok);  // P
#pragma unroll
    for (int h = 0; h < HP; ++h)
#pragma unroll
      for (int e = 0; e < 4; ++e) y[h][e] = x[h][e];
    if constexpr (AHEAD) load_key_frags<NL, D>(vf, vb, kb, S, tl);
    tk.red_free();
    tk.compose(y, 1, false, tpost, 1);  // P'
    if constexpr (CL2) {
      // (A) the peer is done with the previous tile's pair block (only rank 0 stores into it here and
      // rank 1 not before its dA, but a wait under a branch costs ~580 B of spills)
      cluster_wait();
      if (!C::BX || role_k) stage_pair(role_k ? pp_peer : pp_own, y, std::bool_constant<C::BX>{});
      else stage_pair(pp_own, y, std::false_type{});
    } else {
      stage_tile(Pp, y);
    }
    if constexpr (AHEAD) {  // dP'
      scores_staged<NL, D>(y, vf, tl, qds + N * kBQ * D);
      dov_mask(y, kb);
    } else {
      dov_scores(y, kb);
    }
    tk.red_free();
    tk.compose(y, 1, true, te, 0, [&](const float (&er)[16]) {  // dP
      if (kws_b && !(PROF & 2)) compose_grads<NL>(tk, x, y, tpost, er, qacc[1], kws_b, 1, kb, S);
    });
#pragma unroll
    for (int h = 0; h < HP; ++h)
#pragma unroll
      for (int e = 0; e < 4; ++e) y[h][e] = x[h][e] * (y[h][e] - dl[(HP * hw + h) * kBQ + g + 8 * (e >> 1)]);  // dZ
    tk.red_free();
    tk.compose(y, 0, true, te, 1, [&](const float (&er)[16]) {  // dA
      if (kws_b && !(PROF & 2)) compose_grads<NL>(tk, A, y, tpre, er, qacc[0], kws_b, 0, kb, S);
    });
    if constexpr (CL2) {
      stage_red(y);
      if (!C::BX || !role_k) stage_pair(role_k ? pp_own : pp_peer, y, std::bool_constant<C::BX>{});
      else stage_pair(pp_own, y, std::false_type{});
      if constexpr (C::BX) {  // (B) this CTA's half of the pair's P' and dA written (the local arrival)
        if (tid == 0) {
          uint64_t state;
          asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 %0, [%1], %2;\n"
                       : "=l"(state) : "r"(pmb), "n"(PAIR_TX) : "memory");
        }
      } else {
        cluster_arrive();  // (B) this CTA's half of the pair's P' and dA written
      }
    } else {
      stage_tile(dAs, y);
    }
    __syncthreads();
    if constexpr (AHEAD) load_ahead(kb + kBK);
    // Tensor-core products of this tile, TC heads per warp, in blocks of CB columns of d. CL2: first dQ
    // for the warp's heads (this CTA's dA only), then the wait for the peer's half (B), then dK or dV.
    const int nit = (PROF & 1) ? 0 : CL2 ? 2 * TC : TC;
    if constexpr (CL2)
      if (nit == 0) {
        if constexpr (C::BX) pair_wait(kb);
        else cluster_wait();
      }
    // BA: the operand blocks of the stage, 4 (D / CB) per head; block 0 is issued here, each next one
    // when its predecessor's turn comes.
    const int nblk = nit * 4 * (D / CB);
    int bi = 0;
    if constexpr (C::BA)
      if (nblk > 0) issue_op_block<N, D, CB, SB>({kb_, qb, dob, scr_b, kb, t0, S, T, hoff + 2 * warp}, 0, lane);
#pragma unroll 1
    for (int it = 0; it < nit; ++it) {
      if (CL2 && it == TC) {  // (B)
        if constexpr (C::BX) pair_wait(kb);
        else cluster_wait();
      }
      const int hh = TC == 2 ? it & 1 : 0;
      const bool part_q = !CL2 || it < TC, part_kv = !CL2 || it >= TC;
      const int n = TC * warp + hh;
      const bf16* dAn = dAs + n * kBQ * PS;
      const bf16* Ppn = Pp + n * kBQ * PS;
      // ldmatrix lane addresses: row (lane % 8) + 8 ((lane / 8) % 2), column 8 (lane / 16) of a 16 x 16
      // block gives the A fragment of a row-major [m][k] block (ldsm4) and the B fragments of two n8
      // blocks of a row-major [k][n] block (ldsm4t); row (lane % 8) + 8 (lane / 16), column
      // 8 ((lane / 8) % 2) gives the A fragment of the transpose of a row-major [k][m] block (ldsm4t).
      const int lr = (lane & 7) + 8 * ((lane >> 3) & 1), lc = 8 * (lane >> 4);
      const int tr = (lane & 7) + 8 * (lane >> 4), tc = 8 * ((lane >> 3) & 1);
      const uint32_t sb = smem_u32(scr_b + lr * SB + lc);
      // C fragments (16 x CB fp32) -> the output block, rows g and g + 8.
      auto store_out = [&](float* out, const float (&acc)[CB / 8][4]) {
#pragma unroll
        for (int j = 0; j < CB / 8; ++j) {
          if constexpr (C::TR) {
            *reinterpret_cast<float2*>(out + sw_off(g, 8 * j + 2 * c)) = make_float2(acc[j][0], acc[j][1]);
            *reinterpret_cast<float2*>(out + sw_off(g + 8, 8 * j + 2 * c)) = make_float2(acc[j][2], acc[j][3]);
          } else {
            *reinterpret_cast<float2*>(out + g * SF + 8 * j + 2 * c) = make_float2(acc[j][0], acc[j][1]);
            *reinterpret_cast<float2*>(out + (g + 8) * SF + 8 * j + 2 * c) = make_float2(acc[j][2], acc[j][3]);
          }
        }
      };
      // The same for dQ's permuted columns (see below): row g holds columns 32 j + 8 c .. + 7 of tiles
      // 4 j .. 4 j + 3, two float4 per row and j (conflict-free: rows are SF = 4 mod 32 floats apart).
      auto store_q = [&](float* out, const float (&acc)[CB / 8][4]) {
#pragma unroll
        for (int j = 0; j < CB / 32; ++j)
#pragma unroll
          for (int ri = 0; ri < 2; ++ri) {
            float4* p = reinterpret_cast<float4*>(out + (g + 8 * ri) * SF + 32 * j + 8 * c);
            float4* p1 = p + 1;
            if constexpr (C::TR) {
              p = reinterpret_cast<float4*>(out + sw_off(g + 8 * ri, 32 * j + 8 * c));
              p1 = reinterpret_cast<float4*>(out + sw_off(g + 8 * ri, 32 * j + 8 * c + 4));
            }
            *p = make_float4(acc[4 * j][2 * ri], acc[4 * j][2 * ri + 1], acc[4 * j + 1][2 * ri],
                             acc[4 * j + 1][2 * ri + 1]);
            *p1 = make_float4(acc[4 * j + 2][2 * ri], acc[4 * j + 2][2 * ri + 1], acc[4 * j + 3][2 * ri],
                              acc[4 * j + 3][2 * ri + 1]);
          }
      };
      // acc (16 x CB) += A fragment af (16 x 16) times a 16 x CB operand block in shared memory, whose
      // ldmatrix lane address for columns [16 j, 16 j + 16) is bad[j]; with `zero` the accumulators start
      // from 0. The block is the warp's staged block (sbad) or, with QD_SMEM, the CTA's Q or dO (qdad).
      uint32_t sbad[CB / 16], qdad[2][CB / 16];
#pragma unroll
      for (int j = 0; j < CB / 16; ++j) {
        sbad[j] = sb + 32 * j;
#pragma unroll
        for (int which = 0; which < 2; ++which)
          qdad[which][j] = smem_u32(qds + ((which * N + n) * kBQ + lr) * D + 8 * ((2 * j + (lane >> 4)) ^ qd_swz(lr)));
      }
      auto mma_block = [&](float (&acc)[CB / 8][4], const uint32_t (&af)[4], bool zero,
                           const uint32_t (&bad)[CB / 16]) {
#pragma unroll
        for (int j = 0; j < CB / 16; ++j) {
          uint32_t bfr[4];
          ldsm4t(bfr, bad[j]);
          if (zero) {
            acc[2 * j][0] = acc[2 * j][1] = acc[2 * j][2] = acc[2 * j][3] = 0.f;
            acc[2 * j + 1][0] = acc[2 * j + 1][1] = acc[2 * j + 1][2] = acc[2 * j + 1][3] = 0.f;
          }
          mma16<false>(acc[2 * j], af[0], af[1], af[2], af[3], bfr[0], bfr[1]);
          mma16<false>(acc[2 * j + 1], af[0], af[1], af[2], af[3], bfr[2], bfr[3]);
        }
      };
#pragma unroll 1
      for (int cb = 0; cb < D; cb += CB) {
        float acc[CB / 8][4];
        if (part_q) {
          // dQ[t0.., n, cb..] += dA (16 x 32) K (32 x CB). With QD_SMEM (no operand block in the scratch) the
          // B fragments of K come straight from L2 as in the forward's P'V: 16-byte loads of 8 consecutive d
          // of one key, transposed by movmatrix; n8 tile 4 j + jj then holds the columns
          // cb + 32 j + 8 q + 2 jj + {0, 1} (q = 0..3), put back in place by store_q. Keys past S are
          // clamped (their dA is 0). Otherwise K is staged in 16 x CB blocks (take_op_block or stage_b).
#pragma unroll
          for (int j = 0; j < CB / 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll
          for (int kk = 0; kk < 2; ++kk) {
            uint32_t af[4];
            if constexpr (CL2)  // this CTA's dA from exchange buffer 0 (stage_red): key slice 2 kk + lane / 16
              ldsm4(af, smem_u32(reinterpret_cast<unsigned char*>(tl.red) +
                                 (2 * kk + (lane >> 4) + 4 * (n >> HPS)) * 2048 + ((n & (HP - 1)) * kBQ + lr) * 16));
            else
              ldsm4(af, smem_u32(dAn + lr * PS + 16 * kk + lc));
            if constexpr (C::QD_SMEM) {
              const bf16* ka = kb_ + (int64_t(min(kb + 16 * kk + g, S - 1)) * N + hoff + n) * D + cb + 8 * c;
              const bf16* kc = kb_ + (int64_t(min(kb + 16 * kk + 8 + g, S - 1)) * N + hoff + n) * D + cb + 8 * c;
#pragma unroll
              for (int j = 0; j < CB / 32; ++j) {
                const uint4 va = ldg16(ka + 32 * j), vc = ldg16(kc + 32 * j);
#pragma unroll
                for (int jj = 0; jj < 4; ++jj)
                  mma16<false>(acc[4 * j + jj], af[0], af[1], af[2], af[3], mov_trans(comp(va, jj)),
                               mov_trans(comp(vc, jj)));
              }
            } else if constexpr (C::BA) {
              const uint32_t off =
                  take_op_block<N, D, CB, SB>({kb_, qb, dob, scr_b, kb, t0, S, T, hoff + 2 * warp}, bi++, nblk, lane);
              uint32_t bad[CB / 16];
#pragma unroll
              for (int j = 0; j < CB / 16; ++j) bad[j] = sbad[j] + off;
              mma_block(acc, af, false, bad);
            } else {
              stage_b(kb_, kb + 16 * kk, S, n, cb);
              mma_block(acc, af, false, sbad);
            }
          }
          if constexpr (C::QD_SMEM) store_q(out_block(), acc);
          else store_out(out_block(), acc);
          flush(a.dq + int64_t(b) * T * N * D, t0, T, n, cb, 0);
        }
        if (!part_kv) continue;
        if constexpr (CL2) {
          // The pair's dK[kb + 16 kk.., n, cb..] += dA^T (16 x 32) Q (32 x CB) (rank 0), or dV += P'^T dO
          // (rank 1): pair rows 0-15 and 16-31 are this CTA's block and the peer's (or the reverse).
          const bf16* src = Pp + n * 2 * kBQ * PS;
          float* ws = (role_k ? a.dk : a.dv) + int64_t(b) * S * N * D;
          uint32_t pad[2][CB / 16];
#pragma unroll
          for (int j2 = 0; j2 < 2; ++j2) {
            const int blk = 16 * j2 == roff ? (role_k ? 0 : 1) : 2;
#pragma unroll
            for (int j = 0; j < CB / 16; ++j)
              pad[j2][j] = smem_u32(qds + ((blk * N + n) * kBQ + lr) * D +
                                    8 * (((CB < D ? cb >> 3 : 0) + 2 * j + (lane >> 4)) ^ qd_swz(lr)));
          }
#pragma unroll
          for (int kk = 0; kk < 2; ++kk) {
#pragma unroll
            for (int j2 = 0; j2 < 2; ++j2) {
              uint32_t af[4];
              ldsm4t(af, smem_u32(src + (16 * j2 + tr) * PS + 16 * kk + tc));
              mma_block(acc, af, j2 == 0, pad[j2]);
            }
            store_out(out_block(), acc);
            flush(ws, kb + 16 * kk, S, n, cb, role_k ? 1 : 2);
          }
        } else {
          // dK[kb + 16 kk.., n, cb..] += dA^T (16 x 16) Q (16 x CB); then dV += P'^T dO likewise.
#pragma unroll 1
          for (int which = 0; which < 2; ++which) {
            [[maybe_unused]] uint32_t bad[CB / 16];
            if constexpr (C::BA) {
              const uint32_t off =
                  take_op_block<N, D, CB, SB>({kb_, qb, dob, scr_b, kb, t0, S, T, hoff + 2 * warp}, bi++, nblk, lane);
#pragma unroll
              for (int j = 0; j < CB / 16; ++j) bad[j] = sbad[j] + off;
            } else if constexpr (!C::QD_SMEM) {
              stage_b(which ? dob : qb, t0, T, n, cb);
            } else if constexpr (CB < D) {  // the staged Q or dO columns [cb, cb + CB) (qdad: columns [0, CB))
#pragma unroll
              for (int j = 0; j < CB / 16; ++j)
                bad[j] = smem_u32(qds + ((which * N + n) * kBQ + lr) * D +
                                  8 * (((cb >> 3) + 2 * j + (lane >> 4)) ^ qd_swz(lr)));
            }
            const bf16* src = which ? Ppn : dAn;
            float* ws = (which ? a.dv : a.dk) + int64_t(b) * S * N * D;
#pragma unroll
            for (int kk = 0; kk < 2; ++kk) {
              uint32_t af[4];
              ldsm4t(af, smem_u32(src + tr * PS + 16 * kk + tc));
              if constexpr (C::BA || (C::QD_SMEM && CB < D)) mma_block(acc, af, true, bad);
              else mma_block(acc, af, true, C::QD_SMEM ? qdad[which] : sbad);
              store_out(out_block(), acc);
              flush(ws, kb + 16 * kk, S, n, cb, 1 + which);
            }
          }
        }
      }
    }
    // (A) done with this tile's pair block: relaxed (no memory barrier before it), as the block's reads
    // are complete, their values consumed by the matmuls above.
    if constexpr (CL2) cluster_arrive_relaxed();
    // The scratch is the next tile's exchange buffer 1: its bulk reads must be over.
    asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
    __syncwarp();
    if constexpr (AHEAD) tl.store_key_weights(kwr, tl.kw);
  };
  // CL2: the CTAs of a pair meet twice per tile, each half a split barrier, so that a CTA waits only where
  // it needs its peer: (A) arrived at after a tile's last read of the pair block, waited on before the
  // first store into the peer's block in the next tile; (B) arrived at after both stores of a tile, waited
  // on before the first read of the peer's half. Both CTAs walk the same tiles, so the halves pair up; (A)
  // is primed here and its last phase waited for after the loop. (A) is the cluster barrier; (B) is the
  // pair mbarrier with C::BX (the default), otherwise the same cluster barrier, alternating with (A).
  if constexpr (C::BX) {  // the pair mbarrier: initialised before (A)'s first phase, which the peer waits for
    if (tid == 0) {
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(pmb) : "memory");
      asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
  }
  if constexpr (CL2) cluster_arrive();
  if constexpr (AHEAD) for_key_tiles_self_staged<NL>(tl, dwb, kstart_c, khi_c, S, tile_c);
  else for_key_tiles<NL>(tl, kw2, dwb, kstart, khi, 2, S, tile_c);
  if constexpr (CL2) cluster_wait();

  __syncthreads();
  if constexpr (SPL) cluster_sync();  // no st.async into a CTA that has exited

  // ---- query-side weight gradients: sum the 4 key-warps, add to ddw (branches 0 and 2).
  if (!a.ddw) return;
  float* qs = reinterpret_cast<float*>(smem + C::OFF_PP);  // [2][4][kBQ][N][5]
#pragma unroll
  for (int cp = 0; cp < 2; ++cp)
#pragma unroll
    for (int ri = 0; ri < 2; ++ri)
#pragma unroll
      for (int i = 0; i < QA / 2; ++i) {
        const int row = g + 8 * ri, head = HP * hw + (HP / 2) * (c & 1) + (HP / 4) * ((c >> 1) & 1) + i / 5;
        qs[(((cp * 4 + kwp) * kBQ + row) * NL + head) * 5 + i % 5] = qacc[cp][ri * (QA / 2) + i];
      }
  __syncthreads();
  for (int idx = tid; idx < 2 * kBQ * NL * 5; idx += THREADS) {
    const int j = idx % 5, head = (idx / 5) % NL, row = (idx / (5 * NL)) % kBQ, cp = idx / (5 * NL * kBQ);
    if (t0 + row >= T) continue;
    float s = 0.f;
#pragma unroll
    for (int k4 = 0; k4 < 4; ++k4) s += qs[(((cp * 4 + k4) * kBQ + row) * NL + head) * 5 + j];
    bf16* p = a.ddw + ((int64_t(b) * S + a.q_pos0 + t0 + row) * 4 + (cp ? 2 : 0)) * WN + j * N + hoff + head;
    *p = __float2bfloat16_rn(__bfloat162float(*p) + s);
  }
}

// ddw (branches 1 and 3) += the key-side workspace [B, S, 2, 5N].
__global__ void add_key_grads_kernel(const float* __restrict__ kws, bf16* __restrict__ ddw, int64_t BS, int WN) {
  const int64_t n = BS * 2 * WN;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t bs = i / (2 * WN);
    const int rem = int(i % (2 * WN)), slot = rem / WN, j = rem % WN;
    bf16* p = ddw + (bs * 4 + (slot ? 3 : 1)) * WN + j;
    *p = __float2bfloat16_rn(__bfloat162float(*p) + kws[i]);
  }
}

// A kernel launch in clusters of two CTAs along x.
template <class Kern, class... Args>
void launch_cluster2(Kern kern, dim3 grid, int threads, int smem, cudaStream_t st, const Args&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(unsigned(threads));
  cfg.dynamicSmemBytes = size_t(smem);
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 2;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  DCF_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kern, args...));
}

// The forward runs without the prefetch (PF): at N16 D64 (two CTAs per SM, 128 registers) it spills
// 860 B instead of 440 B and measured 2 % slower with it (docs/perf/dcmha_fused.md, F3).
template <int N, int D, int G, int MINB = 1, bool PF = false, bool SPL = false, bool PR = false>
void launch(const FusedArgs& a, int B, cudaStream_t st) {
  using C = Cfg<N, D, G, MINB, PF, SPL, PR>;
  auto kern = dcmha_fused_fwd_kernel<N, D, G, MINB, PF, SPL, PR>;
  DCF_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM));
  dim3 grid(unsigned((a.T + kBQ - 1) / kBQ), unsigned(B));
  if constexpr (SPL) {
    grid.x *= 2;  // the two halves of the heads of each query tile, a cluster of two
    launch_cluster2(kern, grid, C::THREADS, C::SMEM, st, a);
  } else {
    kern<<<grid, C::THREADS, C::SMEM, st>>>(a);
    DCF_CUDA_LAUNCH_CHECK();
  }
}


// The tensor map of an fp32 [B][rows][N][D] gradient workspace for the backward's bulk-tensor reductions:
// boxes of 16 rows x 1 head x 32 d (128 bytes per row, 128-byte swizzle), rows past `rows` clipped.
[[maybe_unused]] void encode_ws_map(CUtensorMap* m, float* base, int64_t B, int64_t rows, int64_t N, int64_t D) {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult q{};
    DCF_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q));
    DCF_CHECK(fn != nullptr && q == cudaDriverEntryPointSuccess, "cuTensorMapEncodeTiled is not available");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  const cuuint64_t dims[4] = {cuuint64_t(D), cuuint64_t(N), cuuint64_t(rows), cuuint64_t(B)};
  const cuuint64_t strides[3] = {cuuint64_t(D * 4), cuuint64_t(N * D * 4), cuuint64_t(rows * N * D * 4)};
  const cuuint32_t box[4] = {32, 1, 16, 1}, estr[4] = {1, 1, 1, 1};
  const CUresult r = encode(m, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, base, dims, strides, box, estr,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  DCF_CHECK(r == CUDA_SUCCESS, "cuTensorMapEncodeTiled failed (", int(r), ")");
}

// The prefetch costs registers: the one-CTA N = 32 build (512 threads capped at 128) spills twice as much
// with it (about 4 KB instead of 2), so it is off there. It is on by default for N16 D128 (N16 D64 uses
// that shared memory for its staged Q and dO instead), and the N32 head split (N16 CTAs) turns it on.
// The builds with bulk-tensor reductions (BwdCfg::TR) get their tensor maps here, the others none.
template <int N, int D, int PROF = 0, bool PF = (N == 16 && D != 64), bool CL2 = false, bool SPL = false,
          int HP = 8>
void launch_bwd(const BwdArgs& a, int B, cudaStream_t st) {
  using C = BwdCfg<N, D, PF, CL2, SPL, HP>;
  auto kern = dcmha_fused_bwd_kernel<N, D, PROF, PF, CL2, SPL, HP>;
  BwdMaps maps{};
  if constexpr (C::TR) {
    encode_ws_map(&maps.tm[0], a.dq, B, a.T, N, D);
    encode_ws_map(&maps.tm[1], a.dk, B, a.S, N, D);
    encode_ws_map(&maps.tm[2], a.dv, B, a.S, N, D);
  }
  DCF_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM));
  dim3 grid(unsigned((a.T + kBQ - 1) / kBQ), unsigned(B));
  if constexpr (CL2 || SPL) {
    if (CL2) grid.x += grid.x & 1;  // whole clusters of two CTAs along x
    else grid.x *= 2;               // the two halves of the heads of each query tile
    launch_cluster2(kern, grid, C::Tl::THREADS, C::SMEM, st, a, maps);
  } else {
    kern<<<grid, C::Tl::THREADS, C::SMEM, st>>>(a, maps);
    DCF_CUDA_LAUNCH_CHECK();
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Timing-only builds (compiled with -DDCF_KERNEL_TIMING_BUILDS=ON): the N16 D64 forward at one CTA
// per SM (DCF_DCMHA_FUSED_OCC=1), the same with two key tiles per iteration (DCF_DCMHA_FUSED_PAIR=1: the
// PR build, docs/perf F9: 3.5 % faster than the default at T 2048 without a window, slower with one and at
// T 8192), the N16 D64 builds with the key-weight prefetch
// (DCF_DCMHA_FUSED_PF=1: forward with the second exchange buffer, backward with Q and dO read from L2),
// the N32 build that is not the default (one CTA of 512 threads for all heads, or the head split:
// DCF_DCMHA_FUSED_N32_ALT=1, see n32_split), the N16 D64 backward with four heads per warp (16 warps, one
// CTA per SM at 128 registers: DCF_DCMHA_FUSED_HP4=1 alone, =2 in clusters of two with bf16 staged weights)
// and the backward's ablations. The variables are read at every
// call; setting one in a build without these kernels is an error rather than a silent fallback to the
// default build.
bool env_on(const char* name) {
  const char* v = std::getenv(name);
  return v && v[0] == '1';
}
void require_timing_builds(const char* what) {
  DCF_CHECK(DCF_KERNEL_TIMING_BUILDS, what, " selects a timing-only kernel build; configure with "
            "-DDCF_KERNEL_TIMING_BUILDS=ON");
}
// The N16 D64 backward with four heads per warp that DCF_DCMHA_FUSED_HP4 asks for: 0 (unset or 0: the
// default build), 1 (one CTA of 16 warps per SM), 2 (the same in clusters of two, as the default build).
int hp4_build() {
  const char* v = std::getenv("DCF_DCMHA_FUSED_HP4");
  if (!v || !v[0] || (v[0] == '0' && !v[1])) return 0;
  DCF_CHECK((v[0] == '1' || v[0] == '2') && !v[1], "DCF_DCMHA_FUSED_HP4=", v, " is not 0, 1 or 2");
  return v[0] - '0';
}
// Whether an N32 call runs the head split: the default build (DCF_N32_SPLIT_DEFAULT), or the other one
// where DCF_DCMHA_FUSED_N32_ALT=1 asks for it (a timing-only build).
bool n32_split() {
  if (!env_on("DCF_DCMHA_FUSED_N32_ALT")) return DCF_N32_SPLIT_DEFAULT;
  require_timing_builds("DCF_DCMHA_FUSED_N32_ALT=1");
  return !DCF_N32_SPLIT_DEFAULT;
}

}  // namespace

bool dcmha_fused_timing_builds() { return DCF_KERNEL_TIMING_BUILDS; }

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
  a.stats = reinterpret_cast<float2*>(sh.softmax_stats);
  a.T = int(sh.T);
  a.S = int(sh.S);
  a.q_pos0 = int(sh.q_pos0);
  a.window = int(sh.window);
  const int B = int(sh.B);
  // N = 16, D = 64 runs capped at 128 registers for two CTAs per SM (452 B of spills), 10-22 % faster
  // than one CTA at 228 registers (docs/perf/dcmha_fused.md, F1 vs F2; DCF_DCMHA_FUSED_OCC=1 times the
  // one-CTA build, DCF_DCMHA_FUSED_PAIR=1 the one-CTA build with two key tiles per iteration,
  // DCF_DCMHA_FUSED_PF=1 the prefetch build: see require_timing_builds).
  const bool occ = env_on("DCF_DCMHA_FUSED_OCC"), pf = env_on("DCF_DCMHA_FUSED_PF");
  const bool pair = env_on("DCF_DCMHA_FUSED_PAIR");
  if (sh.N == 16 && sh.D == 64 && (occ || pf || pair)) {
    require_timing_builds(occ ? "DCF_DCMHA_FUSED_OCC=1" : pf ? "DCF_DCMHA_FUSED_PF=1" : "DCF_DCMHA_FUSED_PAIR=1");
#if DCF_KERNEL_TIMING_BUILDS
    if (occ) launch<16, 64, 1, 1>(a, B, st);
    else if (pf) launch<16, 64, 1, 2, true>(a, B, st);
    else launch<16, 64, 1, 1, false, false, true>(a, B, st);
#endif
  } else if (sh.N == 16 && sh.D == 64) {
    launch<16, 64, 1, 2>(a, B, st);
  } else if (sh.N == 16 && sh.D == 128) {
    launch<16, 128, 2>(a, B, st);
  } else if (sh.N == 32) {
    const bool split = n32_split();  // (each #if compiles only the builds that can run)
#if DCF_KERNEL_TIMING_BUILDS || DCF_N32_SPLIT_DEFAULT
    if (split && sh.D == 64) launch<32, 64, 1, 1, true, true>(a, B, st);
    else if (split) launch<32, 128, 2, 1, true, true>(a, B, st);
#endif
#if DCF_KERNEL_TIMING_BUILDS || !DCF_N32_SPLIT_DEFAULT
    if (!split && sh.D == 64) launch<32, 64, 1>(a, B, st);
    else if (!split) launch<32, 128, 2>(a, B, st);
#endif
  }
  else DCF_CHECK(false, "dcmha_fused_forward: unsupported N=", sh.N, " D=", sh.D);
}

bool dcmha_fused_backward_supported(const DcmhaShape& sh, const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& dw, const Tensor& dout, const Tensor& dq, const Tensor& dk,
                                    const Tensor& dv, const Tensor& ddw, std::string* why) {
  if (!dcmha_fused_supported(sh, q, k, v, dw, dout, why)) return false;
  if (!aligned16(dq.raw()) || !aligned16(dk.raw()) || !aligned16(dv.raw())) {
    if (why) *why = "gradient pointers not 16-byte aligned";
    return false;
  }
  if (ddw.defined() && ddw.dtype() != DType::bf16) {
    if (why) *why = "ddw is not bf16";
    return false;
  }
  return true;
}

void dcmha_fused_backward(const DcmhaShape& sh, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dw,
                          const Tensor& dout, Tensor& dq, Tensor& dk, Tensor& dv, Tensor& ddw, cudaStream_t st,
                          int ablate) {
  const Device dev = q.device();
  const int64_t ND = sh.N * sh.D, WN = (2 * kI + 1) * sh.N;
  Tensor dq32 = Tensor::zeros({sh.B * sh.T * ND}, DType::f32, dev);
  Tensor dk32 = Tensor::zeros({sh.B * sh.S * ND}, DType::f32, dev);
  Tensor dv32 = Tensor::zeros({sh.B * sh.S * ND}, DType::f32, dev);
  Tensor kws = ddw.defined() ? Tensor::zeros({sh.B * sh.S * 2 * WN}, DType::f32, dev) : Tensor();
  BwdArgs a;
  a.q = static_cast<const bf16*>(q.raw());
  a.k = static_cast<const bf16*>(k.raw());
  a.v = static_cast<const bf16*>(v.raw());
  a.dw = static_cast<const bf16*>(dw.raw());
  a.dout = static_cast<const bf16*>(dout.raw());
  a.ddw = ddw.defined() ? static_cast<bf16*>(ddw.raw()) : nullptr;
  a.stats = reinterpret_cast<const float2*>(sh.softmax_stats);
  a.dq = dq32.data<float>();
  a.dk = dk32.data<float>();
  a.dv = dv32.data<float>();
  a.kws = ddw.defined() ? kws.data<float>() : nullptr;
  a.T = int(sh.T);
  a.S = int(sh.S);
  a.q_pos0 = int(sh.q_pos0);
  a.window = int(sh.window);
  const int B = int(sh.B);
  const bool pf = sh.N == 16 && sh.D == 64 && env_on("DCF_DCMHA_FUSED_PF");
  const int hp4 = sh.N == 16 && sh.D == 64 ? hp4_build() : 0;
  if (ablate != 0 || pf || hp4) {
    require_timing_builds(ablate != 0 ? "a backward ablation" : pf ? "DCF_DCMHA_FUSED_PF=1" : "DCF_DCMHA_FUSED_HP4");
    DCF_CHECK(sh.N == 16 && sh.D == 64 && ablate >= 0 && ablate <= 6, "dcmha_fused_backward: ablation ", ablate,
              " is not built (1-6, N16 D64 only)");
    DCF_CHECK(!(pf && hp4) && !(hp4 && ablate != 0), "dcmha_fused_backward: DCF_DCMHA_FUSED_HP4 builds run alone "
              "(no prefetch, no ablation)");
#if DCF_KERNEL_TIMING_BUILDS
    if (hp4 == 2) launch_bwd<16, 64, 0, false, true, false, 4>(a, B, st);
    else if (hp4 == 1) launch_bwd<16, 64, 0, false, false, false, 4>(a, B, st);
    else if (ablate == 1) launch_bwd<16, 64, 1, false, true>(a, B, st);
    else if (ablate == 2) launch_bwd<16, 64, 2, false, true>(a, B, st);
    else if (ablate == 3) launch_bwd<16, 64, 3, false, true>(a, B, st);
    else if (ablate == 4) launch_bwd<16, 64, 4, false, true>(a, B, st);
    else if (ablate == 5) launch_bwd<16, 64>(a, B, st);
    else if (ablate == 6) launch_bwd<16, 64, 8, false, true>(a, B, st);
    else launch_bwd<16, 64, 0, true>(a, B, st);
#endif
  } else if (sh.N == 16 && sh.D == 64) launch_bwd<16, 64, 0, false, true>(a, B, st);
  else if (sh.N == 16 && sh.D == 128) launch_bwd<16, 128>(a, B, st);
  else if (sh.N == 32) {
    const bool split = n32_split();
#if DCF_KERNEL_TIMING_BUILDS || DCF_N32_SPLIT_DEFAULT
    if (split && sh.D == 64) launch_bwd<32, 64, 0, true, false, true>(a, B, st);
    else if (split) launch_bwd<32, 128, 0, true, false, true>(a, B, st);
#endif
#if DCF_KERNEL_TIMING_BUILDS || !DCF_N32_SPLIT_DEFAULT
    if (!split && sh.D == 64) launch_bwd<32, 64>(a, B, st);
    else if (!split) launch_bwd<32, 128>(a, B, st);
#endif
  }
  else DCF_CHECK(false, "dcmha_fused_backward: unsupported N=", sh.N, " D=", sh.D);
  accumulate_into(DType::bf16, dq.raw(), DType::f32, dq32.raw(), dq32.numel());
  accumulate_into(DType::bf16, dk.raw(), DType::f32, dk32.raw(), dk32.numel());
  accumulate_into(DType::bf16, dv.raw(), DType::f32, dv32.raw(), dv32.numel());
  if (ddw.defined()) {
    add_key_grads_kernel<<<unsigned(std::min<int64_t>((sh.B * sh.S * 2 * WN + 255) / 256, 4096)), 256, 0, st>>>(
        kws.data<float>(), static_cast<bf16*>(ddw.raw()), sh.B * sh.S, int(WN));
    DCF_CUDA_LAUNCH_CHECK();
  }
}

}  // namespace dcf::cuda
