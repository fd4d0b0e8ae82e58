#pragma once
// Reading the proxy's operator HTTP endpoints in tests: a GET through curl and a sample of the
// Prometheus text page.
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "support/fixtures.h"

namespace esp::test {

struct HttpResult {
  int status = 0;
  std::string body;
};

inline HttpResult HttpGet(int port, const std::string& path) {
  // curl prints the body, then the status code on a line of its own.
  const auto result =
      RunCommand("curl -s -w '\\n%{http_code}' 'http://127.0.0.1:" + std::to_string(port) + path + "'");
  HttpResult out;
  const auto last_newline = result.output.rfind('\n');
  if (last_newline == std::string::npos) return out;
  out.status = std::atoi(result.output.substr(last_newline + 1).c_str());
  out.body = result.output.substr(0, last_newline);
  return out;
}

// The value of the sample of `metric` whose labels include every one of `labels` (name="value");
// `metric` without labels matches its unlabelled sample too. 0 when there is no such sample
// (a counter not incremented yet).
inline double Sample(const std::string& page, const std::string& metric, const std::vector<std::string>& labels) {
  std::istringstream in(page);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.starts_with(metric + "{") && !(labels.empty() && line.starts_with(metric + " "))) continue;
    bool match = true;
    for (const auto& label : labels) match = match && line.find(label) != std::string::npos;
    if (match) return std::stod(line.substr(line.rfind(' ') + 1));
  }
  return 0;
}

}  // namespace esp::test
