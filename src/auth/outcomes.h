#pragma once
// How the Auth service turns one answer per shard into one answer for the client. Pure
// functions, unit-tested without shards.
#include <optional>
#include <string>
#include <vector>

#include "transport/status.h"

namespace esp::auth {

// One shard's answer, reduced to what the decisions need.
struct ShardResult {
  std::string shard;    // the shard's name
  Status status;
  std::string payload;  // OK answers: the response without its header, serialized
};

// A change applied to every shard. Succeeds when every shard either applied it or already was in
// the requested state (`benign_error`, e.g. "user name already exists" on a retry after a
// part-way failure) and at least one shard applied it; when every shard answers the same
// error, that is etcd's answer and goes back unchanged. A part-way failure is reported with the
// shards that applied the change and the ones that did not. Returns OK or the error to answer.
Status DecideChange(const std::string& method, const std::vector<ShardResult>& results,
                    const std::string& benign_error);

// A read answered by every shard: identical answers (or identical errors) are the answer; a
// shard that could not be reached fails the read with its own error; otherwise
// FAILED_PRECONDITION naming which shards answered what. Returns the index of the answer to
// use, or the error.
struct ReadDecision {
  Status status;
  std::size_t use = 0;
};
ReadDecision DecideRead(const std::string& method, const std::vector<ShardResult>& results);

// True for an unreachable or silent shard, as opposed to an answer from etcd.
bool IsShardDown(const Status& status);

}  // namespace esp::auth
