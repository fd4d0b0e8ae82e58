#include "transport/http1_connection.h"

#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <climits>
#include <cstdio>
#include <ctime>

#include "transport/peer_identity.h"

namespace esp {

// The HTTP face's handle on one HTTP/1.1 request: thread-safe, every method posts to the loop
// and reaches the exchange through a weak pointer (a reply for a closed connection finds nothing).
class Http1Reply final : public LoopHttpReply<Http1Connection, Http1Exchange> {
 public:
  using LoopHttpReply::LoopHttpReply;

  void Send(int status, HttpHeaders headers, std::string body) override {
    if (!MarkEnded()) return;
    Queue(body.size());
    OnLoop([status, headers = std::move(headers), body = std::move(body)](Http1Connection& c, Http1Exchange& e) {
      c.ReplyHead(e, status, headers, /*chunked=*/false, body.size());
      c.ReplyBody(e, body);
      c.ReplyEnd(e);
    });
  }
  void Begin(int status, HttpHeaders headers) override {
    OnLoop([status, headers = std::move(headers)](Http1Connection& c, Http1Exchange& e) {
      c.ReplyHead(e, status, headers, /*chunked=*/true, 0);
    });
  }
  bool Write(std::string piece) override {
    if (!Writable()) return false;
    Queue(piece.size());
    OnLoop([piece = std::move(piece)](Http1Connection& c, Http1Exchange& e) { c.ReplyBody(e, piece); });
    return true;
  }
  void End() override {
    if (!MarkEnded()) return;
    OnLoop([](Http1Connection& c, Http1Exchange& e) { c.ReplyEnd(e); });
  }
};

namespace {

constexpr std::size_t kReadChunk = 64 * 1024;
constexpr int kMaxReadsPerEvent = 16;

Http1Connection* Self(http_parser* parser) { return static_cast<Http1Connection*>(parser->data); }
std::string_view Piece(const char* at, std::size_t length) { return {at, length}; }

const http_parser_settings& Settings() {
  static const http_parser_settings settings = [] {
    http_parser_settings s{};
    http_parser_settings_init(&s);
    s.on_message_begin = [](http_parser* p) { return Self(p)->OnMessageBegin(); };
    s.on_url = [](http_parser* p, const char* at, std::size_t n) { return Self(p)->OnUrl(Piece(at, n)); };
    s.on_header_field = [](http_parser* p, const char* at, std::size_t n) {
      return Self(p)->OnHeaderField(Piece(at, n));
    };
    s.on_header_value = [](http_parser* p, const char* at, std::size_t n) {
      return Self(p)->OnHeaderValue(Piece(at, n));
    };
    s.on_headers_complete = [](http_parser* p) { return Self(p)->OnHeadersComplete(); };
    s.on_body = [](http_parser* p, const char* at, std::size_t n) { return Self(p)->OnBody(Piece(at, n)); };
    s.on_message_complete = [](http_parser* p) { return Self(p)->OnMessageComplete(); };
    return s;
  }();
  return settings;
}

// Go's net/http writes a Date header on every answer; clients and proxies log it.
std::string HttpDate() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  std::array<char, 64> text{};
  const std::size_t n = std::strftime(text.data(), text.size(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return std::string(text.data(), n);
}

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

std::string VerifiedCn(SSL* ssl) {
  if (ssl == nullptr || SSL_get_verify_result(ssl) != X509_V_OK) return {};
  X509* cert = SSL_get1_peer_certificate(ssl);
  std::string cn = CommonName(cert);
  X509_free(cert);
  return cn;
}

}  // namespace

Http1Connection::Http1Connection(std::shared_ptr<EventLoop> loop, int fd, SSL* ssl, std::string first_bytes,
                                 const HttpHandler& handler, const Http1Limits& limits, ClientConnectionOwner& owner)
    : loop_(std::move(loop)), fd_(fd), ssl_(ssl), first_bytes_(std::move(first_bytes)), handler_(handler),
      limits_(limits), owner_(owner) {}

Http1Connection::Http1Connection(std::shared_ptr<EventLoop> loop, Output output, const HttpHandler& handler,
                                 const Http1Limits& limits, ClientConnectionOwner& owner)
    : loop_(std::move(loop)), fd_(-1), ssl_(nullptr), output_(std::move(output)), handler_(handler), limits_(limits),
      owner_(owner) {}

Http1Connection::~Http1Connection() { Close(); }

bool Http1Connection::Start() {
  http_parser_init(&parser_, HTTP_REQUEST);
  parser_.data = this;
  client_cn_ = VerifiedCn(ssl_);
  if (fd_ >= 0) loop_->AddFd(fd_, EPOLLIN, [this](std::uint32_t events) { OnEvents(events); });
  if (!first_bytes_.empty()) {
    const std::string first = std::move(first_bytes_);
    Receive(reinterpret_cast<const std::uint8_t*>(first.data()), first.size());
  }
  return true;
}

void Http1Connection::OnEvents(std::uint32_t events) {
  if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0) DoRead();
  if (!closed()) MarkDirty();  // writable again: the end-of-turn flush retries
}

void Http1Connection::DoRead() {
  std::array<std::uint8_t, kReadChunk> buffer;
  for (int i = 0; i < kMaxReadsPerEvent && !closed() && reading_; ++i) {
    const IoResult read = ReadSome(fd_, ssl_, buffer);
    if (read.would_block()) return;
    if (!read.done()) {
      Close();  // the client went away: its calls are cancelled (a watch ends here)
      return;
    }
    Receive(buffer.data(), read.bytes);
    if (ssl_ == nullptr && read.bytes < buffer.size()) return;
  }
  if (!closed() && reading_ && ssl_ != nullptr && SSL_pending(ssl_) > 0) {
    loop_->Post([this, alive = std::weak_ptr<bool>(alive_)] {
      if (!alive.expired() && !closed()) DoRead();
    });
  }
}

void Http1Connection::Receive(const std::uint8_t* data, std::size_t size) {
  if (closed() || parse_failed_ || close_after_write_) return;
  Parse({reinterpret_cast<const char*>(data), size});
}

void Http1Connection::Parse(std::string_view bytes) {
  const std::size_t used = http_parser_execute(&parser_, &Settings(), bytes.data(), bytes.size());
  if (closed() || parse_failed_) return;
  if (parser_.upgrade != 0) {
    // h2c upgrade or CONNECT: not served; whatever follows is not HTTP/1.1. The requests parsed
    // so far are answered, then the connection closes.
    parse_failed_ = true;
    for (Parsed& request : waiting_) request.keep_alive = false;
    if (waiting_.empty() && !active_) return Close();
    return Next();
  }
  if (HTTP_PARSER_ERRNO(&parser_) != HPE_OK || used != bytes.size()) {
    spdlog::debug("http: malformed request: {}", http_errno_description(HTTP_PARSER_ERRNO(&parser_)));
    parse_failed_ = true;
    // As Go's net/http: a plain-text 400 and the connection closes.
    if (!active_ && waiting_.empty()) RefuseAndClose(400, "400 Bad Request");
    return;
  }
  Next();
}

int Http1Connection::OnMessageBegin() {
  current_ = Parsed{};
  header_name_.clear();
  header_value_.clear();
  in_value_ = false;
  header_bytes_ = 0;
  header_fields_ = 0;
  expect_continue_ = false;
  return 0;
}

// Headers are bounded as on HTTP/2 (header_limits.h, name + value + 32 bytes per field); the URL
// counts as one field.
bool Http1Connection::Charge(std::size_t bytes) {
  header_bytes_ += bytes;
  if (header_bytes_ <= limits_.headers.max_list_bytes && header_fields_ <= limits_.headers.max_fields) return true;
  parse_failed_ = true;
  RefuseAndClose(431, "431 Request Header Fields Too Large");
  return false;
}

int Http1Connection::OnUrl(std::string_view piece) {
  if (!Charge(piece.size())) return 1;
  current_.call.target.append(piece);
  return 0;
}

int Http1Connection::OnHeaderField(std::string_view piece) {
  if (!Charge(piece.size())) return 1;
  if (in_value_) {
    current_.call.headers.emplace_back(Lower(header_name_), std::move(header_value_));
    header_name_.clear();
    header_value_.clear();
    in_value_ = false;
  }
  if (header_name_.empty()) {
    ++header_fields_;
    if (!Charge(kHpackFieldOverhead)) return 1;
  }
  header_name_.append(piece);
  return 0;
}

int Http1Connection::OnHeaderValue(std::string_view piece) {
  if (!Charge(piece.size())) return 1;
  in_value_ = true;
  header_value_.append(piece);
  return 0;
}

int Http1Connection::OnHeadersComplete() {
  if (in_value_ || !header_name_.empty()) current_.call.headers.emplace_back(Lower(header_name_), std::move(header_value_));
  header_name_.clear();
  header_value_.clear();
  in_value_ = false;
  current_.call.method = http_method_str(static_cast<http_method>(parser_.method));
  if (parser_.content_length != ULLONG_MAX && parser_.content_length > limits_.max_body_bytes) {
    parse_failed_ = true;
    RefuseAndClose(413, "413 Request Entity Too Large");
    return 1;
  }
  // curl asks before sending a large body; answered only when this request is next, so the
  // interim line cannot land inside another response (otherwise the client times out and sends).
  const std::string* expect = current_.call.Header("expect");
  if (expect != nullptr && Lower(*expect) == "100-continue" && !active_ && waiting_.empty()) {
    static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
    outbuf_.Append(reinterpret_cast<const std::uint8_t*>(kContinue.data()), kContinue.size());
    MarkDirty();
  }
  return 0;
}

int Http1Connection::OnBody(std::string_view piece) {
  if (current_.call.body.size() + piece.size() > limits_.max_body_bytes) {
    parse_failed_ = true;
    RefuseAndClose(413, "413 Request Entity Too Large");
    return 1;
  }
  current_.call.body.append(piece);
  return 0;
}

int Http1Connection::OnMessageComplete() {
  current_.keep_alive = http_should_keep_alive(&parser_) != 0;
  current_.call.client_cn = client_cn_;
  waiting_bytes_ += current_.call.body.size() + header_bytes_;
  waiting_.push_back(std::move(current_));
  current_ = Parsed{};
  if (waiting_.size() >= limits_.max_waiting_requests || waiting_bytes_ >= limits_.max_waiting_bytes) {
    reading_ = false;  // back-pressure: the socket fills, the client waits
    UpdateInterest();
  }
  return 0;
}

void Http1Connection::Next() {
  while (!active_ && !waiting_.empty() && !closed() && !close_after_write_) {
    Parsed next = std::move(waiting_.front());
    waiting_.pop_front();
    waiting_bytes_ -= std::min(waiting_bytes_, next.call.body.size());
    if (waiting_.empty()) waiting_bytes_ = 0;
    if (!reading_ && waiting_.size() < limits_.max_waiting_requests / 2) {
      reading_ = true;
      UpdateInterest();
    }
    active_ = std::make_shared<Http1Exchange>();
    active_->connection = this;
    active_->keep_alive = next.keep_alive && !draining_;
    active_->head_only = next.call.method == "HEAD";
    active_->context = std::make_shared<CallContext>(std::nullopt, Metadata());
    active_->reply = std::make_shared<Http1Reply>(loop_, active_);
    // The reply posts: a handler answering at once never re-enters this loop from in here.
    handler_(std::move(next.call), active_->context, active_->reply);
  }
  if (!active_ && waiting_.empty() && parse_failed_ && !closed() && !close_after_write_) {
    RefuseAndClose(400, "400 Bad Request");
  }
}

void Http1Connection::ReplyHead(Http1Exchange& exchange, int status, const HttpHeaders& headers, bool chunked,
                                std::size_t content_length) {
  if (exchange.head_sent) return;
  exchange.head_sent = true;
  exchange.chunked = chunked;
  std::string head = "HTTP/1.1 " + std::to_string(status) + " " + std::string(HttpReason(status)) + "\r\n";
  for (const auto& [name, value] : headers) head.append(name).append(": ").append(value).append("\r\n");
  head.append("Date: ").append(HttpDate()).append("\r\n");
  if (chunked) {
    head.append("Transfer-Encoding: chunked\r\n");
  } else {
    head.append("Content-Length: ").append(std::to_string(content_length)).append("\r\n");
  }
  if (!exchange.keep_alive) head.append("Connection: close\r\n");
  head.append("\r\n");
  outbuf_.Append(reinterpret_cast<const std::uint8_t*>(head.data()), head.size());
  MarkDirty();
}

void Http1Connection::ReplyBody(Http1Exchange& exchange, std::string_view piece) {
  if (exchange.ended || piece.empty() || exchange.head_only) return;
  if (outbuf_.pending() > limits_.max_pending_bytes) {
    spdlog::warn("http: {} bytes queued for a client that does not read; closing the connection", outbuf_.pending());
    Close();
    return;
  }
  if (exchange.chunked) {
    char size[32];
    const int n = std::snprintf(size, sizeof size, "%zx\r\n", piece.size());
    outbuf_.Append(reinterpret_cast<const std::uint8_t*>(size), static_cast<std::size_t>(n));
  }
  outbuf_.Append(reinterpret_cast<const std::uint8_t*>(piece.data()), piece.size());
  if (exchange.chunked) outbuf_.Append(reinterpret_cast<const std::uint8_t*>("\r\n"), 2);
  MarkDirty();
}

void Http1Connection::ReplyEnd(Http1Exchange& exchange) {
  if (exchange.ended) return;
  if (!exchange.head_sent) ReplyHead(exchange, 200, {}, /*chunked=*/false, 0);
  exchange.ended = true;
  if (exchange.chunked && !exchange.head_only) outbuf_.Append(reinterpret_cast<const std::uint8_t*>("0\r\n\r\n"), 5);
  exchange.connection = nullptr;
  // The request is over: whatever still serves it (a watch that ended itself) lets go now.
  if (exchange.context) exchange.context->cancellation().Cancel();
  if (!exchange.keep_alive) close_after_write_ = true;
  if (active_.get() == &exchange) active_.reset();
  MarkDirty();
  // The next pipelined request starts after this turn's output, in order.
  loop_->Post([this, alive = std::weak_ptr<bool>(alive_)] {
    if (!alive.expired() && !closed()) Next();
  });
}

void Http1Connection::RefuseAndClose(int status, std::string_view body) {
  if (closed() || close_after_write_) return;
  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + std::string(HttpReason(status)) +
                    "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: " +
                    std::to_string(body.size()) + "\r\n\r\n";
  out.append(body);
  // A response being streamed is cut off: the refusal must not land inside it.
  if (active_) {
    Close();
    return;
  }
  outbuf_.Append(reinterpret_cast<const std::uint8_t*>(out.data()), out.size());
  close_after_write_ = true;
  MarkDirty();
}

void Http1Connection::MarkDirty() {
  if (dirty_ || closed()) return;
  dirty_ = true;
  owner_.OnDirty(this);
}

void Http1Connection::UpdateInterest() {
  if (fd_ < 0 || closed()) return;
  const bool want_write = outbuf_.pending() > 0;
  std::uint32_t events = (reading_ ? EPOLLIN : 0u) | (want_write ? EPOLLOUT : 0u);
  want_write_ = want_write;
  loop_->ModifyFd(fd_, events);
}

void Http1Connection::Flush() {
  if (closed()) return;
  const std::size_t before = outbuf_.pending();
  const IoResult written = output_ ? outbuf_.WriteWith([this](std::string_view data) {
    return IoResult::Bytes(output_(data));
  })
                                   : outbuf_.WriteTo(fd_, ssl_);
  if (!written.done()) {
    Close();
    return;
  }
  if (active_ && active_->reply) active_->reply->OnSent(before - outbuf_.pending());
  if (close_after_write_ && outbuf_.pending() == 0) {
    Close();
    return;
  }
  if (draining_ && !active_ && waiting_.empty() && outbuf_.pending() == 0) {
    Close();
    return;
  }
  if ((outbuf_.pending() > 0) != want_write_) UpdateInterest();
}

void Http1Connection::Drain() {
  if (closed()) return;
  draining_ = true;
  if (active_) active_->keep_alive = false;
  MarkDirty();
}

void Http1Connection::Close() {
  if (closed()) return;
  closed_ = true;
  if (fd_ >= 0) loop_->RemoveFd(fd_);
  waiting_.clear();
  if (active_) {
    // The client went away (or the proxy is stopping): whatever serves the request stops too.
    active_->connection = nullptr;
    if (active_->context) active_->context->cancellation().Cancel();
    active_.reset();
  }
  if (ssl_ != nullptr) {
    SSL_free(ssl_);
    ssl_ = nullptr;
  }
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  owner_.OnClosed(this);
}

}  // namespace esp
