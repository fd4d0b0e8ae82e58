#include "support/raw_frames.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <stdexcept>

#include "support/raw_h2_client.h"

namespace esp::test {

namespace hpack {

std::string Integer(int prefix_bits, std::uint8_t flags, std::size_t value) {
  const std::size_t max_prefix = (std::size_t{1} << prefix_bits) - 1;
  std::string out;
  if (value < max_prefix) {
    out.push_back(static_cast<char>(flags | value));
    return out;
  }
  out.push_back(static_cast<char>(flags | max_prefix));
  for (value -= max_prefix; value >= 128; value >>= 7) out.push_back(static_cast<char>(0x80 | (value & 0x7f)));
  out.push_back(static_cast<char>(value));
  return out;
}

namespace {
std::string String(std::string_view s) { return Integer(7, 0x00, s.size()) + std::string(s); }
}  // namespace

std::string Indexed(std::size_t index) { return Integer(7, 0x80, index); }

std::string LiteralIndexed(std::string_view name, std::string_view value) {
  return std::string(1, '\x40') + String(name) + String(value);
}

std::string Literal(std::string_view name, std::string_view value) {
  return std::string(1, '\x00') + String(name) + String(value);
}

std::string GrpcRequest(std::string_view path) {
  // Static entries 3 (:method POST) and 6 (:scheme http); the rest without indexing, so that the
  // test's own entries keep their dynamic-table indices.
  return Indexed(3) + Indexed(6) + Integer(4, 0x00, 4) + String(path) + Integer(4, 0x00, 31) +
         String("application/grpc") + Literal("te", "trailers");
}

}  // namespace hpack

std::string Frame(std::uint8_t type, std::uint8_t flags, std::uint32_t stream, std::string_view payload) {
  const std::size_t n = payload.size();
  std::string out = {static_cast<char>(n >> 16),      static_cast<char>(n >> 8),       static_cast<char>(n),
                     static_cast<char>(type),         static_cast<char>(flags),        static_cast<char>(stream >> 24),
                     static_cast<char>(stream >> 16), static_cast<char>(stream >> 8), static_cast<char>(stream)};
  out.append(payload);
  return out;
}

std::string HeaderFrames(std::uint32_t stream, std::string_view block, bool end_stream, std::size_t max_frame) {
  std::string out;
  std::size_t at = 0;
  do {
    const std::string_view piece = block.substr(at, max_frame);
    at += piece.size();
    const bool last = at >= block.size();
    std::uint8_t flags = last ? NGHTTP2_FLAG_END_HEADERS : 0;
    if (out.empty() && end_stream) flags |= NGHTTP2_FLAG_END_STREAM;
    out += Frame(out.empty() ? NGHTTP2_HEADERS : NGHTTP2_CONTINUATION, flags, stream, piece);
  } while (at < block.size());
  return out;
}

FrameClient::FrameClient(int port) : fd_(ConnectLoopback(port)) {
  if (nghttp2_hd_inflate_new(&inflater_) != 0) throw std::runtime_error("nghttp2_hd_inflate_new");
  if (!Write("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + Frame(NGHTTP2_SETTINGS, 0, 0, ""))) {
    throw std::runtime_error("cannot write the client preface");
  }
}

FrameClient::~FrameClient() {
  nghttp2_hd_inflate_del(inflater_);
  close(fd_);
}

bool FrameClient::Write(std::string_view bytes) {
  const bool ok = SendAll(bytes);
  Pump();
  return ok;
}

bool FrameClient::SendAll(std::string_view bytes) {
  while (!bytes.empty() && !peer_closed_) {
    // Take in what the peer sends meanwhile (a peer blocked on its own writes stops reading
    // ours), parsed only once `bytes` are out: replies must not land inside them.
    ReadAvailable(0);
    pollfd p{fd_, POLLOUT, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    const ssize_t n = send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) {
      peer_closed_ = true;
      break;
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return bytes.empty();
}

void FrameClient::Pump() {
  Parse();
  while (!replies_.empty() && !peer_closed_) {
    const std::string replies = std::move(replies_);
    replies_.clear();
    SendAll(replies);
    Parse();
  }
}

bool FrameClient::RunUntil(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done() && !peer_closed_ && std::chrono::steady_clock::now() < deadline) {
    ReadAvailable(20);
    Pump();
  }
  return done();
}

std::optional<std::uint32_t> FrameClient::setting(std::uint16_t id) const {
  const auto it = settings_.find(id);
  if (it == settings_.end()) return std::nullopt;
  return it->second;
}

void FrameClient::ReadAvailable(int wait_ms) {
  pollfd p{fd_, POLLIN, 0};
  if (peer_closed_ || poll(&p, 1, wait_ms) <= 0) return;
  char buf[65536];
  const ssize_t n = recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) {
    peer_closed_ = true;
    return;
  }
  in_.append(buf, static_cast<std::size_t>(n));
}

void FrameClient::Parse() {
  std::size_t at = 0;
  while (in_.size() - at >= 9) {
    const auto b = [&](std::size_t i) { return static_cast<std::uint32_t>(static_cast<unsigned char>(in_[at + i])); };
    const std::size_t length = b(0) << 16 | b(1) << 8 | b(2);
    if (in_.size() - at - 9 < length) break;
    const std::uint32_t id = (b(5) << 24 | b(6) << 16 | b(7) << 8 | b(8)) & 0x7fffffffu;
    OnFrame(static_cast<std::uint8_t>(b(3)), static_cast<std::uint8_t>(b(4)), id,
            std::string_view(in_).substr(at + 9, length));
    at += 9 + length;
  }
  in_.erase(0, at);
}

void FrameClient::OnFrame(std::uint8_t type, std::uint8_t flags, std::uint32_t id, std::string_view payload) {
  const auto u32 = [&](std::size_t i) {
    std::uint32_t v = 0;
    for (std::size_t k = 0; k < 4; ++k) v = v << 8 | static_cast<unsigned char>(payload[i + k]);
    return v;
  };
  switch (type) {
    case NGHTTP2_SETTINGS:
      if ((flags & NGHTTP2_FLAG_ACK) != 0) return;
      for (std::size_t i = 0; i + 6 <= payload.size(); i += 6) {
        const auto setting = static_cast<std::uint16_t>(static_cast<unsigned char>(payload[i]) << 8 |
                                                        static_cast<unsigned char>(payload[i + 1]));
        settings_[setting] = u32(i + 2);
      }
      replies_ += Frame(NGHTTP2_SETTINGS, NGHTTP2_FLAG_ACK, 0, "");
      return;
    case NGHTTP2_HEADERS: {
      std::size_t skip = 0;
      std::size_t pad = 0;
      if ((flags & NGHTTP2_FLAG_PADDED) != 0) pad = static_cast<unsigned char>(payload[skip++]);
      if ((flags & NGHTTP2_FLAG_PRIORITY) != 0) skip += 5;
      Inflate(id, payload.substr(skip, payload.size() - skip - pad), (flags & NGHTTP2_FLAG_END_HEADERS) != 0);
      if ((flags & NGHTTP2_FLAG_END_STREAM) != 0) streams_[id].ended = true;
      return;
    }
    case NGHTTP2_CONTINUATION: Inflate(id, payload, (flags & NGHTTP2_FLAG_END_HEADERS) != 0); return;
    case NGHTTP2_DATA: {
      const std::size_t pad = (flags & NGHTTP2_FLAG_PADDED) != 0 ? 1 + static_cast<unsigned char>(payload[0]) : 0;
      streams_[id].data.append(payload.substr(pad ? 1 : 0, payload.size() - pad));
      if ((flags & NGHTTP2_FLAG_END_STREAM) != 0) streams_[id].ended = true;
      return;
    }
    case NGHTTP2_RST_STREAM: streams_[id].reset = u32(0); return;
    case NGHTTP2_GOAWAY: goaway_code_ = u32(4); return;
    case NGHTTP2_PING:
      if ((flags & NGHTTP2_FLAG_ACK) == 0) replies_ += Frame(NGHTTP2_PING, NGHTTP2_FLAG_ACK, 0, payload);
      return;
    default: return;
  }
}

void FrameClient::Inflate(std::uint32_t id, std::string_view block, bool last) {
  auto* in = reinterpret_cast<const std::uint8_t*>(block.data());
  std::size_t left = block.size();
  for (;;) {
    nghttp2_nv nv;
    int flags = 0;
    const ssize_t used = nghttp2_hd_inflate_hd2(inflater_, &nv, &flags, in, left, last ? 1 : 0);
    if (used < 0) throw std::runtime_error("HPACK error in the peer's headers");
    in += used;
    left -= static_cast<std::size_t>(used);
    if ((flags & NGHTTP2_HD_INFLATE_EMIT) != 0) {
      streams_[id].headers[std::string(reinterpret_cast<const char*>(nv.name), nv.namelen)] =
          std::string(reinterpret_cast<const char*>(nv.value), nv.valuelen);
    }
    if ((flags & NGHTTP2_HD_INFLATE_FINAL) != 0) {
      nghttp2_hd_inflate_end_headers(inflater_);
      return;
    }
    if ((flags & NGHTTP2_HD_INFLATE_EMIT) == 0 && left == 0) return;
  }
}

}  // namespace esp::test
