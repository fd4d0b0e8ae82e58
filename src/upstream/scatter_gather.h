#pragma once
// Runs one call per shard piece in parallel and joins the answers.
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "transport/call_context.h"
#include "transport/status.h"

namespace esp {

template <class Resp>
using PieceDone = std::function<void(Status, Resp)>;

// Starts `n` calls with `start(i, ctx, done)`; once all have completed, `finish` gets the first
// failure (in completion order) or OK, and the responses by index. The calls share a child
// context carrying the client's deadline and metadata; cancelling the client call cancels them.
// With `cancel_on_error`, the first failure also cancels the calls still running, so a spanning
// read fails as fast as its fastest failing shard.
template <class Resp>
void ScatterGather(const CallContextPtr& parent, std::size_t n, bool cancel_on_error,
                   const std::function<void(std::size_t, const CallContextPtr&, PieceDone<Resp>)>& start,
                   std::function<void(Status, std::vector<Resp>)> finish) {
  struct State {
    CallContextPtr parent;
    CallContextPtr child;
    Cancellation::HookId parent_hook = 0;
    bool cancel_on_error = false;
    std::atomic<std::size_t> remaining;
    std::mutex mu;
    Status first_error;
    std::vector<Resp> responses;
    std::function<void(Status, std::vector<Resp>)> finish;
  };
  auto state = std::make_shared<State>();
  state->parent = parent;
  state->child = std::make_shared<CallContext>(parent->deadline(), parent->metadata());
  state->cancel_on_error = cancel_on_error;
  state->remaining.store(n);
  state->responses.resize(n);
  state->finish = std::move(finish);
  state->parent_hook = parent->cancellation().Add([child = state->child] { child->cancellation().Cancel(); });

  for (std::size_t i = 0; i < n; ++i) {
    start(i, state->child, [state, i](Status status, Resp response) {
      bool cancel = false;
      if (status.ok()) {
        state->responses[i] = std::move(response);
      } else {
        const std::lock_guard lock(state->mu);
        if (state->first_error.ok()) {
          state->first_error = std::move(status);
          cancel = state->cancel_on_error;
        }
      }
      if (cancel) state->child->cancellation().Cancel();
      if (state->remaining.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
      state->parent->cancellation().Remove(state->parent_hook);
      auto finish_fn = std::move(state->finish);
      finish_fn(std::move(state->first_error), std::move(state->responses));
    });
  }
}

}  // namespace esp
