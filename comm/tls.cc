#include "comm/tls.h"

#include <filesystem>

#include <fmt/format.h>

#include "comm/durable_file.h"

namespace lowband::comm {
namespace {

// The file's contents when it exists and holds a PEM block of the expected kind.
StatusOr<std::string> ReadPem(const std::string& path, const char* what, const char* kind) {
  StatusOr<std::string> text = ReadWholeFile(path);
  if (!text.ok()) {
    return InvalidArgument(
        fmt::format("TLS {} file '{}' cannot be read: {}", what, path, text.status().message()));
  }
  if (text->find("-----BEGIN") == std::string::npos || text->find(kind) == std::string::npos) {
    return InvalidArgument(fmt::format("TLS {} file '{}' is not a PEM {} (no '-----BEGIN ...{}' block)", what,
                                       path, kind, kind));
  }
  return text;
}

std::string InDir(const std::string& dir, const char* name) {
  return (std::filesystem::path(dir) / name).string();
}

bool Exists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::exists(path, ec);
}

}  // namespace

TlsServerFiles ServerFilesFromDir(const std::string& dir) {
  TlsServerFiles files{InDir(dir, "tls.crt"), InDir(dir, "tls.key"), InDir(dir, "ca.crt")};
  if (!Exists(files.client_ca)) files.client_ca.clear();
  return files;
}

TlsClientFiles ClientFilesFromDir(const std::string& dir) {
  TlsClientFiles files{InDir(dir, "ca.crt"), InDir(dir, "tls.crt"), InDir(dir, "tls.key"), ""};
  if (!Exists(files.cert)) {
    files.cert.clear();
    files.key.clear();
  }
  return files;
}

StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsServerFiles& files) {
  if (!files.enabled()) return grpc::InsecureServerCredentials();
  if (files.cert.empty() || files.key.empty()) {
    return InvalidArgument(
        "TLS needs both a server certificate (--tls-cert) and its private key (--tls-key)");
  }
  grpc::SslServerCredentialsOptions options(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  LOWBAND_ASSIGN_OR_RETURN(std::string cert, ReadPem(files.cert, "certificate", "CERTIFICATE"));
  LOWBAND_ASSIGN_OR_RETURN(std::string key, ReadPem(files.key, "private key", "PRIVATE KEY"));
  options.pem_key_cert_pairs.push_back({std::move(key), std::move(cert)});
  if (!files.client_ca.empty()) {
    LOWBAND_ASSIGN_OR_RETURN(options.pem_root_certs, ReadPem(files.client_ca, "client CA", "CERTIFICATE"));
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(const TlsClientFiles& files) {
  if (!files.enabled()) return grpc::InsecureChannelCredentials();
  if (files.ca.empty()) {
    return InvalidArgument("TLS needs the CA that signed the server's certificate (--tls-ca)");
  }
  if (files.cert.empty() != files.key.empty()) {
    return InvalidArgument("a TLS client certificate (--tls-cert) and its key (--tls-key) go together");
  }
  grpc::SslCredentialsOptions options;
  LOWBAND_ASSIGN_OR_RETURN(options.pem_root_certs, ReadPem(files.ca, "CA", "CERTIFICATE"));
  if (!files.cert.empty()) {
    LOWBAND_ASSIGN_OR_RETURN(options.pem_cert_chain,
                             ReadPem(files.cert, "client certificate", "CERTIFICATE"));
    LOWBAND_ASSIGN_OR_RETURN(options.pem_private_key,
                             ReadPem(files.key, "client private key", "PRIVATE KEY"));
  }
  return grpc::SslCredentials(options);
}

void ApplyChannelArguments(const TlsClientFiles& files, grpc::ChannelArguments* args) {
  if (files.enabled() && !files.server_name.empty()) args->SetSslTargetNameOverride(files.server_name);
}

std::string ConnectHint(const TlsClientFiles& files) {
  if (!files.enabled())
    return "this client speaks plaintext: if the server serves TLS, pass --tls-dir (or --tls-ca)";
  return fmt::format(
      "this client speaks {}TLS: check that the server serves TLS with a certificate signed by the CA in "
      "'{}'{}{}",
      files.cert.empty() ? "" : "mutual ", files.ca,
      files.server_name.empty() ? " and naming the address dialled" : " and naming " + files.server_name,
      files.cert.empty() ? ", and whether it requires a client certificate (mutual TLS)"
                         : ", and that it trusts the CA of the client certificate '" + files.cert + "'");
}

bool PlaintextBeyondLoopback(const TlsServerFiles& files, const std::string& listen_address) {
  if (files.enabled()) return false;
  const std::string host = listen_address.substr(0, listen_address.rfind(':'));
  return !(host.rfind("127.", 0) == 0 || host == "localhost" || host == "[::1]");
}

std::string Describe(const TlsServerFiles& files) {
  if (!files.enabled()) return "plaintext";
  return files.client_ca.empty() ? "TLS" : "mutual TLS";
}

}  // namespace lowband::comm
