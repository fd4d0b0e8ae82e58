#pragma once
// `etcd-sharding-proxy reshard ...`: moving a key range from one shard to another while clients
// keep reading, writing and watching (docs/operations.md, "Moving ranges"; docs/semantics.md,
// "Range moves"). The move is a state machine kept in the meta store, so that a mover killed at
// any step is resumed by running the command again, or rolled back by `reshard abort` until the
// cut-over:
//
//   1. start      the map gets the range as an entry of its own and a move record ("copying"):
//                 every proxy now sends requests touching it to the source guarded by the
//                 move's fence key (move/guarded_call.h)
//   2. acked      every live proxy serves that map (its registration says so) or its
//                 registration expired (it fenced itself first: upstream/upstream_fence.h)
//   3. copied     the target's part of the range is cleared, then the source's keys at one
//                 revision R are copied (value and lease), in pages
//   4. tailing    the source's changes after R are applied on the target (the last change of
//                 each key, at most 128 keys per Txn: nothing reads the target before the switch)
//                 until it has the range's newest change as read after the copy
//   5. fenced     the fence key is written on the source (the cut-over, point of no return): the
//                 source refuses every guarded request from then on; the tail runs up to the
//                 fence's own event, so the target holds exactly the source's final state
//   6. switched   the map names the target as owner, with the target's revision as the range's
//                 floor (older revisions of these keys lived on the source); held requests go
//                 to the target, watches on the range end "compacted"
//   7. cleaned    once every proxy serves that map: the range's keys are deleted on the source
//                 (the fence key stays: a late guarded request still finds it), and the move
//                 record leaves the map.
//
// One mover at a time: it holds a lock key under a lease in the meta store.
#include <chrono>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>

#include "meta/map_commands.h"
#include "meta/map_store.h"

namespace esp::reshard {

struct MoverOptions {
  // Credentials towards the shards (auth on): a user with read and write on the range.
  std::string user;
  std::string password;
  std::chrono::seconds lock_ttl{5};
  // How long to wait for every proxy to serve a new map before giving up (resumable).
  std::chrono::seconds ack_timeout{120};
  std::int64_t page_keys = 1000;  // keys per Range page while copying
  std::chrono::milliseconds call_timeout{10000};
  bool progress_bar = false;  // a terminal: one line redrawn
};

// `reshard move --range START END --to SHARD` (end "" = unbounded); with an empty `to`, resumes
// the move in progress.
int Move(meta::MapStore& store, const std::string& start, const std::string& end, const std::string& to,
         const MoverOptions& options, meta::CommandIo io);
// `reshard split --at KEY --to SHARD`: moves [KEY, end of KEY's range).
int Split(meta::MapStore& store, const std::string& at, const std::string& to, const MoverOptions& options,
          meta::CommandIo io);
int Status(meta::MapStore& store, meta::OutputFormat format, meta::CommandIo io);
int Abort(meta::MapStore& store, const MoverOptions& options, meta::CommandIo io);

}  // namespace esp::reshard
