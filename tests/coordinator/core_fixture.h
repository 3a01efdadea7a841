// Test helpers shared by the coordinator core's tests: the options of run "run-a" (token "secret",
// the 3-fragment layout of TestSignature) on a manual clock, and a Join request for it.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "coordinator/clock.h"
#include "coordinator/core.h"
#include "tests/coordinator/fake_worker.h"

namespace lowband::testing {

inline coordinator::CoordinatorOptions TestCoordinatorOptions(const coordinator::Clock* clock) {
  coordinator::CoordinatorOptions o;
  o.run_id = "run-a";
  o.token = "secret";
  o.layout.num_fragments = 3;
  o.inner_steps = 30;
  o.round_timeout = std::chrono::seconds(10);
  o.heartbeat_timeout = std::chrono::seconds(30);
  o.heartbeat_interval = std::chrono::seconds(5);
  o.clock = clock;
  return o;
}

inline coordinator::JoinRequest TestJoinRequest(const std::string& name, uint64_t nonce = 0) {
  coordinator::JoinRequest r;
  r.run_id = "run-a";
  r.token = "secret";
  r.signature = TestSignature();
  r.worker_name = name;
  r.host = "localhost";
  r.join_nonce = nonce;
  return r;
}

}  // namespace lowband::testing
