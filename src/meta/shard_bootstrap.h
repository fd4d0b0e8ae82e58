#pragma once
// Preparing a new shard before `map add-shard` commits it (issue #15): the new cluster gets what
// every shard must share (docs/semantics.md, Auth and Lease): users, roles and the auth switch,
// and every live lease with its id. It is refused, with the reason and with nothing written to
// it, when it cannot serve as a shard.
//
// What is checked first (reads only; any failure throws ConfigError naming the cluster and the
// reason, before the first write):
//   - every existing shard and the new cluster answer (each call bounded by `timeout`; a shard
//     that does not answer is a refusal, since what it holds is unknown);
//   - the new cluster is none of the shards (no shared endpoint, a different cluster id);
//   - it holds no key (a Range over the whole keyspace counts none);
//   - the shards agree among themselves on the auth switch, the users (with their roles) and the
//     roles (with their permissions, compared as sets); the message names what differs where;
//   - every user has a password (below), verified on every shard when auth is on;
//   - what the new cluster already has does not conflict: auth on there while off on the shards,
//     a user or role the shards do not have, a user with a role the shards do not give it, a
//     role with a permission the shards' role does not have, a user whose password (auth on
//     there) is not the shards' one.
// Then, unless `dry_run`, in this order:
//   1. leases: the new cluster's leases that are not alive on the shards are revoked; every lease
//      alive on the shards is granted there with its id (below);
//   2. roles, then their permissions; 3. users (with their passwords), then their role grants;
//   4. auth enabled on the new cluster, last, when it is on on the shards;
//   5. the new cluster's users and roles are read back and compared with the shards' (read
//      again): a difference (auth data changed meanwhile) is an error; re-run.
//
// Re-running is safe, and is the way to finish after a failure part-way: identical users, roles
// and leases already there are not conflicts, a role or user holding part of what the shards
// give it is completed, "already exists" answers count as done. A re-run after a completed run
// writes nothing. Until step 4 the new cluster has auth off; after it, it has the shards' users.
//
// Passwords. etcd never gives a password out (UserGet answers roles only), so the operator
// supplies them (`user_passwords`, e.g. from a file of `user:password` lines read with
// LoadUserPasswordFile), with these rules:
//   - every user of the shards needs one. The credentials user (`user`) may be left out: its
//     password is `password`. A user without one is refused, all such users named at once;
//   - certificate-only users (etcd's `user add --no-password`, AuthUserAddRequest.options
//     .no_password, accepted by 3.4.23 and 3.5) are created without a password. With auth on,
//     the shards tell: Authenticate answers "password was given for no password user", so they
//     need no entry. With auth off nothing can tell: list them in `no_password_users`;
//   - with auth on, every password is checked against every shard (Authenticate with it) before
//     anything is written: a wrong one is refused, naming the user and the shard; a user with a
//     password on some shards and none on others is refused;
//   - with auth off, passwords cannot be checked: they are used as given (a note says so), and a
//     user the new cluster already has keeps the password it has there;
//   - a user the new cluster already has, while auth is off there and on on the shards (a
//     re-run after a failure part-way), gets its password set again (UserChangePassword) to the
//     verified one; with auth on there it must authenticate with it, or it is a conflict;
//   - entries for users the shards do not have are ignored (a note names them).
//
// Leases. Every lease id a shard lists (LeaseLeases), asked of every shard (LeaseTimeToLive),
// judged by the majority rule of docs/semantics.md (JudgeSplit): a lease held by at least half
// of the shards is alive and is granted on the new cluster with the same id; one held by fewer
// is a revoke that a shard missed, and is not granted (granting it would tip the vote and bring
// it back on every shard). The TTL is that of the repair (src/lease/repair.cc): the smallest
// remaining TTL of the holders plus one second (etcd truncates), never above the granted TTL;
// etcd raises a TTL below its minimum itself. A lease that already exists there is left alone.
// Note: the new cluster is in no proxy's map yet, so no keep-alive reaches it: a lease renewed
// through the proxies may expire there before the map change is seen; the proxies grant it
// there again when they next see it missing (keep-alive round, Put), as for any split lease.
// Leases granted or revoked through the proxies while this runs are likewise repaired later.
#include <chrono>
#include <cstddef>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "config/config.h"

namespace esp::meta {

struct BootstrapOptions {
  std::vector<ShardConfig> existing;  // the shards already in the map (name, endpoints, tls)
  ShardConfig target;                 // the new cluster
  // An etcd user with the root role on every shard (and on the new cluster if auth is on there
  // already); empty: no authentication (auth must then be off, or the TLS client certificate's
  // CN must be such a user).
  std::string user, password;
  std::map<std::string, std::string> user_passwords;  // user -> password for the new cluster
  std::set<std::string> no_password_users;            // certificate-only users (see above)
  bool dry_run = false;                               // check only; write nothing
  std::chrono::milliseconds timeout{5000};            // each call
};

struct BootstrapReport {
  bool auth_enabled = false;  // auth is on on the shards (and so on the new cluster)
  bool dry_run = false;       // the counts below are what a real run would do
  // Writes made (or, dry run, to make) on the new cluster.
  bool auth_switched_on = false;  // AuthEnable sent
  std::size_t roles_created = 0;
  std::size_t permissions_granted = 0;
  std::size_t users_created = 0;
  std::size_t roles_granted = 0;  // user role grants
  std::size_t passwords_set = 0;  // UserChangePassword on users it already had
  std::size_t leases_created = 0;
  std::size_t leases_revoked = 0;
  std::size_t leases_skipped = 0;  // on some shards only, revoked by the majority rule
  std::vector<std::string> notes;
  // Whether anything was (or would be) written.
  bool wrote_anything() const {
    return auth_switched_on || roles_created || permissions_granted || users_created || roles_granted ||
           passwords_set || leases_created || leases_revoked;
  }
};

// Checks, then prepares the new cluster (see above). Throws ConfigError with the reason; a
// refusal writes nothing. An error during the writes says what was done and that a re-run
// completes it.
BootstrapReport PrepareNewShard(const BootstrapOptions& options);

// `user:password` lines (split at the first ':', as etcdctl's `user add user:password`; the
// password may be empty or contain ':'); empty lines and lines starting with '#' are skipped, a
// trailing '\r' is dropped. Throws ConfigError naming the line for a line without ':', an empty
// user name or a user given twice. Never puts a password in a message.
std::map<std::string, std::string> ParseUserPasswords(const std::string& text, const std::string& source = "input");
std::map<std::string, std::string> LoadUserPasswordFile(const std::string& path);

}  // namespace esp::meta
