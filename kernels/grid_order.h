// The order in which the CTAs of the fused DCMHA kernels (dcmha_fused.cu) take their work: which query
// tile (x) and batch element the CTA at blockIdx (bx, by) of a (gx, gy) grid computes. A pure function of
// the launch coordinates, shared by the kernels and the CPU tests.
#pragma once

#if defined(__CUDACC__)
#define DCF_HOST_DEVICE __host__ __device__
#else
#define DCF_HOST_DEVICE
#endif

namespace dcf::cuda {

struct GridSlot {
  unsigned x;      // the CTA's place among its batch element's CTAs (x = 0: the heaviest causal tile)
  unsigned batch;  // the batch element
};

// The grid is (query tiles, rounded up to whole units; batch); CTAs are dispatched in blockIdx order, x
// fastest. A unit is U CTAs consecutive along x (one CTA, or the two CTAs of a cluster) and stays together.
// !ALL: as blockIdx gives it (each batch element's tiles heaviest first, batch after batch). ALL: the units
// are ordered heaviest first over the whole grid with the batch varying fastest, in groups of GROUP batch
// elements taken one after the other (a shorter last group; GROUP 0 = one group of all), so that the
// heaviest tiles of every batch element of a group start before any lighter one.
template <int U, bool ALL, int GROUP>
DCF_HOST_DEVICE inline GridSlot grid_slot_of(unsigned bx, unsigned by, unsigned gx, unsigned gy) {
  static_assert(U >= 1 && GROUP >= 0, "units of at least one CTA, groups of at least one batch element");
  if constexpr (!ALL) return GridSlot{bx, by};
  const unsigned L = bx / U + gx / U * by;  // the unit's place in dispatch order
  if constexpr (GROUP > 0) {
    const unsigned X = gx / U, grp = L / (X * GROUP), p = L % (X * GROUP);
    const unsigned gb = gy - grp * GROUP < unsigned(GROUP) ? gy - grp * GROUP : unsigned(GROUP);  // this group's size
    return GridSlot{p / gb * U + bx % U, grp * GROUP + p % gb};
  }
  return GridSlot{L / gy * U + bx % U, L % gy};
}

}  // namespace dcf::cuda
