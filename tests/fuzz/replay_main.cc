// Replays fuzz inputs without libFuzzer: links with a fuzz target's LLVMFuzzerTestOneInput and
// runs it over every file named (or found in a directory named) on the command line. The normal
// build uses it so that the seed corpora and the crash regressions run on every CI build, under
// gcc, with the targets' own invariant checks.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

int Replay(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 0;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path arg(argv[i]);
    if (!std::filesystem::exists(arg)) {
      std::fprintf(stderr, "no such input: %s\n", argv[i]);
      return 2;
    }
    if (!std::filesystem::is_directory(arg)) {
      runs += Replay(arg);
      continue;
    }
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(arg)) {
      if (entry.is_regular_file()) files.push_back(entry.path());
    }
    for (const auto& file : files) runs += Replay(file);
  }
  std::printf("replayed %d inputs\n", runs);
  // No input at all means a wrong path: fail rather than pass vacuously.
  return runs > 0 ? 0 : 1;
}
