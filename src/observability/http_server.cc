#include "observability/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

namespace esp {
namespace {

// A poll timeout bounds how long Stop waits for the serving thread to notice.
constexpr int kPollMillis = 200;
constexpr std::size_t kMaxRequestBytes = 16 * 1024;

const char* Reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 404: return "Not Found";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

// Reads up to the end of the request head; operator endpoints take no body.
std::string ReadHead(int fd) {
  std::string head;
  char buf[2048];
  while (head.find("\r\n\r\n") == std::string::npos && head.size() < kMaxRequestBytes) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 2000) <= 0) break;
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) break;
    head.append(buf, static_cast<std::size_t>(n));
  }
  return head;
}

void WriteAll(int fd, const std::string& data) {
  std::size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += static_cast<std::size_t>(n);
  }
}

}  // namespace

HttpServer::~HttpServer() { Stop(); }

bool HttpServer::Start() {
  const auto colon = address_.rfind(':');
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::atoi(address_.substr(colon + 1).c_str())));
  if (colon == std::string::npos || inet_pton(AF_INET, address_.substr(0, colon).c_str(), &addr.sin_addr) != 1) {
    spdlog::error("invalid metrics address {} (want IPv4 host:port)", address_);
    return false;
  }
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(listen_fd_, 64) != 0) {
    spdlog::error("cannot listen on {}: {}", address_, std::strerror(errno));
    close(listen_fd_);
    listen_fd_ = -1;
    return false;
  }
  socklen_t len = sizeof(addr);
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  thread_ = std::thread([this] { Serve(); });
  return true;
}

void HttpServer::Stop() {
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
  listen_fd_ = -1;
}

void HttpServer::Serve() {
  while (!stopping_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (poll(&p, 1, kPollMillis) <= 0) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    ServeConnection(fd);
    close(fd);
  }
}

void HttpServer::ServeConnection(int fd) {
  const std::string head = ReadHead(fd);
  // Request line: METHOD SP PATH[?query] SP VERSION
  const auto first_space = head.find(' ');
  const auto second_space = head.find(' ', first_space + 1);
  if (first_space == std::string::npos || second_space == std::string::npos) return;
  std::string path = head.substr(first_space + 1, second_space - first_space - 1);
  path = path.substr(0, path.find('?'));
  HttpResponse response{404, "text/plain; charset=utf-8", "404 page not found\n"};
  if (const auto it = handlers_.find(path); it != handlers_.end()) response = it->second();
  WriteAll(fd, "HTTP/1.1 " + std::to_string(response.status) + " " + Reason(response.status) +
                   "\r\nContent-Type: " + response.content_type +
                   "\r\nContent-Length: " + std::to_string(response.body.size()) +
                   "\r\nConnection: close\r\n\r\n" + response.body);
}

}  // namespace esp
