#pragma once
// One epoll event loop on its own thread. Everything a loop owns (its listener, its connections,
// their nghttp2 sessions) is touched only on that thread; other threads hand work over with
// Post(), which wakes the loop through an eventfd. Work posted from the loop itself runs later in
// the same turn, so completions never re-enter nghttp2 from inside its callbacks.
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace esp {

class EventLoop {
 public:
  using Task = std::function<void()>;
  // Called with the epoll events (EPOLLIN, EPOLLOUT, ...) of a registered fd.
  using FdHandler = std::function<void(std::uint32_t events)>;
  using TimerId = std::uint64_t;

  EventLoop();
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  void Start();
  // Asks the loop to return and joins its thread. Pending tasks are dropped.
  void Stop();

  // Thread-safe.
  void Post(Task task);
  // The loop whose thread is calling, or null off the loops' threads.
  static EventLoop* Current();
  bool InLoopThread() const { return Current() == this; }

  // Loop thread only.
  void AddFd(int fd, std::uint32_t events, FdHandler handler);
  void ModifyFd(int fd, std::uint32_t events);
  void RemoveFd(int fd);
  // Runs `task` at the end of every turn (after I/O and posted work): where writes are flushed.
  // Several owners may share a loop (client connections and upstream connections): each adds
  // its own hook; they run in the order added. Before Start() or on the loop thread.
  using HookId = std::uint64_t;
  HookId AddEndOfTurn(Task task);
  void RemoveEndOfTurn(HookId id);
  // The single-owner form (replaces the hooks added with it before).
  void SetEndOfTurn(Task task);
  // Never returns 0, so owners may use 0 for "no timer".
  TimerId AddTimer(std::chrono::steady_clock::time_point when, Task task);
  // Drops the task at once; ids of timers that fired or were cancelled are ignored.
  void CancelTimer(TimerId id);
  // Timers armed and not yet fired or cancelled. Loop thread only.
  std::size_t armed_timers() const { return armed_timers_; }
  // Heap entries, stale ones included: bounded by about twice the armed timers.
  std::size_t timer_entries() const { return timer_heap_.size(); }

 private:
  void Run();
  void RunPosted();
  void RunTimers();
  int NextTimeoutMs();

  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  std::thread thread_;
  bool stop_ = false;  // loop thread only

  mutable std::mutex mu_;
  // One queue for posts from every thread, the loop's own included: tasks run in the order
  // they were posted. (Two queues, one per origin, let a response posted from a shard's thread
  // overtake a `created` posted earlier from the loop thread.)
  std::vector<Task> posted_;   // guarded by mu_
  std::vector<Task> running_;  // loop thread: the batch being run; swapped with posted_ so that
                               // both keep their capacity (no allocation per turn)
  bool wake_pending_ = false;  // guarded by mu_: one eventfd write per batch of posts

  std::unordered_map<int, FdHandler> handlers_;

  // Timers: nearly every one is a call's deadline, armed and cancelled within a millisecond, so
  // both must be cheap. A task lives in a reused slot (a TimerId is slot and generation); the
  // min-heap holds (when, slot, generation) and a cancelled timer's entry stays there, stale,
  // until it reaches the top or the heap is compacted (when stale entries outnumber live ones), so
  // cancelling is O(1) and far-off deadlines cannot pile up.
  struct TimerSlot {
    Task task;
    std::uint32_t generation = 0;
    bool armed = false;
  };
  struct TimerEntry {
    std::chrono::steady_clock::time_point when;
    std::uint64_t seq;  // equal deadlines fire in the order they were added
    std::uint32_t slot;
    std::uint32_t generation;
  };
  bool Live(const TimerEntry& entry) const {
    const TimerSlot& slot = timer_slots_[entry.slot];
    return slot.armed && slot.generation == entry.generation;
  }
  void PopStaleTimers();
  void CompactTimers();
  Task TakeTimer(std::uint32_t slot);

  std::vector<TimerSlot> timer_slots_;
  std::vector<std::uint32_t> free_timer_slots_;
  std::vector<TimerEntry> timer_heap_;
  std::size_t armed_timers_ = 0;
  std::uint64_t next_timer_seq_ = 0;
  std::vector<std::pair<HookId, Task>> end_of_turn_;
  HookId next_hook_ = 1;
};

}  // namespace esp
