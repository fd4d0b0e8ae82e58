#include "lease/housekeeper.h"

namespace esp {

Housekeeper::Housekeeper(std::chrono::milliseconds tick) : tick_(tick) {}

Housekeeper::~Housekeeper() { Stop(); }

void Housekeeper::OnTick(Task task) { tick_tasks_.push_back(std::move(task)); }

void Housekeeper::Post(Task task) {
  {
    const std::lock_guard lock(mu_);
    if (stopping_) return;
    tasks_.push_back(std::move(task));
  }
  cv_.notify_one();
}

void Housekeeper::Start() {
  if (!thread_.joinable()) thread_ = std::thread([this] { Run(); });
}

void Housekeeper::Stop() {
  {
    const std::lock_guard lock(mu_);
    stopping_ = true;
    tasks_.clear();
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void Housekeeper::Run() {
  auto next_tick = std::chrono::steady_clock::now() + tick_;
  std::unique_lock lock(mu_);
  while (!stopping_) {
    cv_.wait_until(lock, next_tick, [this] { return stopping_ || !tasks_.empty(); });
    if (stopping_) break;
    std::deque<Task> batch;
    batch.swap(tasks_);
    const bool tick_due = std::chrono::steady_clock::now() >= next_tick;
    lock.unlock();
    for (auto& task : batch) task();
    if (tick_due) {
      for (auto& task : tick_tasks_) task();
      next_tick = std::chrono::steady_clock::now() + tick_;
    }
    lock.lock();
  }
}

}  // namespace esp
