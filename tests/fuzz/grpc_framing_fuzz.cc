// libFuzzer target for the hand-written gRPC codecs (src/transport/grpc_framing.*).
// The first input byte picks a mode; each mode checks invariants against a reference, so a wrong
// answer aborts just like a crash does:
//  0: messages made from the input, encoded by AppendGrpcMessage, fed to MessageDeframer cut at
//     input-chosen points: the deframer returns exactly those messages, in order, and refuses the
//     first one over the limit as soon as its prefix is complete;
//  1: arbitrary bytes fed in arbitrary pieces: whatever comes out re-encodes to a prefix of the
//     input, and a refusal names a prefix that really is compressed or over the limit;
//  2: grpc-timeout parsing against a reference;
//  3: grpc-message percent-encoding: printable, and decodes back to the input.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "transport/grpc_framing.h"

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}

// Reads the input front to back; past the end it yields zeros.
class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  std::uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  std::uint16_t U16() { return static_cast<std::uint16_t>(Byte() << 8 | Byte()); }
  std::string_view Take(std::size_t n) {
    n = std::min(n, size_ - pos_);
    const std::string_view out(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return out;
  }
  bool empty() const { return pos_ >= size_; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

// Feeds `wire` to `deframer` in pieces whose sizes come from `in`, collecting messages as they
// complete. Returns the first refusal (ok if none) and where in `wire` it happened.
esp::Status FeedInPieces(esp::MessageDeframer& deframer, std::string_view wire, Input& in,
                         std::vector<std::string>& out, std::size_t& fed) {
  fed = 0;
  while (fed < wire.size()) {
    const std::size_t piece = std::min<std::size_t>(wire.size() - fed, 1 + in.Byte() % 64);
    const esp::Status status = deframer.Feed(wire.substr(fed, piece));
    fed += piece;
    if (!status.ok()) return status;
    while (auto m = deframer.Next()) out.push_back(std::move(*m));
  }
  return esp::Status::Ok();
}

std::size_t LengthAt(std::string_view wire, std::size_t at) {
  std::size_t n = 0;
  for (std::size_t i = 1; i < 5; ++i) n = n << 8 | static_cast<unsigned char>(wire[at + i]);
  return n;
}

void Messages(Input& in) {
  const std::size_t max = in.U16() % 2048;
  std::vector<std::string> sent;
  std::string wire;
  const std::size_t count = in.Byte() % 16;
  for (std::size_t i = 0; i < count && !in.empty(); ++i) {
    // Lengths up to a bit over the limit; content from the input (padded with a pattern).
    std::string m(in.Take(in.U16() % (max + 64)));
    m.resize(std::max<std::size_t>(m.size(), in.Byte()), 'x');
    esp::AppendGrpcMessage(wire, m);
    sent.push_back(std::move(m));
  }
  esp::MessageDeframer deframer(max);
  std::vector<std::string> got;
  std::size_t fed = 0;
  const esp::Status status = FeedInPieces(deframer, wire, in, got, fed);
  // The first oversize message, if any, bounds what may come out.
  std::size_t first_big = sent.size();
  std::size_t big_prefix_end = wire.size();
  for (std::size_t i = 0, at = 0; i < sent.size(); at += 5 + sent[i].size(), ++i) {
    if (sent[i].size() > max) {
      first_big = i;
      big_prefix_end = at + 5;
      break;
    }
  }
  if (first_big == sent.size()) {
    Check(status.ok(), "a stream within limits was refused");
    Check(got == sent, "reassembled messages differ from the encoded ones");
    Check(!deframer.partial(), "bytes left over after whole messages");
  } else {
    Check(status.code() == esp::StatusCode::kResourceExhausted, "an oversize message was not refused as such");
    // Refused in the piece that completed its prefix: never buffered past it by more than a piece.
    Check(fed >= big_prefix_end && fed - big_prefix_end < 64, "oversize message refused late");
    Check(got.size() <= first_big, "an oversize message (or one after it) came out");
    for (std::size_t i = 0; i < got.size(); ++i) Check(got[i] == sent[i], "message before the refusal differs");
    Check(!deframer.Next().has_value(), "messages still come out after a refusal");
    Check(!deframer.Feed("x").ok(), "input accepted after a refusal");
  }
}

void RawBytes(Input& in) {
  const std::size_t max = in.U16();
  const std::string wire(in.Take(in.U16()));
  esp::MessageDeframer deframer(max);
  std::vector<std::string> got;
  std::size_t fed = 0;
  const esp::Status status = FeedInPieces(deframer, wire, in, got, fed);
  std::string again;
  for (const auto& m : got) {
    Check(m.size() <= max, "a message over the limit came out");
    esp::AppendGrpcMessage(again, m);
  }
  Check(std::string_view(wire).starts_with(again), "messages out do not re-encode to the input");
  if (!status.ok()) {
    // The refusal is about the prefix right after the last message delivered... or one after a
    // complete message still buffered; either way some prefix in the fed bytes is really bad.
    bool bad = false;
    for (std::size_t at = 0; at + 5 <= fed;) {
      if (wire[at] != 0 || LengthAt(wire, at) > max) {
        bad = true;
        break;
      }
      at += 5 + LengthAt(wire, at);
    }
    Check(bad, "refused a stream without a bad prefix");
  } else {
    Check(deframer.partial() == (again.size() < wire.size()), "partial() disagrees with what is buffered");
  }
}

void Timeout(Input& in) {
  const std::string_view value = in.Take(in.Byte() % 12);
  const auto parsed = esp::ParseGrpcTimeout(value);
  bool valid = value.size() >= 2 && value.size() <= 9 && std::string_view("HMSmun").find(value.back()) != std::string_view::npos;
  long double amount = 0;
  for (std::size_t i = 0; valid && i + 1 < value.size(); ++i) {
    valid = value[i] >= '0' && value[i] <= '9';
    amount = amount * 10 + (value[i] - '0');
  }
  Check(parsed.has_value() == valid, "grpc-timeout accepted/refused wrongly");
  if (!valid) return;
  long double ns_per = 1;
  switch (value.back()) {
    case 'H': ns_per = 3600e9L; break;
    case 'M': ns_per = 60e9L; break;
    case 'S': ns_per = 1e9L; break;
    case 'm': ns_per = 1e6L; break;
    case 'u': ns_per = 1e3L; break;
    default: break;
  }
  const long double expected = amount * ns_per;
  const long double got = static_cast<long double>(parsed->count());
  Check(got >= 0, "negative timeout");
  // Exact below the clamp; at or above it saturated (a deadline that cannot overflow a clock).
  const long double cap = static_cast<long double>(esp::kMaxGrpcTimeout.count());
  Check(expected >= cap ? got == cap : got == expected, "grpc-timeout value wrong");
}

void Percent(Input& in) {
  const std::string_view message = in.Take(in.U16());
  const std::string encoded = esp::PercentEncodeGrpcMessage(message);
  std::string decoded;
  for (std::size_t i = 0; i < encoded.size(); ++i) {
    const auto c = static_cast<unsigned char>(encoded[i]);
    Check(c >= 0x20 && c <= 0x7e, "encoded byte outside 0x20-0x7e");
    if (c != '%') {
      decoded.push_back(static_cast<char>(c));
      continue;
    }
    Check(i + 2 < encoded.size(), "truncated escape");
    decoded.push_back(static_cast<char>(std::stoi(encoded.substr(i + 1, 2), nullptr, 16)));
    i += 2;
  }
  Check(decoded == message, "percent-encoding does not round-trip");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input in(data, size);
  switch (in.Byte() % 4) {
    case 0: Messages(in); break;
    case 1: RawBytes(in); break;
    case 2: Timeout(in); break;
    default: Percent(in); break;
  }
  return 0;
}
