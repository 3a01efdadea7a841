// FragmentExchanger: runs a worker's Streaming DiLoCo communication beside training.
//
// Send() hands an encoded outer gradient to a push thread, which uploads it; a fetch thread then
// waits for that round's encoded outer update. Uploads go out in order, one at a time (they share
// the worker's uplink); waiting for an update never holds up the next upload. The training thread
// collects results with Poll() (never blocks) or Wait() (blocks: the caller counts the stall).
//
// Recovery: a contribution is kept until its round's update has arrived. When the client's epoch
// changes (the coordinator restarted from its checkpoint, the link came back, the worker joined
// again) the fetch thread pushes it again before waiting on (the coordinator drops a duplicate).
// A push refused because its round already closed (this worker fell behind, or rejoined) is not an
// error: the round's update is fetched and applied like any other. A result whose round the
// coordinator no longer keeps (NOT_FOUND) or has not opened (OUT_OF_RANGE: a coordinator restored
// from an older checkpoint) comes back as that status: the engine then resyncs the fragment from
// the global state.
//
// Thread safety: Send/Poll/Wait from one thread (the training loop); the two internal threads
// touch the shared state under mu_. Lifetimes: the client must outlive the exchanger; the
// destructor stops both threads (an update still being waited for is abandoned within one poll
// interval).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "comm/coordinator_client.h"
#include "quant/status.h"

namespace lowband::worker {

class FragmentExchanger {
 public:
  // `update_timeout`: how long to wait for one round to close before failing.
  FragmentExchanger(comm::CoordinatorClient* client, std::chrono::milliseconds update_timeout);
  ~FragmentExchanger();
  FragmentExchanger(const FragmentExchanger&) = delete;
  FragmentExchanger& operator=(const FragmentExchanger&) = delete;

  void Send(uint32_t fragment, uint64_t round, std::vector<uint8_t> payload);
  // The update of (fragment, round) if it has arrived (or failed); nullopt while in flight.
  std::optional<StatusOr<std::vector<uint8_t>>> Poll(uint32_t fragment, uint64_t round);
  // Blocks until the update of (fragment, round) has arrived or failed.
  StatusOr<std::vector<uint8_t>> Wait(uint32_t fragment, uint64_t round);
  // Rounds sent whose results were not collected yet.
  size_t in_flight() const;
  // Contributions pushed again after an epoch change, and pushes refused because the round closed.
  uint64_t repushes() const;
  uint64_t late_pushes() const;

 private:
  using Key = std::pair<uint32_t, uint64_t>;
  using Payload = std::shared_ptr<const std::vector<uint8_t>>;
  struct Upload {
    Key key;
    Payload payload;
  };
  struct Fetch {
    Key key;
    Payload payload;
    uint64_t epoch = 0;  // the client's epoch when it was last pushed
  };
  void PushLoop();
  void FetchLoop();
  // Pushes; OK also when the round is closed or not open (the fetch then tells what happened).
  Status PushOnce(const Key& key, const Payload& payload);
  StatusOr<std::vector<uint8_t>> FetchOne(Fetch f);
  bool stopping() const;

  comm::CoordinatorClient* client_;
  const std::chrono::milliseconds update_timeout_;
  mutable std::mutex mu_;
  std::condition_variable work_;                           // new uploads or fetches, or stopping
  std::condition_variable done_;                           // a result arrived
  bool stopping_ = false;                                  // GUARDED_BY(mu_)
  std::deque<Upload> uploads_;                             // GUARDED_BY(mu_)
  std::deque<Fetch> fetches_;                              // GUARDED_BY(mu_)
  std::map<Key, StatusOr<std::vector<uint8_t>>> results_;  // GUARDED_BY(mu_)
  size_t pending_ = 0;                                     // GUARDED_BY(mu_): sent, not collected
  uint64_t repushes_ = 0;                                  // GUARDED_BY(mu_)
  uint64_t late_pushes_ = 0;                               // GUARDED_BY(mu_)
  std::thread pusher_;
  std::thread fetcher_;
};

}  // namespace lowband::worker
