#include "transport/event_loop.h"

#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <mutex>
#include <stdexcept>

namespace esp {

EventLoop::EventLoop() : epoll_fd_(epoll_create1(EPOLL_CLOEXEC)), wake_fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
  // Our TLS connections write through OpenSSL's socket BIO (write(2)), which raises SIGPIPE on a
  // connection the peer closed; that must be an EPIPE for the connection, not the end of the
  // process. main() does it too; this covers the loops used inside test binaries.
  static std::once_flag ignore_sigpipe;
  std::call_once(ignore_sigpipe, [] { std::signal(SIGPIPE, SIG_IGN); });
  if (epoll_fd_ < 0 || wake_fd_ < 0) throw std::runtime_error(std::string("event loop: ") + std::strerror(errno));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = wake_fd_;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev);
}

EventLoop::~EventLoop() {
  Stop();
  close(wake_fd_);
  close(epoll_fd_);
}

namespace {
thread_local EventLoop* current_loop = nullptr;
}  // namespace

EventLoop* EventLoop::Current() { return current_loop; }

void EventLoop::Start() {
  thread_ = std::thread([this] {
    current_loop = this;
    Run();
  });
}

void EventLoop::Stop() {
  if (!thread_.joinable()) return;
  Post([this] { stop_ = true; });
  thread_.join();
}

void EventLoop::Post(Task task) {
  // The loop thread runs its posted work at the end of the current turn: no wake-up needed.
  const bool from_loop = InLoopThread();
  bool wake = false;
  {
    const std::lock_guard lock(mu_);
    posted_.push_back(std::move(task));
    if (!from_loop) {
      wake = !wake_pending_;
      wake_pending_ = true;
    }
  }
  if (wake) {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto n = write(wake_fd_, &one, sizeof one);
  }
}

void EventLoop::AddFd(int fd, std::uint32_t events, FdHandler handler) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    spdlog::warn("epoll add fd {}: {}", fd, std::strerror(errno));
    return;
  }
  handlers_[fd] = std::move(handler);
}

void EventLoop::ModifyFd(int fd, std::uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev);
}

void EventLoop::RemoveFd(int fd) {
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  handlers_.erase(fd);
}

EventLoop::HookId EventLoop::AddEndOfTurn(Task task) {
  const HookId id = next_hook_++;
  end_of_turn_.emplace_back(id, std::move(task));
  return id;
}

void EventLoop::RemoveEndOfTurn(HookId id) {
  std::erase_if(end_of_turn_, [id](const auto& hook) { return hook.first == id; });
}

void EventLoop::SetEndOfTurn(Task task) {
  end_of_turn_.clear();
  AddEndOfTurn(std::move(task));
}

namespace {

// std::push_heap keeps the greatest on top: "greater" puts the earliest deadline there.
struct LaterTimer {
  template <class Entry>
  bool operator()(const Entry& a, const Entry& b) const {
    return a.when != b.when ? a.when > b.when : a.seq > b.seq;
  }
};

}  // namespace

EventLoop::TimerId EventLoop::AddTimer(std::chrono::steady_clock::time_point when, Task task) {
  std::uint32_t index = 0;
  if (free_timer_slots_.empty()) {
    index = static_cast<std::uint32_t>(timer_slots_.size());
    timer_slots_.emplace_back();
  } else {
    index = free_timer_slots_.back();
    free_timer_slots_.pop_back();
  }
  TimerSlot& slot = timer_slots_[index];
  if (++slot.generation == 0) slot.generation = 1;  // id 0 means "no timer"
  slot.armed = true;
  slot.task = std::move(task);
  ++armed_timers_;
  timer_heap_.push_back(TimerEntry{when, next_timer_seq_++, index, slot.generation});
  std::push_heap(timer_heap_.begin(), timer_heap_.end(), LaterTimer{});
  if (timer_heap_.size() > 2 * armed_timers_ + 64) CompactTimers();
  return (static_cast<TimerId>(slot.generation) << 32) | index;
}

void EventLoop::CancelTimer(TimerId id) {
  const auto index = static_cast<std::uint32_t>(id & 0xffffffffu);
  const auto generation = static_cast<std::uint32_t>(id >> 32);
  if (index >= timer_slots_.size()) return;
  const TimerSlot& slot = timer_slots_[index];
  if (!slot.armed || slot.generation != generation) return;
  // Destroyed now, not when the stale heap entry surfaces: the task may hold a call's state.
  TakeTimer(index);
}

EventLoop::Task EventLoop::TakeTimer(std::uint32_t index) {
  TimerSlot& slot = timer_slots_[index];
  Task task = std::move(slot.task);
  slot.task = nullptr;
  slot.armed = false;
  free_timer_slots_.push_back(index);
  --armed_timers_;
  return task;
}

void EventLoop::PopStaleTimers() {
  while (!timer_heap_.empty() && !Live(timer_heap_.front())) {
    std::pop_heap(timer_heap_.begin(), timer_heap_.end(), LaterTimer{});
    timer_heap_.pop_back();
  }
}

void EventLoop::CompactTimers() {
  std::erase_if(timer_heap_, [this](const TimerEntry& entry) { return !Live(entry); });
  std::make_heap(timer_heap_.begin(), timer_heap_.end(), LaterTimer{});
}

int EventLoop::NextTimeoutMs() {
  {
    const std::lock_guard lock(mu_);
    if (!posted_.empty()) return 0;  // left over by RunPosted's bounded rounds
  }
  PopStaleTimers();
  if (timer_heap_.empty()) return -1;
  const auto wait = timer_heap_.front().when - std::chrono::steady_clock::now();
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(wait).count();
  return ms <= 0 ? 0 : static_cast<int>(std::min<long long>(ms, 60'000));
}

void EventLoop::RunTimers() {
  PopStaleTimers();
  if (timer_heap_.empty()) return;
  const auto now = std::chrono::steady_clock::now();
  while (!timer_heap_.empty() && timer_heap_.front().when <= now) {
    const TimerEntry entry = timer_heap_.front();
    std::pop_heap(timer_heap_.begin(), timer_heap_.end(), LaterTimer{});
    timer_heap_.pop_back();
    if (!Live(entry)) continue;
    // Taken out before it runs: it may add timers (reusing its slot) or cancel others.
    const Task task = TakeTimer(entry.slot);
    task();
  }
}

void EventLoop::RunPosted() {
  // Bounded rounds: work posted while running posted work runs too, but a task that keeps
  // re-posting itself cannot starve I/O.
  for (int round = 0; round < 4; ++round) {
    {
      const std::lock_guard lock(mu_);
      running_.swap(posted_);
      wake_pending_ = false;
    }
    if (running_.empty()) return;
    for (auto& task : running_) task();
    running_.clear();
  }
}

void EventLoop::Run() {
  constexpr int kMaxEvents = 128;
  epoll_event events[kMaxEvents];
  while (!stop_) {
    const int n = epoll_wait(epoll_fd_, events, kMaxEvents, NextTimeoutMs());
    if (n < 0 && errno != EINTR) {
      spdlog::error("epoll_wait: {}", std::strerror(errno));
      break;
    }
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      if (fd == wake_fd_) {
        std::uint64_t count = 0;
        [[maybe_unused]] const auto r = read(wake_fd_, &count, sizeof count);
        continue;
      }
      const auto it = handlers_.find(fd);
      if (it == handlers_.end()) continue;
      // A copy: the handler may remove itself (closing its connection).
      const FdHandler handler = it->second;
      handler(events[i].events);
    }
    RunTimers();
    RunPosted();
    // By index: a hook may add or remove hooks (an owner leaving the loop).
    for (std::size_t i = 0; i < end_of_turn_.size(); ++i) end_of_turn_[i].second();
  }
}

}  // namespace esp
