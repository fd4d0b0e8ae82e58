// The fixtures themselves: what the other tests rely on to run side by side.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <set>
#include <vector>

#include "support/fixtures.h"

namespace esp::test {
namespace {

constexpr int kPorts = 40;

std::vector<int> TakePorts(int n) {
  std::vector<int> ports;
  for (int i = 0; i < n; ++i) ports.push_back(FreePort());
  return ports;
}

// Two test processes asking at the same time (ctest -j2, other worktrees) never get one port
// twice, even when both start from the same place in the range: the child is forked after the
// parent has begun, so it inherits the parent's next candidate.
TEST(FixturesTest, FreePortNeverHandsOutAPortTwiceAcrossProcesses) {
  std::vector<int> parent = TakePorts(kPorts);
  int to_parent[2], to_child[2];
  ASSERT_EQ(pipe(to_parent), 0);
  ASSERT_EQ(pipe(to_child), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // (No other thread runs in this binary, so the child may allocate.) Report the ports and hold
    // them until the parent has taken its next ones.
    const std::vector<int> mine = TakePorts(kPorts);
    const auto bytes = static_cast<ssize_t>(mine.size() * sizeof(int));
    const bool sent = write(to_parent[1], mine.data(), mine.size() * sizeof(int)) == bytes;
    char go = 0;
    const bool told = read(to_child[0], &go, 1) == 1;
    _exit(sent && told ? 0 : 1);
  }
  std::vector<int> theirs(kPorts);
  std::size_t got = 0;
  while (got < theirs.size() * sizeof(int)) {
    const ssize_t n = read(to_parent[0], reinterpret_cast<char*>(theirs.data()) + got, theirs.size() * sizeof(int) - got);
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  // More ports for the parent while the child still holds its own.
  const std::vector<int> more = TakePorts(kPorts);
  ASSERT_EQ(write(to_child[1], "g", 1), 1);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_EQ(got, theirs.size() * sizeof(int));
  for (int fd : {to_parent[0], to_parent[1], to_child[0], to_child[1]}) close(fd);

  parent.insert(parent.end(), more.begin(), more.end());
  std::set<int> all(parent.begin(), parent.end());
  EXPECT_EQ(all.size(), parent.size()) << "the parent got a port twice";
  for (int port : theirs) {
    EXPECT_TRUE(all.insert(port).second) << "port " << port << " went to both processes";
  }
}

// The ports come from below the ephemeral range, where no outgoing connection takes them.
TEST(FixturesTest, FreePortStaysBelowTheEphemeralRange) {
  int low = 32768;
  std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> low;
  for (int port : TakePorts(10)) {
    EXPECT_GT(port, 1024);
    EXPECT_LT(port, low);
  }
}

}  // namespace
}  // namespace esp::test
