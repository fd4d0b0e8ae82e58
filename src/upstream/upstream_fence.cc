#include "upstream/upstream_fence.h"

#include <signal.h>
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <limits>

namespace esp::fence {
namespace {

constexpr std::int64_t kUnbounded = std::numeric_limits<std::int64_t>::max();
std::atomic<std::int64_t> allowed_until_ns{kUnbounded};
std::atomic<bool> engaged{false};

// Upstream connections are few (shards x members x loops); beyond the slots a socket is simply
// not covered by the SIGCONT shutdown (it is still covered by the write-time check).
constexpr std::size_t kSlots = 4096;
std::array<std::atomic<int>, kSlots> sockets{};

std::int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(SteadyClock::now().time_since_epoch()).count();
}

void OnContinue(int) {
  // Only async-signal-safe calls: a write interrupted by the stop fails instead of reaching a
  // shard after a cut-over it did not see. The connections are re-established afterwards.
  for (auto& slot : sockets) {
    const int fd = slot.load(std::memory_order_relaxed);
    if (fd > 0) shutdown(fd, SHUT_RDWR);
  }
}

}  // namespace

void Engage() {
  allowed_until_ns.store(0);
  engaged.store(true);
  InstallContinueHandler();
}

bool Engaged() { return engaged.load(std::memory_order_relaxed); }

void AllowUntil(SteadyClock::time_point until) {
  allowed_until_ns.store(std::chrono::duration_cast<std::chrono::nanoseconds>(until.time_since_epoch()).count());
}

bool SendAllowed() {
  const std::int64_t until = allowed_until_ns.load(std::memory_order_acquire);
  return until == kUnbounded || NowNs() < until;
}

double SecondsFenced() {
  const std::int64_t until = allowed_until_ns.load();
  const std::int64_t now = NowNs();
  return until == kUnbounded || now < until ? 0.0 : static_cast<double>(now - until) / 1e9;
}

std::string FencedMessage() {
  char text[64];
  std::snprintf(text, sizeof text, "%.1f", SecondsFenced());
  return std::string("etcd-sharding-proxy: this proxy's registration in the meta store may have expired (") + text +
         " s past its last confirmed renewal): it serves no key until it has renewed it and re-read the shard map, "
         "so that a range moved meanwhile is never read or written on the shard it left";
}

void RegisterSocket(int fd) {
  if (!Engaged()) return;
  for (auto& slot : sockets) {
    int empty = 0;
    if (slot.compare_exchange_strong(empty, fd)) return;
  }
}

void UnregisterSocket(int fd) {
  if (!Engaged()) return;
  for (auto& slot : sockets) {
    int expected = fd;
    if (slot.compare_exchange_strong(expected, 0)) return;
  }
}

void InstallContinueHandler() {
  static std::atomic<bool> installed{false};
  if (installed.exchange(true)) return;
  struct sigaction action {};
  action.sa_handler = OnContinue;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGCONT, &action, nullptr);
}

}  // namespace esp::fence
