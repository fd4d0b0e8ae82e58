#pragma once
// Calls every shard of a topology and hands back each shard's own outcome. Unlike
// ScatterGather, one failing shard neither cancels the others nor hides their answers: the
// Maintenance aggregates and the health views report every shard.
#include <atomic>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "upstream/topology.h"
#include "upstream/typed_call.h"

namespace esp {

template <class Resp>
struct ShardAnswer {
  Status status;
  Resp response;
};

// One shard's answer as a future, for code on a thread of its own that may wait (the health
// probe, the auth consistency check); never to be waited on from a loop thread.
template <class Resp, class Req>
std::future<ShardAnswer<Resp>> AskShard(ShardTransport& shard, const std::string& method, const CallContextPtr& ctx,
                                        const Req& request, UnaryOptions options) {
  auto promise = std::make_shared<std::promise<ShardAnswer<Resp>>>();
  auto future = promise->get_future();
  CallShard<Resp>(shard, method, ctx, request, options, [promise](Status status, Resp response) {
    promise->set_value({std::move(status), std::move(response)});
  });
  return future;
}

template <class Resp, class Req>
void CallEveryShard(std::shared_ptr<const Topology> topology, const std::string& method, const CallContextPtr& ctx,
                    const Req& request, std::function<void(std::vector<ShardAnswer<Resp>>)> finish) {
  struct State {
    std::shared_ptr<const Topology> topology;  // keeps the transports alive to the end
    std::atomic<std::size_t> remaining;
    std::vector<ShardAnswer<Resp>> answers;
    std::function<void(std::vector<ShardAnswer<Resp>>)> finish;
  };
  const std::size_t n = topology->shards.size();
  auto state = std::make_shared<State>();
  state->topology = topology;
  state->remaining.store(n);
  state->answers.resize(n);
  state->finish = std::move(finish);
  for (std::size_t i = 0; i < n; ++i) {
    CallShard<Resp>(*topology->shards[i], method, ctx, request, UnaryOptions{.idempotent = true},
                    [state, i](Status status, Resp response) {
                      state->answers[i] = {std::move(status), std::move(response)};
                      if (state->remaining.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
                      auto finish_fn = std::move(state->finish);
                      finish_fn(std::move(state->answers));
                    });
  }
}

}  // namespace esp
