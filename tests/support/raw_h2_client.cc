#include "support/raw_h2_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "transport/grpc_framing.h"

namespace esp::test {

int ConnectLoopback(int port, int receive_buffer) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("socket");
  if (receive_buffer > 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    throw std::runtime_error("connect to 127.0.0.1:" + std::to_string(port));
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

int PortOf(const std::string& address) { return std::stoi(address.substr(address.rfind(':') + 1)); }

std::string Framed(const std::string& message) {
  std::string out;
  AppendGrpcMessage(out, message);
  return out;
}

std::string RawStream::grpc_status() const {
  const auto it = headers.find("grpc-status");
  return it == headers.end() ? "" : it->second;
}

RawH2Client::RawH2Client(int port, int receive_buffer) : fd_(ConnectLoopback(port, receive_buffer)) {
  nghttp2_session_callbacks* cb = nullptr;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, &RawH2Client::OnFrame);
  nghttp2_session_callbacks_set_on_header_callback(cb, &RawH2Client::OnHeader);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, &RawH2Client::OnData);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, &RawH2Client::OnStreamClose);
  nghttp2_session_client_new(&session_, cb, this);
  nghttp2_session_callbacks_del(cb);
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, nullptr, 0);
}

RawH2Client::~RawH2Client() {
  nghttp2_session_del(session_);
  close(fd_);
}

std::int32_t RawH2Client::Submit(const std::string& path, std::vector<std::string> chunks, bool end_stream,
                                 std::vector<std::pair<std::string, std::string>> extra) {
  std::vector<std::pair<std::string, std::string>> h = {{":method", "POST"},
                                                        {":scheme", "http"},
                                                        {":path", path},
                                                        {":authority", "localhost"},
                                                        {"content-type", "application/grpc"},
                                                        {"te", "trailers"}};
  h.insert(h.end(), extra.begin(), extra.end());
  std::vector<nghttp2_nv> nv;
  for (auto& [k, v] : h) {
    nv.push_back({reinterpret_cast<std::uint8_t*>(k.data()), reinterpret_cast<std::uint8_t*>(v.data()), k.size(),
                  v.size(), NGHTTP2_NV_FLAG_NONE});
  }
  nghttp2_data_provider provider{};
  provider.read_callback = &RawH2Client::ReadBody;
  const std::int32_t id = nghttp2_submit_request(session_, nullptr, nv.data(), nv.size(), &provider, nullptr);
  streams_[id].chunks.assign(std::make_move_iterator(chunks.begin()), std::make_move_iterator(chunks.end()));
  streams_[id].end_stream = end_stream;
  return id;
}

void RawH2Client::Continue(std::int32_t id, std::string chunk, bool end_stream) {
  streams_[id].chunks.push_back(std::move(chunk));
  streams_[id].end_stream = end_stream;
  nghttp2_session_resume_data(session_, id);
}

void RawH2Client::Reset(std::int32_t id) { nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL); }

void RawH2Client::Ping() { nghttp2_submit_ping(session_, NGHTTP2_FLAG_NONE, nullptr); }

void RawH2Client::Send() {
  for (;;) {
    const std::uint8_t* data = nullptr;
    const ssize_t n = nghttp2_session_mem_send(session_, &data);
    if (n <= 0) return;
    for (ssize_t off = 0; off < n;) {
      const ssize_t w = send(fd_, data + off, static_cast<std::size_t>(n - off), MSG_NOSIGNAL);
      if (w <= 0) return;
      off += w;
    }
  }
}

bool RawH2Client::RunUntil(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done() && !peer_closed_) {
    Send();
    if (std::chrono::steady_clock::now() > deadline) break;
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, 20) <= 0) continue;
    std::uint8_t buf[65536];
    const ssize_t n = recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) {
      peer_closed_ = true;
      break;
    }
    if (nghttp2_session_mem_recv(session_, buf, static_cast<std::size_t>(n)) < 0) break;
  }
  return done();
}

int RawH2Client::OnFrame(nghttp2_session*, const nghttp2_frame* frame, void* user) {
  auto* self = static_cast<RawH2Client*>(user);
  if (frame->hd.type == NGHTTP2_GOAWAY) {
    self->goaway_code_ = frame->goaway.error_code;
    self->goaway_data_.assign(reinterpret_cast<const char*>(frame->goaway.opaque_data), frame->goaway.opaque_data_len);
  } else if (frame->hd.type == NGHTTP2_PING) {
    ++((frame->hd.flags & NGHTTP2_FLAG_ACK) != 0 ? self->ping_acks_ : self->server_pings_);
  }
  return 0;
}

int RawH2Client::OnHeader(nghttp2_session*, const nghttp2_frame* frame, const std::uint8_t* name, std::size_t namelen,
                          const std::uint8_t* value, std::size_t valuelen, std::uint8_t, void* user) {
  static_cast<RawH2Client*>(user)
      ->streams_[frame->hd.stream_id]
      .headers[std::string(reinterpret_cast<const char*>(name), namelen)] =
      std::string(reinterpret_cast<const char*>(value), valuelen);
  return 0;
}

int RawH2Client::OnData(nghttp2_session*, std::uint8_t, std::int32_t id, const std::uint8_t* data, std::size_t len,
                        void* user) {
  static_cast<RawH2Client*>(user)->streams_[id].data.append(reinterpret_cast<const char*>(data), len);
  return 0;
}

int RawH2Client::OnStreamClose(nghttp2_session*, std::int32_t id, std::uint32_t error, void* user) {
  auto* self = static_cast<RawH2Client*>(user);
  auto& s = self->streams_[id];
  s.closed = true;
  s.close_error = error;
  ++self->streams_closed_;
  return 0;
}

// Hands out the stream's queued chunks one DATA frame each; an open stream with nothing queued
// defers until Continue() resumes it.
ssize_t RawH2Client::ReadBody(nghttp2_session*, std::int32_t id, std::uint8_t* buf, std::size_t length,
                              std::uint32_t* flags, nghttp2_data_source*, void* user) {
  auto& s = static_cast<RawH2Client*>(user)->streams_[id];
  if (s.chunks.empty()) {
    if (!s.end_stream) return NGHTTP2_ERR_DEFERRED;
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    return 0;
  }
  std::string& chunk = s.chunks.front();
  const std::size_t n = std::min(length, chunk.size());
  std::memcpy(buf, chunk.data(), n);
  chunk.erase(0, n);
  if (chunk.empty()) s.chunks.pop_front();
  if (s.chunks.empty() && s.end_stream) *flags |= NGHTTP2_DATA_FLAG_EOF;
  return static_cast<ssize_t>(n);
}

}  // namespace esp::test
