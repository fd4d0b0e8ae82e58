#include "shard/kubernetes_layout.h"

#include "config/config.h"

namespace esp {
namespace {

constexpr std::string_view kRegistry = "/registry/";

// The next path segment of `path` from `from`, with its '/', or "" when there is no '/'.
std::string_view SegmentWithSlash(std::string_view path, std::size_t from) {
  const auto slash = path.find('/', from);
  return slash == std::string_view::npos ? std::string_view{} : path.substr(from, slash + 1 - from);
}

}  // namespace

std::string KubernetesPrefixCutBy(const std::string& boundary) {
  const std::string_view b(boundary);
  if (!b.starts_with(kRegistry)) return "";
  const auto first = SegmentWithSlash(b, kRegistry.size());  // "<resource>/" or "<group>/"
  if (first.empty()) return "";
  std::size_t prefix_length = kRegistry.size() + first.size();
  // A custom resource's group has dots: the resource is the next segment.
  if (first.find('.') != std::string_view::npos) {
    const auto second = SegmentWithSlash(b, prefix_length);
    if (second.empty()) return "";  // between resources of the group, or at one's start
    prefix_length += second.size();
  }
  // At the prefix itself the boundary is the resource's start: nothing is cut.
  return b.size() > prefix_length ? std::string(b.substr(0, prefix_length)) : "";
}

std::vector<std::string> KubernetesLayoutWarnings(const ShardMap& map) {
  std::vector<std::string> warnings;
  for (const auto& range : map.ranges()) {
    const auto prefix = KubernetesPrefixCutBy(range.start);
    if (prefix.empty()) continue;
    warnings.push_back("the range boundary \"" + PrintableKey(range.start) + "\" cuts Kubernetes' resource prefix \"" +
                       PrintableKey(prefix) + "\": lists of that resource span two shards, and a list pinned to a "
                       "revision across shards is refused, so kube-apiserver cannot page through it; put the "
                       "boundary at the prefix's start or end (docs/kubernetes.md)");
  }
  return warnings;
}

}  // namespace esp
