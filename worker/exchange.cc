#include "worker/exchange.h"

#include <spdlog/spdlog.h>

namespace lowband::worker {

namespace {
// GetUpdate waits server-side in slices of this length so that a stopping exchanger is not held
// up by a long wait.
constexpr std::chrono::milliseconds kPollSlice{2000};
}  // namespace

FragmentExchanger::FragmentExchanger(comm::CoordinatorClient* client,
                                     std::chrono::milliseconds update_timeout)
    : client_(client), update_timeout_(update_timeout) {
  pusher_ = std::thread([this] { PushLoop(); });
  fetcher_ = std::thread([this] { FetchLoop(); });
}

FragmentExchanger::~FragmentExchanger() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  work_.notify_all();
  pusher_.join();
  fetcher_.join();
}

void FragmentExchanger::Send(uint32_t fragment, uint64_t round, std::vector<uint8_t> payload) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    uploads_.push_back({{fragment, round}, std::make_shared<const std::vector<uint8_t>>(std::move(payload))});
    ++pending_;
  }
  work_.notify_all();
}

std::optional<StatusOr<std::vector<uint8_t>>> FragmentExchanger::Poll(uint32_t fragment, uint64_t round) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = results_.find({fragment, round});
  if (it == results_.end()) return std::nullopt;
  StatusOr<std::vector<uint8_t>> r = std::move(it->second);
  results_.erase(it);
  --pending_;
  return r;
}

StatusOr<std::vector<uint8_t>> FragmentExchanger::Wait(uint32_t fragment, uint64_t round) {
  std::unique_lock<std::mutex> lock(mu_);
  done_.wait(lock, [&] { return results_.count({fragment, round}) > 0; });
  auto it = results_.find({fragment, round});
  StatusOr<std::vector<uint8_t>> r = std::move(it->second);
  results_.erase(it);
  --pending_;
  return r;
}

size_t FragmentExchanger::in_flight() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pending_;
}

uint64_t FragmentExchanger::repushes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return repushes_;
}

uint64_t FragmentExchanger::late_pushes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return late_pushes_;
}

bool FragmentExchanger::stopping() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stopping_;
}

Status FragmentExchanger::PushOnce(const Key& key, const Payload& payload) {
  auto reply = client_->PushFragment(key.first, key.second, *payload);
  if (reply.ok()) return Status::Ok();
  if (reply.status().code() == StatusCode::kAborted) {
    // The round closed without this contribution (or is not open yet): what the round became is
    // what GetUpdate answers.
    spdlog::warn("{}; fetching that round's update instead", reply.status().message());
    std::lock_guard<std::mutex> lock(mu_);
    ++late_pushes_;
    return Status::Ok();
  }
  return reply.status().WithContext("pushing fragment " + std::to_string(key.first) + " round " +
                                    std::to_string(key.second));
}

void FragmentExchanger::PushLoop() {
  for (;;) {
    Upload up;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_.wait(lock, [&] { return stopping_ || !uploads_.empty(); });
      if (stopping_) return;
      up = std::move(uploads_.front());
      uploads_.pop_front();
    }
    const uint64_t epoch = client_->epoch();
    Status pushed = PushOnce(up.key, up.payload);
    std::lock_guard<std::mutex> lock(mu_);
    if (!pushed.ok()) {
      results_.emplace(up.key, std::move(pushed));
      done_.notify_all();
    } else {
      fetches_.push_back({up.key, std::move(up.payload), epoch});
      work_.notify_all();
    }
  }
}

StatusOr<std::vector<uint8_t>> FragmentExchanger::FetchOne(Fetch f) {
  auto start = std::chrono::steady_clock::now();
  for (;;) {
    StatusOr<std::vector<uint8_t>> result = client_->GetUpdate(f.key.first, f.key.second, kPollSlice);
    const StatusCode code = result.ok() ? StatusCode::kOk : result.status().code();
    if (code != StatusCode::kDeadlineExceeded && code != StatusCode::kUnavailable) return result;
    if (stopping()) return Unavailable("the exchanger is stopping");
    if (const uint64_t epoch = client_->epoch(); epoch != f.epoch) {
      // The coordinator may have lost this contribution (restart, rejoin): push it again.
      spdlog::info("pushing fragment {} round {} again (the coordinator restarted or the link came back)",
                   f.key.first, f.key.second);
      if (Status s = PushOnce(f.key, f.payload); !s.ok()) return s;
      f.epoch = epoch;
      start = std::chrono::steady_clock::now();
      std::lock_guard<std::mutex> lock(mu_);
      ++repushes_;
      continue;
    }
    if (std::chrono::steady_clock::now() - start > update_timeout_) {
      return DeadlineExceeded(
          "the update of fragment " + std::to_string(f.key.first) + " round " + std::to_string(f.key.second) +
          " did not come within " + std::to_string(update_timeout_.count() / 1000) +
          " s: a worker is stalled or the coordinator's round deadline is longer (last: " +
          result.status().message() + ")");
    }
  }
}

void FragmentExchanger::FetchLoop() {
  for (;;) {
    Fetch f;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_.wait(lock, [&] { return stopping_ || !fetches_.empty(); });
      if (stopping_) return;
      f = std::move(fetches_.front());
      fetches_.pop_front();
    }
    const Key key = f.key;
    StatusOr<std::vector<uint8_t>> result = FetchOne(std::move(f));
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    results_.emplace(key, std::move(result));
    done_.notify_all();
  }
}

}  // namespace lowband::worker
