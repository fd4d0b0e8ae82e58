// libFuzzer target for the server side of the h2 data plane: input bytes are what a client sent
// on one connection. They go through H2Connection's receive path (nghttp2 server session, our
// callbacks, gRPC deframing, the Router) exactly as in production, minus the socket: the
// connection is built with an output callback and driven on a real EventLoop thread, one loop
// turn per piece of input, so completions, deadlines and the end-of-turn flush run as they do
// for a real client. Checked besides ASan/UBSan: every stream handler hears OnClose exactly
// once, no unary completion runs twice, and nothing stays registered once the connection is gone.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <utility>
#include <memory>
#include <string>
#include <vector>

#include "transport/event_loop.h"
#include "transport/h2_connection.h"
#include "transport/router.h"

namespace esp {
namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}

std::atomic<int> handlers_open{0};

// Echoes each message back; a message starting with 'F' ends the call with an error instead.
class EchoStream final : public StreamHandler {
 public:
  explicit EchoStream(std::shared_ptr<StreamSink> sink) : sink_(std::move(sink)) { ++handlers_open; }
  ~EchoStream() override { Check(closed_, "a stream handler was dropped without OnClose"); }
  void OnMessage(std::string message) override {
    Check(!closed_, "OnMessage after OnClose");
    if (!message.empty() && message[0] == 'F') {
      sink_->Finish(Status(StatusCode::kInvalidArgument, "etcdserver: bad \xff request\n"));
      return;
    }
    sink_->Write(std::move(message));
  }
  void OnClose() override {
    Check(!closed_, "OnClose twice");
    closed_ = true;
    --handlers_open;
    sink_->Finish(Status::Ok());
  }

 private:
  std::shared_ptr<StreamSink> sink_;
  bool closed_ = false;
};

// Unary completions held back for a later turn (or until after the connection is gone).
std::vector<UnaryDone> held;

UnaryDone Once(UnaryDone done) {
  return [done = std::move(done), used = std::make_shared<bool>(false)](Status s, std::string r) {
    Check(!*used, "a unary completion ran twice");
    *used = true;
    done(std::move(s), std::move(r));
  };
}

const Router& TestRouter() {
  static const Router router = [] {
    Router r;
    r.AddUnary("/etcdserverpb.KV/Range",
               [](CallContextPtr, std::string req, UnaryDone done) { Once(std::move(done))(Status::Ok(), std::move(req)); });
    r.AddUnary("/etcdserverpb.KV/Put", [](CallContextPtr, std::string, UnaryDone done) {
      Once(std::move(done))(Status(StatusCode::kInvalidArgument, "etcdserver: key is not provided"), {});
    });
    r.AddUnary("/etcdserverpb.KV/Txn",
               [](CallContextPtr, std::string, UnaryDone done) { held.push_back(Once(std::move(done))); });
    const StreamFactory echo = [](CallContextPtr, std::shared_ptr<StreamSink> sink) {
      return std::make_shared<EchoStream>(std::move(sink));
    };
    r.AddStream("/etcdserverpb.Watch/Watch", echo);
    r.AddStream("/etcdserverpb.Lease/LeaseKeepAlive", echo);
    return r;
  }();
  return router;
}

void AnswerHeld() {
  auto answers = std::move(held);
  held.clear();
  for (auto& done : answers) done(Status::Ok(), std::string(3000, 'r'));
}

// Plays the per-loop connection table (H2Server's Loop) for one connection at a time.
class Harness final : public H2ConnectionOwner {
 public:
  Harness() {
    // Small limits so that inputs reach them: oversize messages, slow-reader resets.
    limits_.max_receive_bytes = 4096;
    limits_.max_pending_bytes_per_stream = 16 * 1024;
    limits_.max_concurrent_streams = 100;
    loop_->SetEndOfTurn([this] { EndOfTurn(); });
    loop_->Start();
  }

  void Run(const std::uint8_t* data, std::size_t size) {
    Step([this] {
      connection_ = std::make_unique<H2Connection>(
          loop_, [this](std::string_view bytes) { written_ += bytes.size(); }, TestRouter(), limits_, *this);
      Check(connection_->Start(), "start");
    });
    // Pieces of pseudo-random sizes (derived from the input), a few pieces per loop turn.
    std::uint32_t seed = static_cast<std::uint32_t>(size) * 2654435761u;
    std::size_t at = 0;
    for (int turn = 0; at < size; ++turn) {
      std::vector<std::pair<std::size_t, std::size_t>> pieces;
      for (int i = 0; i < 3 && at < size; ++i) {
        seed = seed * 1103515245u + 12345u;
        const std::size_t n = turn >= 7 ? size - at : std::min<std::size_t>(size - at, 1 + (seed >> 16) % 700);
        pieces.emplace_back(at, n);
        at += n;
      }
      Step([this, data, pieces] {
        AnswerHeld();
        for (const auto& [from, n] : pieces) connection_->Receive(data + from, n);
      });
    }
    Step([this] {
      AnswerHeld();  // answered while the connection is still open
      connection_->Drain();
    });
    Step([this] {
      connection_.reset();
      dirty_.clear();
      AnswerHeld();  // after the connection is gone: must find nothing
    });
    Check(handlers_open == 0, "a stream handler never heard OnClose");
  }

  void OnDirty(H2Connection* c) override { dirty_.push_back(c); }
  void OnClosed(H2Connection*) override {}

 private:
  // Runs `task` on the loop and waits until that turn (its posted work and flush) is over.
  void Step(std::function<void()> task) {
    std::promise<void> done;
    loop_->Post([this, task = std::move(task), &done] {
      task();
      turn_done_ = &done;
    });
    done.get_future().wait();
  }

  void EndOfTurn() {
    for (int round = 0; round < 4 && !dirty_.empty(); ++round) {
      std::vector<H2Connection*> dirty;
      dirty.swap(dirty_);
      for (H2Connection* c : dirty) {
        c->ClearDirty();
        c->Flush();
      }
    }
    if (turn_done_ != nullptr) std::exchange(turn_done_, nullptr)->set_value();
  }

  std::shared_ptr<EventLoop> loop_ = std::make_shared<EventLoop>();
  H2Limits limits_;
  std::unique_ptr<H2Connection> connection_;
  std::vector<H2Connection*> dirty_;
  std::promise<void>* turn_done_ = nullptr;
  std::size_t written_ = 0;
};

}  // namespace
}  // namespace esp

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static esp::Harness harness;  // one loop thread for the whole run
  harness.Run(data, size);
  return 0;
}
