// Data-parallel routing without sockets: the least-loaded policy, the router's rank table and
// the merge of the ranks' metric expositions (tests/e2e/test_dp.py runs real ranks).
#include <gtest/gtest.h>

#include <chrono>
#include <vector>

#include "atom/core/error.h"
#include "atom/server/dp_front_end.h"
#include "atom/server/dp_router.h"

namespace atom::server {
namespace {

RankView up(int64_t running, int64_t waiting, double kv, int64_t open) {
  RankView v;
  v.routable = true;
  v.load = {running, waiting, kv};
  v.open = open;
  return v;
}

TEST(DpPolicy, PicksTheLowestScore) {
  const std::vector<RankView> ranks = {up(4, 0, 0.1, 0), up(1, 0, 0.1, 0), up(2, 0, 0.1, 0)};
  EXPECT_EQ(pick_least_loaded(ranks), 1);
}

TEST(DpPolicy, TiesGoToTheLowerRank) {
  EXPECT_EQ(pick_least_loaded(std::vector<RankView>{up(0, 0, 0, 0), up(0, 0, 0, 0)}), 0);
  EXPECT_EQ(
      pick_least_loaded(std::vector<RankView>{up(3, 0, 0, 0), up(1, 1, 0, 0), up(3, 0, 0, 0)}),
      0);  // rank 1's 1 + 2 * 1 = 3 ties rank 0's 3: the lower rank wins
  EXPECT_EQ(
      pick_least_loaded(std::vector<RankView>{up(3, 0, 0, 0), up(2, 0, 0, 0), up(2, 0, 0, 0)}), 1);
}

TEST(DpPolicy, OpenRequestsCountBeforeTheNextReport) {
  // Both ranks reported idle; rank 0 already took two requests the reports do not show yet.
  const std::vector<RankView> ranks = {up(0, 0, 0, 2), up(0, 0, 0, 0)};
  EXPECT_EQ(pick_least_loaded(ranks), 1);
}

TEST(DpPolicy, WaitingAndKvUsageWeigh) {
  // A waiting request outweighs a running one.
  EXPECT_EQ(pick_least_loaded(std::vector<RankView>{up(0, 2, 0, 0), up(3, 0, 0, 0)}), 1);
  // A nearly full KV cache outweighs a few running requests.
  EXPECT_EQ(pick_least_loaded(std::vector<RankView>{up(1, 0, 0.95, 0), up(4, 0, 0.2, 0)}), 1);
  EXPECT_DOUBLE_EQ(load_score(up(2, 3, 0.5, 1)), 1 + 2 + 2 * 3 + 8 * 0.5);
  EXPECT_DOUBLE_EQ(load_score(up(0, 0, 7.0, 0)), 8.0);  // usage is clamped to 1
}

TEST(DpPolicy, SkipsRanksThatAreNotRoutable) {
  std::vector<RankView> ranks = {up(9, 9, 1, 9), up(0, 0, 0, 0)};
  ranks[1].routable = false;
  EXPECT_EQ(pick_least_loaded(ranks), 0);
  ranks[0].routable = false;
  EXPECT_EQ(pick_least_loaded(ranks), std::nullopt);
  EXPECT_EQ(pick_least_loaded(std::vector<RankView>{}), std::nullopt);
}

TEST(DpRouterTable, ABurstSpreadsOverIdleRanks) {
  DpRouter router(3);
  const auto now = DpRouter::Clock::now();
  EXPECT_EQ(router.acquire(), std::nullopt);  // nobody registered
  for (int64_t r = 0; r < 3; ++r) router.set_up(r, {"127.0.0.1", 1000 + int(r), 0}, now);
  // No report comes between these: the open counts alone spread them, lowest rank first.
  std::vector<int64_t> picks;
  for (int i = 0; i < 6; ++i) picks.push_back(*router.acquire());
  EXPECT_EQ(picks, (std::vector<int64_t>{0, 1, 2, 0, 1, 2}));
  EXPECT_EQ(router.info(0).open, 2);
  EXPECT_EQ(router.info(0).routed_total, 2);
  router.release(0, false);
  router.release(0, true);
  EXPECT_EQ(router.info(0).open, 0);
  EXPECT_EQ(router.info(0).failed_total, 1);
  EXPECT_EQ(router.acquire(), 0);  // rank 0 is now the least loaded
}

TEST(DpRouterTable, ReportsSteerAwayFromABusyRank) {
  DpRouter router(2);
  const auto now = DpRouter::Clock::now();
  router.set_up(0, {"a", 1, 0}, now);
  router.set_up(1, {"b", 2, 0}, now);
  router.report(0, {5, 3, 0.4}, now);  // busy with requests it got elsewhere
  for (int i = 0; i < 5; ++i) EXPECT_EQ(router.acquire(), 1);
  EXPECT_EQ(router.info(0).load.waiting, 3);
}

TEST(DpRouterTable, DeadDrainingAndSilentRanksTakeNothing) {
  DpRouter router(3);
  const auto t0 = DpRouter::Clock::now();
  for (int64_t r = 0; r < 3; ++r) router.set_up(r, {"h", 1, 0}, t0);
  EXPECT_TRUE(router.mark_dead(0, "connection lost"));
  EXPECT_FALSE(router.mark_dead(0, "again"));  // already dead: reported once
  EXPECT_EQ(router.info(0).state, RankState::kDead);
  EXPECT_EQ(router.info(0).reason, "connection lost");
  router.set_draining(1);
  EXPECT_EQ(router.info(1).state, RankState::kDraining);
  EXPECT_EQ(router.acquire(), 2);
  EXPECT_EQ(router.num_routable(), 1);
  // Rank 2 keeps reporting, rank 1 (draining) falls silent: only rank 1 expires.
  const auto t1 = t0 + std::chrono::milliseconds(1500);
  router.report(2, {}, t1);
  EXPECT_EQ(router.expire_silent(t1, std::chrono::milliseconds(1000)), std::vector<int64_t>{1});
  EXPECT_EQ(router.info(1).state, RankState::kDead);
  EXPECT_EQ(router.ranks_in(RankState::kUp), std::vector<int64_t>{2});
  // A dead rank may come back (a restarted process), with a fresh load.
  router.set_up(0, {"h2", 7, 42}, t1);
  EXPECT_EQ(router.info(0).state, RankState::kUp);
  EXPECT_EQ(router.info(0).endpoint.port, 7);
  EXPECT_EQ(router.info(0).endpoint.pid, 42);
  EXPECT_TRUE(router.info(0).reason.empty());
  // A rank that shut down cleanly is stopped, not dead.
  router.set_draining(2);
  router.set_stopped(2, "it shut down");
  EXPECT_EQ(router.info(2).state, RankState::kStopped);
  EXPECT_FALSE(router.mark_dead(2, "late"));
}

TEST(DpRouterTable, AcquireSkipsTheRanksARequestAlreadyTried) {
  DpRouter router(3);
  const auto now = DpRouter::Clock::now();
  for (int64_t r = 0; r < 3; ++r) router.set_up(r, {"h", 1, 0}, now);
  const std::vector<int64_t> tried = {0};
  EXPECT_EQ(router.acquire(tried), 1);  // rank 0 is the least loaded but was tried
  const std::vector<int64_t> all_but_2 = {0, 1};
  EXPECT_EQ(router.acquire(all_but_2), 2);
  const std::vector<int64_t> all = {2, 1, 0};
  EXPECT_EQ(router.acquire(all), std::nullopt);
  EXPECT_EQ(router.info(0).routed_total, 0);
  EXPECT_EQ(router.info(1).open, 1);
  EXPECT_EQ(router.info(2).open, 1);
}

TEST(DpRouterTable, ReportsOfRanksNotUpAreIgnored) {
  DpRouter router(2);
  const auto now = DpRouter::Clock::now();
  router.report(1, {7, 7, 0.7}, now);  // not registered
  EXPECT_EQ(router.info(1).load.running, 0);
  EXPECT_EQ(router.info(1).state, RankState::kPending);
  EXPECT_THROW(DpRouter(0), Error);
}

TEST(DpMetrics, MergeLabelsEverySampleAndGroupsFamilies) {
  const std::string r0 =
      "# HELP atom:num_requests_running Running.\n"
      "# TYPE atom:num_requests_running gauge\n"
      "atom:num_requests_running{model_name=\"m\"} 2\n"
      "# HELP atom:ttft Histogram.\n"
      "# TYPE atom:ttft histogram\n"
      "atom:ttft_bucket{model_name=\"m\",le=\"0.1\"} 1\n"
      "atom:ttft_sum{model_name=\"m\"} 0.05\n"
      "atom:ttft_count{model_name=\"m\"} 1\n";
  const std::string r1 =
      "# HELP atom:num_requests_running Running.\n"
      "# TYPE atom:num_requests_running gauge\n"
      "atom:num_requests_running{model_name=\"m\"} 5\n"
      "# HELP atom:ttft Histogram.\n"
      "# TYPE atom:ttft histogram\n"
      "atom:ttft_bucket{model_name=\"m\",le=\"0.1\"} 0\n"
      "atom:ttft_sum{model_name=\"m\"} 0\n"
      "atom:ttft_count{model_name=\"m\"} 0\n"
      "plain_metric 3\n";
  const std::string merged = merge_rank_metrics({{0, r0}, {1, r1}});
  const std::string want =
      "# HELP atom:num_requests_running Running.\n"
      "# TYPE atom:num_requests_running gauge\n"
      "atom:num_requests_running{dp_rank=\"0\",model_name=\"m\"} 2\n"
      "atom:num_requests_running{dp_rank=\"1\",model_name=\"m\"} 5\n"
      "# HELP atom:ttft Histogram.\n"
      "# TYPE atom:ttft histogram\n"
      "atom:ttft_bucket{dp_rank=\"0\",model_name=\"m\",le=\"0.1\"} 1\n"
      "atom:ttft_sum{dp_rank=\"0\",model_name=\"m\"} 0.05\n"
      "atom:ttft_count{dp_rank=\"0\",model_name=\"m\"} 1\n"
      "atom:ttft_bucket{dp_rank=\"1\",model_name=\"m\",le=\"0.1\"} 0\n"
      "atom:ttft_sum{dp_rank=\"1\",model_name=\"m\"} 0\n"
      "atom:ttft_count{dp_rank=\"1\",model_name=\"m\"} 0\n"
      "plain_metric{dp_rank=\"1\"} 3\n";
  EXPECT_EQ(merged, want);
  EXPECT_EQ(merge_rank_metrics({}), "");
}

}  // namespace
}  // namespace atom::server
