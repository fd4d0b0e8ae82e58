#pragma once
// The operator HTTP listener (/metrics, /health, /shards, ...) on libmicrohttpd. Its own polling
// thread (epoll: descriptors of any number) keeps the operator port independent of the data
// plane; handlers only read snapshots, so they answer at once.
#include <functional>
#include <map>
#include <memory>
#include <string>

struct MHD_Daemon;

namespace esp {

struct HttpRequest {
  std::string path;
  std::multimap<std::string, std::string> query;  // ?a=1&a=2 keeps both
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

class HttpServer {
 public:
  using Handler = std::function<HttpResponse(const HttpRequest&)>;

  // `address` is IPv4 host:port (port 0 picks a free one).
  explicit HttpServer(std::string address);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Register every handler before Start: the serving thread reads the table without a lock.
  void Handle(const std::string& path, Handler handler) { handlers_[path] = std::move(handler); }
  // Binds and starts serving; false (with a logged reason) when it cannot.
  bool Start();
  void Stop();
  int port() const { return port_; }

  // Looks the handler up; 404 for unknown paths. Used by the libmicrohttpd callback.
  HttpResponse Dispatch(const HttpRequest& request) const;

 private:
  struct DaemonDeleter {
    void operator()(MHD_Daemon* daemon) const;
  };

  std::string address_;
  std::map<std::string, Handler> handlers_;
  std::unique_ptr<MHD_Daemon, DaemonDeleter> daemon_;
  int port_ = 0;
};

}  // namespace esp
