#include "atom/server/dp_router.h"

#include <algorithm>

#include "atom/core/error.h"

namespace atom::server {

double load_score(const RankView& rank, const RoutingWeights& w) {
  const double kv = std::clamp(rank.load.kv_cache_usage, 0.0, 1.0);
  return w.open * double(rank.open) + w.running * double(rank.load.running) +
         w.waiting * double(rank.load.waiting) + w.kv_full * kv;
}

std::optional<int64_t> pick_least_loaded(std::span<const RankView> ranks, const RoutingWeights& w) {
  std::optional<int64_t> best;
  double best_score = 0.0;
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (!ranks[i].routable) continue;
    const double s = load_score(ranks[i], w);
    if (!best || s < best_score) {  // strictly lower: a tie keeps the lower rank
      best = int64_t(i);
      best_score = s;
    }
  }
  return best;
}

const char* rank_state_name(RankState s) {
  switch (s) {
    case RankState::kPending:
      return "pending";
    case RankState::kUp:
      return "up";
    case RankState::kDraining:
      return "draining";
    case RankState::kStopped:
      return "stopped";
    case RankState::kDead:
      return "dead";
  }
  return "unknown";
}

DpRouter::DpRouter(int64_t dp_size, RoutingWeights weights) : weights_(weights) {
  ATOM_CHECK(dp_size >= 1, kInvalidArgument, "the data-parallel size must be at least 1, got {}",
             dp_size);
  ranks_.resize(size_t(dp_size));
  for (int64_t r = 0; r < dp_size; ++r) ranks_[size_t(r)].info.rank = r;
}

void DpRouter::set_up(int64_t rank, RankEndpoint endpoint, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  ATOM_ASSERT(rank >= 0 && rank < int64_t(ranks_.size()));
  Rank& r = ranks_[size_t(rank)];
  r.info.state = RankState::kUp;
  r.info.endpoint = std::move(endpoint);
  r.info.load = {};
  r.info.reason.clear();
  r.last_report = now;
}

void DpRouter::report(int64_t rank, const RankLoad& load, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  ATOM_ASSERT(rank >= 0 && rank < int64_t(ranks_.size()));
  Rank& r = ranks_[size_t(rank)];
  if (r.info.state != RankState::kUp && r.info.state != RankState::kDraining) return;
  r.info.load = load;
  r.last_report = now;
}

void DpRouter::set_draining(int64_t rank) {
  std::lock_guard<std::mutex> lock(mu_);
  ATOM_ASSERT(rank >= 0 && rank < int64_t(ranks_.size()));
  Rank& r = ranks_[size_t(rank)];
  if (r.info.state == RankState::kUp) r.info.state = RankState::kDraining;
}

void DpRouter::set_stopped(int64_t rank, std::string reason) {
  std::lock_guard<std::mutex> lock(mu_);
  ATOM_ASSERT(rank >= 0 && rank < int64_t(ranks_.size()));
  Rank& r = ranks_[size_t(rank)];
  if (r.info.state == RankState::kDead) return;
  r.info.state = RankState::kStopped;
  r.info.reason = std::move(reason);
}

bool DpRouter::mark_dead(int64_t rank, std::string reason) {
  std::lock_guard<std::mutex> lock(mu_);
  ATOM_ASSERT(rank >= 0 && rank < int64_t(ranks_.size()));
  Rank& r = ranks_[size_t(rank)];
  if (r.info.state != RankState::kUp && r.info.state != RankState::kDraining) return false;
  r.info.state = RankState::kDead;
  r.info.reason = std::move(reason);
  return true;
}

std::vector<int64_t> DpRouter::expire_silent(Clock::time_point now, Clock::duration timeout) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<int64_t> expired;
  for (Rank& r : ranks_) {
    if (r.info.state != RankState::kUp && r.info.state != RankState::kDraining) continue;
    if (now - r.last_report <= timeout) continue;
    r.info.state = RankState::kDead;
    r.info.reason = "its load reports stopped";
    expired.push_back(r.info.rank);
  }
  return expired;
}

std::optional<int64_t> DpRouter::acquire(std::span<const int64_t> exclude) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<RankView> views(ranks_.size());
  for (size_t i = 0; i < ranks_.size(); ++i) {
    views[i].routable = ranks_[i].info.state == RankState::kUp &&
                        std::find(exclude.begin(), exclude.end(), int64_t(i)) == exclude.end();
    views[i].load = ranks_[i].info.load;
    views[i].open = ranks_[i].info.open;
  }
  const std::optional<int64_t> pick = pick_least_loaded(views, weights_);
  if (pick) {
    ++ranks_[size_t(*pick)].info.open;
    ++ranks_[size_t(*pick)].info.routed_total;
  }
  return pick;
}

void DpRouter::release(int64_t rank, bool failed) {
  std::lock_guard<std::mutex> lock(mu_);
  ATOM_ASSERT(rank >= 0 && rank < int64_t(ranks_.size()));
  RankInfo& r = ranks_[size_t(rank)].info;
  ATOM_ASSERT(r.open > 0);
  --r.open;
  if (failed) ++r.failed_total;
}

RankInfo DpRouter::info(int64_t rank) const {
  std::lock_guard<std::mutex> lock(mu_);
  ATOM_ASSERT(rank >= 0 && rank < int64_t(ranks_.size()));
  return ranks_[size_t(rank)].info;
}

std::vector<RankInfo> DpRouter::snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<RankInfo> out;
  out.reserve(ranks_.size());
  for (const Rank& r : ranks_) out.push_back(r.info);
  return out;
}

std::vector<int64_t> DpRouter::ranks_in(RankState state) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<int64_t> out;
  for (const Rank& r : ranks_)
    if (r.info.state == state) out.push_back(r.info.rank);
  return out;
}

int64_t DpRouter::num_routable() const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::count_if(ranks_.begin(), ranks_.end(),
                       [](const Rank& r) { return r.info.state == RankState::kUp; });
}

}  // namespace atom::server
