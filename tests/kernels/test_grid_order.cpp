// The fused DCMHA kernels' CTA order (kernels/grid_order.h) against an enumeration of the order it
// promises: every (x, batch) once, cluster units together, and in dispatch order the heaviest tiles
// (smallest x) of every batch element of a group before any lighter one.
#include <gtest/gtest.h>

#include <set>
#include <utility>
#include <vector>

#include "kernels/grid_order.h"

using dcf::cuda::grid_slot_of;
using dcf::cuda::GridSlot;

namespace {

// (x, batch) of every CTA in dispatch order (blockIdx.y slowest, x fastest) from the function under test.
template <int U, bool ALL, int GROUP>
std::vector<std::pair<unsigned, unsigned>> dispatched(unsigned gx, unsigned gy) {
  std::vector<std::pair<unsigned, unsigned>> out;
  for (unsigned by = 0; by < gy; ++by)
    for (unsigned bx = 0; bx < gx; ++bx) {
      const GridSlot s = grid_slot_of<U, ALL, GROUP>(bx, by, gx, gy);
      out.emplace_back(s.x, s.batch);
    }
  return out;
}

// The same list built from the description: groups of `group` batch elements one after the other (0 =
// all), in each group the units by increasing x, the batch elements of the group in turn for each unit,
// the U CTAs of a unit consecutive.
std::vector<std::pair<unsigned, unsigned>> expected(unsigned gx, unsigned gy, unsigned U, unsigned group) {
  std::vector<std::pair<unsigned, unsigned>> out;
  const unsigned g = group == 0 ? gy : group;
  for (unsigned first = 0; first < gy; first += g)
    for (unsigned xu = 0; xu < gx / U; ++xu)
      for (unsigned b = first; b < gy && b < first + g; ++b)
        for (unsigned k = 0; k < U; ++k) out.emplace_back(xu * U + k, b);
  return out;
}

template <int U, int GROUP>
void check_all_grids() {
  for (unsigned gx = U; gx <= 64; gx += U)
    for (unsigned gy = 1; gy <= 9; ++gy) {
      SCOPED_TRACE(testing::Message() << "U " << U << " group " << GROUP << " grid " << gx << " x " << gy);
      const auto got = dispatched<U, true, GROUP>(gx, gy);
      ASSERT_EQ(got, expected(gx, gy, U, GROUP));
      // A bijection onto the grid (implied by the comparison; stated for a clearer failure).
      const std::set<std::pair<unsigned, unsigned>> distinct(got.begin(), got.end());
      ASSERT_EQ(distinct.size(), size_t(gx) * gy);
    }
}

TEST(GridOrder, BlockIdxOrderWithoutAll) {
  for (unsigned gx : {1u, 2u, 7u, 128u})
    for (unsigned gy : {1u, 3u, 8u}) {
      const auto got = dispatched<2, false, 0>(gx, gy);
      size_t i = 0;
      for (unsigned by = 0; by < gy; ++by)
        for (unsigned bx = 0; bx < gx; ++bx, ++i) ASSERT_EQ(got[i], std::make_pair(bx, by)) << gx << " x " << gy;
    }
}

TEST(GridOrder, AllBatchesHeaviestFirst) {
  check_all_grids<1, 0>();
  check_all_grids<2, 0>();
  // The kernels' launch: 128 query tiles of a T 2048 sequence, 8 batch elements.
  const auto got = dispatched<1, true, 0>(128, 8);
  for (unsigned i = 0; i < 8; ++i) EXPECT_EQ(got[i], std::make_pair(0u, i));  // every batch's heaviest tile first
  EXPECT_EQ(got.back(), std::make_pair(127u, 7u));
}

TEST(GridOrder, BatchGroups) {
  check_all_grids<1, 1>();
  check_all_grids<1, 2>();
  check_all_grids<1, 3>();
  check_all_grids<2, 2>();
  check_all_grids<2, 4>();
  // A group size above the batch count is one group of all.
  EXPECT_EQ((dispatched<1, true, 16>(32, 5)), (dispatched<1, true, 0>(32, 5)));
}

}  // namespace
