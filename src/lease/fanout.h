#pragma once
// One call per shard in parallel, keeping every shard's own outcome: lease RPCs must tell
// "not found here" from "shard unreachable" shard by shard, which ScatterGather (first error
// wins) does not report.
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "transport/status.h"
#include "upstream/topology.h"
#include "upstream/typed_call.h"

namespace esp {

template <class Resp>
struct ShardOutcome {
  std::size_t shard = 0;
  Status status;
  Resp response;
};

// An unreachable or silent shard, as opposed to an answer from etcd itself.
inline bool IsShardDown(const Status& status) {
  return (status.code() == StatusCode::kUnavailable || status.code() == StatusCode::kDeadlineExceeded) &&
         !status.message().starts_with("etcdserver:");
}

// Starts one call per shard in `shards` through `call(shard, on_done)` and gathers the answers:
// `done` gets one outcome per shard, in the order of `shards`, once all have completed.
template <class Resp, class Call>
void GatherShards(const std::vector<std::size_t>& shards, Call call,
                  std::function<void(std::vector<ShardOutcome<Resp>>)> done) {
  struct State {
    std::vector<ShardOutcome<Resp>> outcomes;
    std::atomic<std::size_t> remaining;
    std::function<void(std::vector<ShardOutcome<Resp>>)> done;
  };
  if (shards.empty()) return done({});
  auto state = std::make_shared<State>();
  state->outcomes.resize(shards.size());
  state->remaining.store(shards.size());
  state->done = std::move(done);
  for (std::size_t i = 0; i < shards.size(); ++i) {
    state->outcomes[i].shard = shards[i];
    call(shards[i], [state, i](Status status, Resp response) {
      state->outcomes[i].status = std::move(status);
      state->outcomes[i].response = std::move(response);
      if (state->remaining.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
      auto finish = std::move(state->done);
      finish(std::move(state->outcomes));
    });
  }
}

// Calls `method` with `request` on each shard in `shards`; `done` gets one outcome per shard, in
// the order of `shards`, once all have completed.
template <class Resp, class Req>
void CallShards(const Topology& topology, const std::vector<std::size_t>& shards, const std::string& method,
                const CallContextPtr& ctx, const Req& request, UnaryOptions options,
                std::function<void(std::vector<ShardOutcome<Resp>>)> done) {
  GatherShards<Resp>(
      shards,
      [&](std::size_t shard, std::function<void(Status, Resp)> on_done) {
        CallShard<Resp>(*topology.shards[shard], method, ctx, request, options, std::move(on_done));
      },
      std::move(done));
}

inline std::vector<std::size_t> AllShards(const Topology& topology) {
  std::vector<std::size_t> all(topology.shards.size());
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
  return all;
}

// The client's call context with its deadline cut to at most `limit` from now, cancelled with the
// client's. Lease calls answer without a shard that is down; a hung shard must count as down
// well before the client gives up, or one stopped shard would fail every grant.
inline CallContextPtr BoundedContext(const CallContextPtr& parent, std::chrono::milliseconds limit) {
  auto deadline = Clock::now() + limit;
  if (parent->deadline() && *parent->deadline() < deadline) deadline = *parent->deadline();
  auto child = std::make_shared<CallContext>(deadline, parent->metadata());
  // The hook lives as long as the client's call; it only holds the child weakly.
  parent->cancellation().Add([weak = std::weak_ptr<CallContext>(child)] {
    if (auto c = weak.lock()) c->cancellation().Cancel();
  });
  return child;
}

}  // namespace esp
