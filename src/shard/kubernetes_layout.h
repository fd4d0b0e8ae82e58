#pragma once
// Kubernetes keeps each resource under one prefix, /registry/<resource>/ (custom resources:
// /registry/<group.with.dots>/<resource>/), and pages through it pinned to one revision. A range
// boundary inside such a prefix makes those lists span two shards, where a revision-pinned list
// is refused: Kubernetes could not list that resource. Such a layout is legal for other users of
// the keyspace, so it is warned about, not refused (docs/kubernetes.md).
#include <string>
#include <vector>

#include "shard/shard_map.h"

namespace esp {

// The resource prefix `boundary` falls strictly inside, or "" when it cuts none.
std::string KubernetesPrefixCutBy(const std::string& boundary);

// One warning per range boundary that cuts a Kubernetes resource prefix.
std::vector<std::string> KubernetesLayoutWarnings(const ShardMap& map);

}  // namespace esp
