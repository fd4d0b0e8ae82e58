#pragma once
// A minimal HTTP/1.1 listener for the operator endpoints (/metrics, /health, /shards, ...).
// One thread, one request per connection: scrapes and probes are rare and small, and this keeps
// the operator port independent of the gRPC data plane.
#include <atomic>
#include <functional>
#include <map>
#include <string>
#include <thread>

namespace esp {

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

class HttpServer {
 public:
  using Handler = std::function<HttpResponse()>;

  // `address` is host:port (port 0 picks a free one).
  explicit HttpServer(std::string address) : address_(std::move(address)) {}
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  void Handle(const std::string& path, Handler handler) { handlers_[path] = std::move(handler); }
  // Binds and starts the serving thread; false (with a logged reason) when it cannot bind.
  bool Start();
  void Stop();
  int port() const { return port_; }

 private:
  void Serve();
  void ServeConnection(int fd);

  std::string address_;
  std::map<std::string, Handler> handlers_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace esp
