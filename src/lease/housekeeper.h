#pragma once
// One background thread for the lease layer's housekeeping: a periodic tick (re-granting leases
// on shards that came back, giving up on shards that do not answer keep-alives) and a queue of
// small tasks that must not run inside a transport callback (reopening bookkeeping after an
// upstream stream closed). Nothing here blocks on the network: tasks only start async calls.
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace esp {

class Housekeeper {
 public:
  using Task = std::function<void()>;

  explicit Housekeeper(std::chrono::milliseconds tick);
  ~Housekeeper();
  Housekeeper(const Housekeeper&) = delete;
  Housekeeper& operator=(const Housekeeper&) = delete;

  // Runs `task` on every tick. Register before Start.
  void OnTick(Task task);
  void Post(Task task);
  void Start();
  void Stop();

 private:
  void Run();

  const std::chrono::milliseconds tick_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> tasks_;
  std::vector<Task> tick_tasks_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace esp
