// libFuzzer target for the server side of the client port: what a client sends on one
// connection. Inputs starting with an upper-case letter (a method, or the preface's "PRI ") are
// raw client bytes (the captured seeds, HTTP/1.1 requests), handed to the connection the server's
// first-bytes decision picks (transport/first_bytes.h): the HTTP/2 preface to H2Connection, anything
// else to Http1Connection (see Http1Run below); any other input is a script of HTTP/2 client
// actions (see Script below) that this file turns into
// well-formed frames, so that mutations explore gRPC call states (resets mid-call, deadlines,
// tiny windows, bad prefixes) instead of dying in HPACK. They go through H2Connection's receive path (nghttp2 server session, our
// callbacks, gRPC deframing, the Router) exactly as in production, minus the socket: the
// connection is built with an output callback and driven on a real EventLoop thread, one loop
// turn per piece of input, so completions, deadlines and the end-of-turn flush run as they do
// for a real client; a script may also make the "socket" take only some bytes in a turn. Checked
// besides ASan/UBSan: every stream handler hears OnClose exactly once, no unary completion runs
// twice, and the server's output is sound HTTP/2 framing carrying whole gRPC messages
// (CheckServerOutput).
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <http_parser.h>
#include <nghttp2/nghttp2.h>

#include "transport/event_loop.h"
#include "transport/first_bytes.h"
#include "transport/grpc_framing.h"
#include "transport/h2_connection.h"
#include "transport/http1_connection.h"
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

// Reads the script front to back; past the end it yields zeros.
class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  std::uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  std::string Bytes(std::size_t n) {
    n = std::min(n, size_ - pos_);
    std::string out(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return out;
  }
  bool empty() const { return pos_ >= size_; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

void AppendFrame(std::string& out, std::uint8_t type, std::uint8_t flags, std::uint32_t stream,
                 std::string_view payload) {
  const std::size_t n = payload.size();
  const char header[9] = {static_cast<char>(n >> 16), static_cast<char>(n >> 8), static_cast<char>(n),
                          static_cast<char>(type),    static_cast<char>(flags),  static_cast<char>(stream >> 24),
                          static_cast<char>(stream >> 16), static_cast<char>(stream >> 8), static_cast<char>(stream)};
  out.append(header, sizeof header);
  out.append(payload);
}

std::string U32(std::uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

// What the client sends in one loop turn, and how many bytes the server may write in it (a
// "socket" that fills up: partial writes, output held back until a later turn).
struct Turn {
  std::string bytes;
  std::size_t write_budget = SIZE_MAX;
};

// Turns a script into client bytes, one Turn per loop turn. Each step is an opcode byte and
// its operands; streams are named by index into the ones opened so far.
class Script {
 public:
  Script() { nghttp2_hd_deflate_new(&deflater_, 4096); }
  ~Script() { nghttp2_hd_deflate_del(deflater_); }
  Script(const Script&) = delete;
  Script& operator=(const Script&) = delete;

  std::vector<Turn> Build(Reader& in) {
    turns_.assign(1, Turn{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"});
    AppendFrame(turns_.back().bytes, NGHTTP2_SETTINGS, 0, 0, "");
    for (int steps = 0; steps < 64 && !in.empty(); ++steps) Step(in);
    return std::move(turns_);
  }

 private:
  void Step(Reader& in) {
    std::string& out = turns_.back().bytes;
    switch (in.Byte() % 10) {
      case 0: return Headers(in);
      case 1: return Data(in);
      case 2: AppendFrame(out, NGHTTP2_RST_STREAM, 0, Stream(in), U32(in.Byte() % 14)); return;
      case 3: AppendFrame(out, NGHTTP2_WINDOW_UPDATE, 0, in.Byte() % 2 ? Stream(in) : 0, U32(1 + in.Byte() * 256)); return;
      case 4: {
        std::string ping = in.Bytes(8);
        ping.resize(8, '\0');
        AppendFrame(out, NGHTTP2_PING, 0, 0, ping);
        return;
      }
      case 5: {
        // A small INITIAL_WINDOW_SIZE makes responses wait on flow control (and pile up).
        const std::string setting = std::string("\x00\x04", 2) + U32(in.Byte() * 64);
        AppendFrame(out, NGHTTP2_SETTINGS, 0, 0, setting);
        return;
      }
      case 6: AppendFrame(out, NGHTTP2_GOAWAY, 0, 0, U32(next_id_) + U32(0)); return;
      case 7: out += in.Bytes(in.Byte() % 16); return;  // noise
      case 8: turns_.emplace_back(); return;  // let the loop turn (completions, flush)
      default: turns_.push_back(Turn{"", in.Byte() * std::size_t{16}}); return;  // ... with a full socket
    }
  }

  std::uint32_t Stream(Reader& in) {
    if (opened_.empty()) return 1;
    return opened_[in.Byte() % opened_.size()];
  }

  void Headers(Reader& in) {
    static const char* const kPaths[] = {"/etcdserverpb.KV/Range", "/etcdserverpb.KV/Put", "/etcdserverpb.KV/Txn",
                                         "/etcdserverpb.Watch/Watch", "/etcdserverpb.Lease/LeaseKeepAlive",
                                         "/etcdserverpb.KV/Compact", "x"};
    static const char* const kTimeouts[] = {"1n", "5m", "100u", "99999999H", "1S", "x9S", "-0S"};
    const std::uint8_t shape = in.Byte();
    std::vector<std::pair<std::string, std::string>> h = {
        {":method", (shape & 1) ? "GET" : "POST"},
        {":scheme", "http"},
        {":path", kPaths[in.Byte() % 7]},
        {":authority", "127.0.0.1"},
        {"content-type", (shape & 2) ? "text/plain" : "application/grpc"},
        {"te", "trailers"}};
    if (shape & 4) h.emplace_back("grpc-timeout", kTimeouts[in.Byte() % 7]);
    if (shape & 8) h.emplace_back("grpc-encoding", (shape & 16) ? "gzip" : "identity");
    if (shape & 32) {
      // The token may come many times: nghttp2's deflater then sends one-byte references to its
      // dynamic-table entry, and the list can pass the harness's header bounds.
      const std::uint8_t size = in.Byte();
      const std::string token = in.Bytes(size % 16);
      for (int i = 0; i < 1 + (size >> 4) * 16; ++i) h.emplace_back("token", token);
    }
    if (shape & 64) h.emplace_back("trace-bin", in.Bytes(in.Byte() % 16));
    std::vector<nghttp2_nv> nv;
    for (auto& [name, value] : h) {
      nv.push_back({reinterpret_cast<std::uint8_t*>(name.data()), reinterpret_cast<std::uint8_t*>(value.data()),
                    name.size(), value.size(), NGHTTP2_NV_FLAG_NONE});
    }
    std::string block(nghttp2_hd_deflate_bound(deflater_, nv.data(), nv.size()), '\0');
    const ssize_t n = nghttp2_hd_deflate_hd(deflater_, reinterpret_cast<std::uint8_t*>(block.data()), block.size(),
                                            nv.data(), nv.size());
    if (n < 0) return;
    block.resize(static_cast<std::size_t>(n));
    const std::uint32_t id = next_id_;
    next_id_ += 2;
    opened_.push_back(id);
    const std::uint8_t flags = NGHTTP2_FLAG_END_HEADERS | ((shape & 128) ? NGHTTP2_FLAG_END_STREAM : 0);
    AppendFrame(turns_.back().bytes, NGHTTP2_HEADERS, flags, id, block);
  }

  // One gRPC message (valid, compressed-flagged or with a lying length) cut into 1-3 DATA frames.
  void Data(Reader& in) {
    const std::uint32_t id = Stream(in);
    const std::uint8_t shape = in.Byte();
    std::string body = in.Bytes(in.Byte());
    if (shape & 1) body.resize(5000, 'b');  // over the 4 KiB limit of the harness
    std::string message;
    esp::AppendGrpcMessage(message, body);
    if (shape & 2) message[0] = 1;                      // compressed flag
    if (shape & 4) message[1] = static_cast<char>(0x7f);  // a length far beyond what follows
    const std::size_t pieces = 1 + (shape >> 3) % 3;
    const std::size_t step = message.size() / pieces + 1;
    for (std::size_t at = 0; at < message.size(); at += step) {
      const bool last = at + step >= message.size();
      const std::uint8_t flags = (last && (shape & 32)) ? NGHTTP2_FLAG_END_STREAM : 0;
      AppendFrame(turns_.back().bytes, NGHTTP2_DATA, flags, id, std::string_view(message).substr(at, step));
    }
  }

  nghttp2_hd_deflater* deflater_ = nullptr;
  std::vector<Turn> turns_;
  std::vector<std::uint32_t> opened_;
  std::uint32_t next_id_ = 1;
};

// Raw bytes: cut in pseudo-random pieces (derived from the input), a few pieces per loop turn.
std::vector<Turn> RawTurns(const std::uint8_t* data, std::size_t size) {
  std::vector<Turn> turns;
  std::uint32_t seed = static_cast<std::uint32_t>(size) * 2654435761u;
  std::size_t at = 0;
  for (int turn = 0; at < size; ++turn) {
    seed = seed * 1103515245u + 12345u;
    const std::size_t n = turn >= 7 ? size - at : std::min<std::size_t>(size - at, 1 + (seed >> 16) % 2000);
    turns.push_back(Turn{std::string(reinterpret_cast<const char*>(data + at), n)});
    at += n;
  }
  return turns;
}

// What the server wrote, checked frame by frame: SETTINGS first, frames no larger than the
// client allowed, responses only on odd streams the client's frames named, and on every stream that ended
// with trailers, DATA that reassembles into whole, uncompressed gRPC messages.
void CheckServerOutput(std::string_view out, std::size_t max_frame, std::uint32_t max_stream, bool may_be_cut) {
  struct Seen {
    std::string data;
    bool reset = false;
  };
  std::map<std::uint32_t, Seen> streams;
  bool first = true;
  std::size_t at = 0;
  while (out.size() - at >= 9) {
    const auto b = [&](std::size_t i) { return static_cast<std::uint32_t>(static_cast<unsigned char>(out[at + i])); };
    const std::size_t length = b(0) << 16 | b(1) << 8 | b(2);
    const std::uint8_t type = static_cast<std::uint8_t>(b(3));
    const std::uint8_t flags = static_cast<std::uint8_t>(b(4));
    const std::uint32_t id = (b(5) << 24 | b(6) << 16 | b(7) << 8 | b(8)) & 0x7fffffffu;
    Check(!first || type == NGHTTP2_SETTINGS, "server output does not start with SETTINGS");
    first = false;
    Check(length <= max_frame, "a frame larger than the client's SETTINGS_MAX_FRAME_SIZE");
    if (out.size() - at - 9 < length) {
      Check(may_be_cut, "output ends inside a frame");
      return;
    }
    const std::string_view payload = out.substr(at + 9, length);
    at += 9 + length;
    if (type != NGHTTP2_DATA && type != NGHTTP2_HEADERS && type != NGHTTP2_RST_STREAM) continue;
    if (id == 0 || id % 2 == 0 || id > max_stream) {
      std::fprintf(stderr, "frame type %u flags %u on stream %u (client opened up to %u)\n", type, flags, id, max_stream);
      Check(false, "a response on a stream the client never opened");
    }
    Seen& seen = streams[id];
    if (type == NGHTTP2_RST_STREAM) seen.reset = true;
    if (type == NGHTTP2_DATA) {
      const std::size_t pad = (flags & NGHTTP2_FLAG_PADDED) != 0 ? 1 + static_cast<unsigned char>(payload[0]) : 0;
      seen.data.append(payload.substr(pad ? 1 : 0, payload.size() - pad));
    }
    if (type == NGHTTP2_HEADERS && (flags & NGHTTP2_FLAG_END_STREAM) != 0 && !seen.reset) {
      // Trailers: everything before them must be whole messages.
      for (std::size_t m = 0; m < seen.data.size();) {
        Check(seen.data.size() - m >= 5, "a response message cut inside its prefix");
        Check(seen.data[m] == 0, "a response message flagged compressed");
        const std::size_t n = static_cast<std::size_t>(static_cast<unsigned char>(seen.data[m + 1])) << 24 |
                              static_cast<std::size_t>(static_cast<unsigned char>(seen.data[m + 2])) << 16 |
                              static_cast<std::size_t>(static_cast<unsigned char>(seen.data[m + 3])) << 8 |
                              static_cast<unsigned char>(seen.data[m + 4]);
        Check(seen.data.size() - m - 5 >= n, "trailers before the end of a response message");
        m += 5 + n;
      }
    }
  }
  Check(may_be_cut || at == out.size(), "output ends inside a frame header");
}

// The highest stream id any frame of the client names: the server may answer (or reset) that far.
std::uint32_t MaxClientStream(const std::vector<Turn>& turns) {
  std::string in;
  for (const Turn& t : turns) in += t.bytes;
  std::uint32_t max = 0;
  for (std::size_t at = in.starts_with("PRI ") ? 24 : 0; in.size() - std::min(at, in.size()) >= 9;) {
    const auto b = [&](std::size_t i) { return static_cast<std::uint32_t>(static_cast<unsigned char>(in[at + i])); };
    max = std::max(max, (b(5) << 24 | b(6) << 16 | b(7) << 8 | b(8)) & 0x7fffffffu);
    at += 9 + (b(0) << 16 | b(1) << 8 | b(2));
  }
  return max;
}

// The HTTP/1.1 side: raw request bytes into an Http1Connection built without a socket, on a real
// EventLoop, with an HttpHandler that answers as the HTTP face's kinds of answer do: at once, a
// turn later, streamed and left open (a watch), streamed and ended (a keep-alive), or never
// (the client goes first). Checked besides ASan/UBSan: the output is a sequence of HTTP/1.1
// responses http-parser reads without error, in request order (each answer carries its request's
// number), no more of them than requests; every call's context is cancelled once the connection
// is gone (a watch left open ends with its client); no reply callback runs after that.
// What both harnesses share: a loop thread playing the per-loop connection table (H2Server's
// Loop) for one connection at a time, turns run one after the other, and a "socket" that takes
// only `budget_` bytes a turn.
class LoopHarness : public ClientConnectionOwner {
 public:
  void OnDirty(ClientConnection* c) override { dirty_.push_back(c); }
  void OnClosed(ClientConnection*) override {}

 protected:
  LoopHarness() {
    loop_->SetEndOfTurn([this] { EndOfTurn(); });
    loop_->Start();
  }

  // Runs `task` on the loop and waits until that turn (its posted work and flush) is over.
  void Step(std::function<void()> task) {
    std::promise<void> done;
    loop_->Post([this, task = std::move(task), &done] {
      task();
      turn_done_ = &done;
    });
    done.get_future().wait();
  }

  // The connection's socket writer: takes what this turn's budget allows into output_.
  std::function<std::size_t(std::string_view)> Socket() {
    return [this](std::string_view bytes) {
      const std::size_t n = std::min(bytes.size(), budget_);
      budget_ -= n;
      output_.append(bytes.substr(0, n));
      return n;
    };
  }

  std::shared_ptr<EventLoop> loop_ = std::make_shared<EventLoop>();
  std::vector<ClientConnection*> dirty_;
  std::string output_;  // written on the loop thread, read after the last Step
  std::size_t budget_ = SIZE_MAX;  // bytes the "socket" still takes this turn

 private:
  void EndOfTurn() {
    for (int round = 0; round < 4 && !dirty_.empty(); ++round) {
      std::vector<ClientConnection*> dirty;
      dirty.swap(dirty_);
      for (ClientConnection* c : dirty) {
        c->ClearDirty();
        c->Flush();
      }
    }
    if (turn_done_ != nullptr) std::exchange(turn_done_, nullptr)->set_value();
  }

  std::promise<void>* turn_done_ = nullptr;
};

class Http1Harness final : public LoopHarness {
 public:
  Http1Harness() {
    limits_.max_body_bytes = 4096;
    limits_.headers = {.max_list_bytes = 2048, .max_fields = 64, .max_connection_bytes = 16384};
    limits_.max_pending_bytes = 16 * 1024;
    limits_.max_waiting_requests = 4;
    limits_.max_waiting_bytes = 8 * 1024;
    handler_ = [this](HttpCall call, CallContextPtr context, std::shared_ptr<HttpReply> reply) {
      Serve(std::move(call), std::move(context), std::move(reply));
    };
  }

  void Run(const std::uint8_t* data, std::size_t size) {
    std::vector<Turn> turns = RawTurns(data, size);
    // Some turns the "socket" takes only a little: answers wait in the connection's buffer.
    std::uint32_t seed = static_cast<std::uint32_t>(size) * 40503u + 7u;
    for (Turn& turn : turns) {
      seed = seed * 1103515245u + 12345u;
      if ((seed >> 28) < 5) turn.write_budget = (seed >> 12) % 700;
    }
    output_.clear();
    calls_ = 0;
    head_calls_.clear();
    contexts_.clear();
    Step([this] {
      connection_ = std::make_unique<Http1Connection>(
          loop_,
          Socket(),
          handler_, limits_, *this);
      Check(connection_->Start(), "http1 start");
    });
    for (const Turn& turn : turns) {
      Step([this, &turn] {
        budget_ = turn.write_budget;
        connection_->Flush();  // writable again (EPOLLOUT in production)
        AnswerLater();
        const auto* p = reinterpret_cast<const std::uint8_t*>(turn.bytes.data());
        const std::size_t first = std::min(turn.bytes.size() / 2 + turn.bytes.size() % 5, turn.bytes.size());
        connection_->Receive(p, first);
        connection_->Receive(p + first, turn.bytes.size() - first);
      });
    }
    Step([this] {
      budget_ = SIZE_MAX;
      connection_->Flush();
      AnswerLater();
      connection_->Drain();
    });
    Step([this] {
      budget_ = SIZE_MAX;
      connection_->Flush();
      connection_.reset();
      dirty_.clear();
    });
    // Replies still held (never answered) and streams left open find nothing now.
    Step([this] {
      AnswerLater();
      for (auto& reply : streams_) reply->Write("late\n");
      streams_.clear();
    });
    for (const auto& weak : contexts_) {
      const auto context = weak.lock();
      Check(!context || context->cancellation().cancelled(), "a call outlived its HTTP/1.1 connection uncancelled");
    }
    CheckResponses(output_, calls_, head_calls_);
  }

 private:
  // On the loop, as the HTTP face is called. The path picks the kind of answer.
  void Serve(HttpCall call, CallContextPtr context, std::shared_ptr<HttpReply> reply) {
    const std::string number = std::to_string(calls_++);
    if (call.method == "HEAD") head_calls_.push_back(calls_ - 1);
    contexts_.push_back(context);
    HttpHeaders headers = {{"X-Seq", number}, {"Content-Type", "application/json"}};
    const std::string_view path = call.path();
    if (path == "/v3/kv/put") {
      later_.emplace_back(reply, number);  // answered at the start of the next turn
    } else if (path == "/v3/watch") {
      reply->Begin(200, std::move(headers));
      reply->Write("{\"result\":{\"created\":true}}\n");
      if (!call.body.empty()) reply->Write(call.body);
      streams_.push_back(reply);  // written to every turn, never ended by the server
    } else if (path == "/v3/lease/keepalive") {
      reply->Begin(200, std::move(headers));
      reply->Write(call.body);
      reply->Write(std::string(call.body.size() % 3000, 'k'));
      reply->End();
      reply->Write("after the end");  // dropped
    } else if (path == "/v3/kv/range") {
      reply->Send(200, std::move(headers), std::move(call.body));
      reply->Send(500, {}, "twice");  // ignored: one answer per request
    } else if (path == "/never") {
      // No answer: the request holds the connection until the client goes.
    } else {
      reply->Send(404, std::move(headers), "404 page not found\n");
    }
  }

  void AnswerLater() {
    auto later = std::move(later_);
    later_.clear();
    for (auto& [reply, number] : later) reply->Send(200, {{"X-Seq", number}}, "{\"header\":{}}");
    for (auto& reply : streams_) reply->Write("{\"result\":{\"events\":[]}}\n");
  }

  // The output as a client reads it: whole responses in request order, the last one possibly cut
  // (the connection closed under a stream, or a refusal cut a stream short).
  // Answers to HEAD requests carry no body: read as the client reads them (F_SKIPBODY), a body
  // there would be taken for the next answer and fail to parse.
  static void CheckResponses(const std::string& out, std::size_t calls, const std::vector<std::size_t>& head_calls) {
    struct State {
      std::size_t complete = 0;
      std::size_t interim = 0;  // 100 Continue
      long last_seq = -1;
      bool seq_field = false;
      bool head_answer = false;
      const std::vector<std::size_t>* head_calls = nullptr;
    } state;
    state.head_calls = &head_calls;
    http_parser parser;
    http_parser_init(&parser, HTTP_RESPONSE);
    parser.data = &state;
    http_parser_settings settings;
    http_parser_settings_init(&settings);
    settings.on_header_field = [](http_parser* p, const char* at, std::size_t n) {
      auto* st = static_cast<State*>(p->data);
      st->seq_field = std::string_view(at, n) == "X-Seq";
      return 0;
    };
    settings.on_header_value = [](http_parser* p, const char* at, std::size_t n) {
      auto* st = static_cast<State*>(p->data);
      if (!st->seq_field) return 0;
      const long seq = std::strtol(std::string(at, n).c_str(), nullptr, 10);
      Check(seq == st->last_seq + 1, "HTTP/1.1 answers out of request order");
      st->last_seq = seq;
      st->head_answer = std::find(st->head_calls->begin(), st->head_calls->end(), static_cast<std::size_t>(seq)) !=
                        st->head_calls->end();
      return 0;
    };
    settings.on_headers_complete = [](http_parser* p) {
      auto* st = static_cast<State*>(p->data);
      if (p->status_code / 100 == 1) ++st->interim;
      const bool skip_body = std::exchange(st->head_answer, false);
      return skip_body ? 1 : 0;  // 1: no body follows (http-parser's answer-to-HEAD signal)
    };
    settings.on_message_complete = [](http_parser* p) {
      ++static_cast<State*>(p->data)->complete;
      return 0;
    };
    const std::size_t used = http_parser_execute(&parser, &settings, out.data(), out.size());
    if (HTTP_PARSER_ERRNO(&parser) != HPE_OK || used != out.size()) {
      std::fprintf(stderr, "http-parser on the server's output: %s at %zu of %zu\n",
                   http_errno_description(HTTP_PARSER_ERRNO(&parser)), used, out.size());
      Check(false, "the HTTP/1.1 output is not a sequence of responses");
    }
    // Each call answers once; the connection's own refusal (400, 413, 431) comes on top.
    Check(state.complete - std::min(state.complete, state.interim) <= calls + 1, "more HTTP/1.1 answers than requests");
  }

  Http1Limits limits_;
  HttpHandler handler_;
  std::unique_ptr<Http1Connection> connection_;
  std::size_t calls_ = 0;
  std::vector<std::size_t> head_calls_;  // numbers of the calls that were HEAD requests
  std::vector<std::weak_ptr<CallContext>> contexts_;
  std::vector<std::pair<std::shared_ptr<HttpReply>, std::string>> later_;
  std::vector<std::shared_ptr<HttpReply>> streams_;
};

// HTTP/2 inputs (scripted frames, or raw bytes the server reads as HTTP/2); the others go to the
// HTTP/1.1 harness.
class Harness final : public LoopHarness {
 public:
  Harness() {
    // Small limits so that inputs reach them: oversize messages, slow-reader resets.
    limits_.max_receive_bytes = 4096;
    limits_.max_pending_bytes_per_stream = 16 * 1024;
    limits_.max_concurrent_streams = 100;
    limits_.headers = {.max_list_bytes = 2048, .max_fields = 64, .max_connection_bytes = 16384};
  }

  void Run(const std::uint8_t* data, std::size_t size) {
    std::vector<Turn> turns;
    // Raw input may raise SETTINGS_MAX_FRAME_SIZE and open any stream: only framing is checked.
    std::size_t max_frame = (1u << 24) - 1;
    if (size > 0 && data[0] >= 'A' && data[0] <= 'Z') {
      // Raw client bytes: the server's own decision says which connection reads them.
      const auto h2 = SpeaksHttp2(std::string_view(reinterpret_cast<const char*>(data), size));
      if (!h2) return;  // a strict prefix of the preface: the server reads on, then the client is gone
      if (!*h2) return http1_.Run(data, size);
      turns = RawTurns(data, size);
    } else {
      Reader in(data, size);
      turns = Script().Build(in);
      max_frame = 16384;
    }
    const std::uint32_t max_stream = MaxClientStream(turns);
    output_.clear();
    Step([this] {
      connection_ = std::make_unique<H2Connection>(
          loop_,
          Socket(),
          TestRouter(), limits_, *this);
      Check(connection_->Start(), "start");
    });
    bool limited = false;
    for (const Turn& turn : turns) {
      limited = limited || turn.write_budget != SIZE_MAX;
      Step([this, &turn] {
        const std::string& bytes = turn.bytes;
        budget_ = turn.write_budget;
        // Writable again: output held back in an earlier turn goes out (EPOLLOUT in production).
        connection_->Flush();
        AnswerHeld();
        // Two pieces per turn: nghttp2 must cope with a frame cut anywhere.
        const auto* p = reinterpret_cast<const std::uint8_t*>(bytes.data());
        const std::size_t half = bytes.size() / 2 + (bytes.size() % 7);
        const std::size_t first = std::min(half, bytes.size());
        connection_->Receive(p, first);
        connection_->Receive(p + first, bytes.size() - first);
        CheckHeaderBytes();
      });
    }
    Step([this] {
      budget_ = SIZE_MAX;
      connection_->Flush();
      AnswerHeld();  // answered while the connection is still open
      connection_->Drain();
      CheckHeaderBytes();
    });
    Step([this] {
      connection_.reset();
      dirty_.clear();
      AnswerHeld();  // after the connection is gone: must find nothing
    });
    Check(handlers_open == 0, "a stream handler never heard OnClose");
    // A connection closed while its socket was full leaves its last frame half-written.
    CheckServerOutput(output_, max_frame, max_stream, /*may_be_cut=*/limited);
  }

  // Decoded request headers stay within the connection's bound, and are all given back once no
  // stream is open (refused, reset, finished or closed with the connection).
  void CheckHeaderBytes() const {
    Check(connection_->header_bytes() <= limits_.headers.max_connection_bytes, "header bytes over the bound");
    Check(!(connection_->idle() || connection_->closed()) || connection_->header_bytes() == 0,
          "header bytes held with no stream open");
  }

 private:
  H2Limits limits_;
  std::unique_ptr<H2Connection> connection_;
  Http1Harness http1_;  // its own loop thread, for inputs the server would read as HTTP/1.1
};

}  // namespace
}  // namespace esp

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static esp::Harness harness;  // one loop thread for the whole run
  harness.Run(data, size);
  return 0;
}
