#include "meta/map_follower.h"

#include "upstream/upstream_fence.h"

#include <spdlog/spdlog.h>

namespace esp::meta {
namespace {

namespace pb = etcdserverpb;

constexpr std::chrono::milliseconds kRetryPause(300);
constexpr std::chrono::milliseconds kApplyRetryPause(5000);

std::int64_t SteadyMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

MapFollower::MapFollower(std::unique_ptr<EtcdClient> client, FollowerOptions options, ApplyMap apply)
    : client_(std::move(client)), store_(*client_, options.prefix), options_(std::move(options)), apply_(std::move(apply)) {}

MapFollower::~MapFollower() { Stop(); }

MapDocument MapFollower::LoadInitial() {
  auto stored = store_.Load();
  if (!stored) {
    throw ConfigError("the meta store (" + client_->EndpointList() + ") holds no shard map under '" +
                      options_.prefix + "': write one with `etcd-sharding-proxy map init`");
  }
  return std::move(stored->doc);
}

void MapFollower::Start(std::int64_t applied_version) {
  served_version_ = applied_version;
  // Registered before serving, when the store answers (upstream/upstream_fence.h).
  if (!RegisterNow()) spdlog::warn("meta store: could not register this proxy yet; serving no key until it can");
  watch_thread_ = std::thread([this] { WatchLoop(); });
  register_thread_ = std::thread([this] { RegisterLoop(); });
}

void MapFollower::Stop() {
  {
    const std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    if (watch_context_) watch_context_->TryCancel();
  }
  wake_.notify_all();
  if (watch_thread_.joinable()) watch_thread_.join();
  if (register_thread_.joinable()) register_thread_.join();
  // A clean stop leaves MemberList at once rather than after the lease's TTL.
  std::int64_t lease = 0;
  {
    const std::lock_guard lock(mu_);
    lease = lease_id_;
  }
  if (lease != 0) {
    pb::LeaseRevokeRequest request;
    request.set_id(lease);
    pb::LeaseRevokeResponse response;
    client_->LeaseRevoke(request, &response);
  }
}

bool MapFollower::Pause(std::chrono::milliseconds d) {
  std::unique_lock lock(mu_);
  return !wake_.wait_for(lock, d, [this] { return stopping_; });
}

double MapFollower::SecondsDisconnected() const {
  const auto since = down_since_ms_.load();
  return since == 0 ? 0.0 : static_cast<double>(SteadyMillis() - since) / 1000.0;
}

std::vector<ProxyRecord> MapFollower::LiveProxies() const {
  const std::lock_guard lock(mu_);
  std::vector<ProxyRecord> out;
  for (const auto& [key, record] : proxies_) out.push_back(record);
  return out;
}

void MapFollower::UpdateConnected() {
  const bool now = watch_up_.load() && lease_up_.load();
  const bool before = connected_.exchange(now);
  if (before == now) return;
  if (now) {
    spdlog::info("meta store {} reachable again after {:.1f} s; serving map version {}", client_->EndpointList(),
                 SecondsDisconnected(), served_version_.load());
    down_since_ms_ = 0;
  } else {
    down_since_ms_ = SteadyMillis();
    // Once per outage: the proxy goes on serving what it has.
    spdlog::warn("meta store {} unreachable: serving the last map (version {}) until it returns",
                 client_->EndpointList(), served_version_.load());
  }
}

void MapFollower::SetWatchUp(bool up) {
  watch_up_ = up;
  UpdateConnected();
}

void MapFollower::SetLeaseUp(bool up) {
  lease_up_ = up;
  UpdateConnected();
}

bool MapFollower::ApplyIfNewer(const std::string& json) {
  // From the watch thread, and from the registration thread after a new registration.
  const std::lock_guard apply_lock(apply_mu_);
  MapDocument doc;
  try {
    doc = MapDocument::FromJson(json);
  } catch (const ConfigError& e) {
    // Written by something else than our commands (they validate): nothing to retry.
    spdlog::error("ignoring an invalid shard map in the meta store: {}", e.what());
    return true;
  }
  if (doc.version <= served_version_.load()) return true;
  if (!apply_(doc)) return false;
  served_version_ = doc.version;
  spdlog::info("serving shard map version {} ({})", doc.version, doc.change.empty() ? "no description" : doc.change);
  wake_.notify_all();  // the registration thread publishes the new version
  return true;
}

void MapFollower::WatchLoop() {
  while (Pause(std::chrono::milliseconds(0))) {
    if (FollowOnce() == SessionEnd::kApplyFailed) {
      // The store is fine; this proxy could not build the new map (e.g. a TLS file it cannot
      // read). Read it again a little later rather than never: the cause may be fixed.
      if (!Pause(kApplyRetryPause)) return;
      continue;
    }
    SetWatchUp(false);
    client_->Rotate();
    if (!Pause(kRetryPause)) return;
  }
}

MapFollower::SessionEnd MapFollower::FollowOnce() {
  // A snapshot of the map and the proxies at one revision, then every change after it.
  pb::RangeRequest map_read;
  map_read.set_key(store_.MapKey());
  pb::RangeResponse map_answer;
  if (const auto status = client_->Range(map_read, &map_answer); !status.ok()) {
    spdlog::debug("meta store: reading the map failed: {}", DescribeStatus(status));
    return SessionEnd::kStreamEnded;
  }
  const std::int64_t revision = map_answer.header().revision();
  pb::RangeRequest proxies_read;
  proxies_read.set_key(store_.ProxiesPrefix());
  proxies_read.set_range_end(PrefixEnd(store_.ProxiesPrefix()));
  proxies_read.set_revision(revision);
  pb::RangeResponse proxies_answer;
  if (!client_->Range(proxies_read, &proxies_answer).ok()) return SessionEnd::kStreamEnded;
  if (map_answer.kvs_size() > 0 && !ApplyIfNewer(map_answer.kvs(0).value())) return SessionEnd::kApplyFailed;
  {
    const std::lock_guard lock(mu_);
    proxies_.clear();
    for (const auto& kv : proxies_answer.kvs()) {
      if (auto record = ProxyRecord::FromJson(kv.value())) proxies_[kv.key()] = std::move(*record);
    }
  }

  auto context = std::make_shared<grpc::ClientContext>();
  {
    const std::lock_guard lock(mu_);
    if (stopping_) return SessionEnd::kStreamEnded;
    watch_context_ = context;
  }
  auto stream = client_->Watch(*context);
  if (!stream) return SessionEnd::kStreamEnded;
  pb::WatchRequest create;
  auto* c = create.mutable_create_request();
  c->set_key(options_.prefix);
  c->set_range_end(PrefixEnd(options_.prefix));
  c->set_start_revision(revision + 1);
  // A progress notification now and then proves an idle stream alive.
  c->set_progress_notify(true);
  if (!stream->Write(create)) return SessionEnd::kStreamEnded;
  pb::WatchResponse response;
  while (stream->Read(&response)) {
    if (response.created()) SetWatchUp(true);
    // Compacted past our revision, or refused: start again from a fresh snapshot.
    if (response.canceled()) break;
    for (const auto& event : response.events()) {
      const auto& kv = event.kv();
      if (kv.key() == store_.MapKey()) {
        if (event.type() == mvccpb::Event::PUT && !ApplyIfNewer(kv.value())) {
          context->TryCancel();
          stream->Finish();
          const std::lock_guard lock(mu_);
          watch_context_.reset();
          return SessionEnd::kApplyFailed;
        }
      } else if (kv.key() == store_.MoveProgressKey()) {
        const std::lock_guard lock(mu_);
        move_progress_ = event.type() == mvccpb::Event::DELETE ? std::string() : kv.value();
      } else if (kv.key().starts_with(store_.ProxiesPrefix())) {
        const std::lock_guard lock(mu_);
        if (event.type() == mvccpb::Event::DELETE) {
          proxies_.erase(kv.key());
        } else if (auto record = ProxyRecord::FromJson(kv.value())) {
          proxies_[kv.key()] = std::move(*record);
        }
      }
    }
  }
  context->TryCancel();
  stream->Finish();
  const std::lock_guard lock(mu_);
  watch_context_.reset();
  return SessionEnd::kStreamEnded;
}

bool MapFollower::PutSelf(std::int64_t lease_id) {
  ProxyRecord record = options_.self;
  record.map_version = served_version_.load();
  pb::PutRequest put;
  put.set_key(store_.ProxyKey(record.member_id));
  put.set_value(record.ToJson());
  put.set_lease(lease_id);
  pb::PutResponse response;
  if (!client_->Put(put, &response).ok()) return false;
  const std::lock_guard lock(mu_);
  published_version_ = record.map_version;
  return true;
}

bool MapFollower::RenewOnce() {
  std::int64_t lease = 0;
  {
    const std::lock_guard lock(mu_);
    lease = lease_id_;
  }
  const auto sent = fence::SteadyClock::now();
  if (lease == 0) {
    pb::LeaseGrantRequest grant;
    grant.set_ttl(options_.lease_ttl.count());
    pb::LeaseGrantResponse granted;
    if (!client_->LeaseGrant(grant, &granted).ok() || !granted.error().empty()) return false;
    lease = granted.id();
    {
      const std::lock_guard lock(mu_);
      lease_id_ = lease;
    }
    if (!PutSelf(lease)) return false;
    // A new registration: movers that did not see this proxy may have moved ranges meanwhile.
    // Serve keys again only under the map as it is now, read after registering.
    if (!RefreshMap()) return false;
    AllowSendsAfterRenewal(sent, granted.ttl());
    return true;
  }
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + client_->options().call_timeout);
  context.set_wait_for_ready(true);  // as EtcdClient's calls: poll while the channel reconnects
  auto stream = client_->LeaseKeepAlive(context);
  if (!stream) return false;
  pb::LeaseKeepAliveRequest request;
  request.set_id(lease);
  pb::LeaseKeepAliveResponse response;
  const bool answered = stream->Write(request) && stream->Read(&response);
  stream->WritesDone();
  const auto status = stream->Finish();
  if (!answered) {
    spdlog::debug("meta store: renewing lease {:x} failed: {}", lease, DescribeStatus(status));
    return false;
  }
  if (response.ttl() <= 0) {  // expired while we were away: register anew
    const std::lock_guard lock(mu_);
    lease_id_ = 0;
    return false;
  }
  AllowSendsAfterRenewal(sent, response.ttl());
  bool stale = false;
  {
    const std::lock_guard lock(mu_);
    stale = published_version_ != served_version_.load();
  }
  return !stale || PutSelf(lease);
}

bool MapFollower::RefreshMap() {
  pb::RangeRequest read;
  read.set_key(store_.MapKey());
  pb::RangeResponse answer;
  if (!client_->Range(read, &answer).ok()) return false;
  return answer.kvs_size() == 0 || ApplyIfNewer(answer.kvs(0).value());
}

void MapFollower::AllowSendsAfterRenewal(fence::SteadyClock::time_point sent, std::int64_t ttl_seconds) {
  // The store keeps the lease at least `ttl` after it received the renewal, which was after
  // `sent`: this proxy stops a margin before the earliest moment a mover may see it gone.
  const std::chrono::milliseconds ttl(std::min<std::int64_t>(ttl_seconds, options_.lease_ttl.count()) * 1000);
  fence::AllowUntil(sent + ttl - FenceMargin(options_.lease_ttl));
}

bool MapFollower::RegisterNow() {
  const bool ok = RenewOnce();
  SetLeaseUp(ok);
  return ok;
}

std::string MapFollower::MoveProgress() const {
  const std::lock_guard lock(mu_);
  return move_progress_;
}

void MapFollower::RegisterLoop() {
  const auto period = std::chrono::duration_cast<std::chrono::milliseconds>(options_.lease_ttl) / 3;
  while (true) {
    const bool ok = RenewOnce();
    SetLeaseUp(ok);
    std::unique_lock lock(mu_);
    if (ok) {
      // Woken early by a newly applied map version: publish it at once.
      wake_.wait_for(lock, period, [this] { return stopping_ || published_version_ != served_version_.load(); });
    } else {
      wake_.wait_for(lock, kRetryPause, [this] { return stopping_; });
    }
    if (stopping_) return;
  }
}

}  // namespace esp::meta
