#include "observability/grpc_log.h"

#include <grpc/support/log.h>
#include <spdlog/spdlog.h>

#include <string_view>

namespace esp {
namespace {

spdlog::level::level_enum LevelOf(gpr_log_severity severity) {
  switch (severity) {
    case GPR_LOG_SEVERITY_DEBUG: return spdlog::level::debug;
    case GPR_LOG_SEVERITY_INFO: return spdlog::level::info;
    case GPR_LOG_SEVERITY_ERROR: return spdlog::level::err;
  }
  return spdlog::level::err;
}

std::string_view BaseName(const char* path) {
  const std::string_view file(path != nullptr ? path : "");
  const auto slash = file.rfind('/');
  return slash == std::string_view::npos ? file : file.substr(slash + 1);
}

void Forward(gpr_log_func_args* args) {
  spdlog::log(LevelOf(args->severity), "grpc: {} ({}:{})", args->message, BaseName(args->file), args->line);
}

}  // namespace

void RouteGrpcLogsToSpdlog() { gpr_set_log_function(&Forward); }

}  // namespace esp
