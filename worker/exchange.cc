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
    uploads_.push_back({{fragment, round}, std::move(payload)});
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
    auto reply = client_->PushFragment(up.key.first, up.key.second, up.payload);
    std::lock_guard<std::mutex> lock(mu_);
    if (!reply.ok()) {
      results_.emplace(up.key, reply.status().WithContext("pushing fragment " + std::to_string(up.key.first) +
                                                          " round " + std::to_string(up.key.second)));
      done_.notify_all();
    } else {
      fetches_.push_back(up.key);
      work_.notify_all();
    }
  }
}

void FragmentExchanger::FetchLoop() {
  for (;;) {
    Key key;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_.wait(lock, [&] { return stopping_ || !fetches_.empty(); });
      if (stopping_) return;
      key = fetches_.front();
      fetches_.pop_front();
    }
    const auto start = std::chrono::steady_clock::now();
    StatusOr<std::vector<uint8_t>> result = DeadlineExceeded("not fetched");
    for (;;) {
      result = client_->GetUpdate(key.first, key.second, kPollSlice);
      if (result.ok() || result.status().code() != StatusCode::kDeadlineExceeded) break;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) return;
      }
      if (std::chrono::steady_clock::now() - start > update_timeout_) {
        result = DeadlineExceeded("the update of fragment " + std::to_string(key.first) + " round " +
                                  std::to_string(key.second) + " did not come within " +
                                  std::to_string(update_timeout_.count() / 1000) +
                                  " s: a worker is stalled or the coordinator's round deadline is longer");
        break;
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    results_.emplace(key, std::move(result));
    done_.notify_all();
  }
}

}  // namespace lowband::worker
