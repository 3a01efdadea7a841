// TLS for lowband's gRPC channels (coordinator and split learning): certificate files in PEM, turned
// into gRPC credentials with every file checked first, so that a wrong path or a file that is not a
// PEM certificate/key fails at start with its name instead of at the first handshake.
//
// Server: a certificate chain and its private key; with client_ca set the server also requires and
// verifies a client certificate signed by that CA (mutual TLS). Client: the CA that signed the
// server's certificate; with cert and key it presents a client certificate (mutual TLS);
// server_name overrides the name checked against the server's certificate (when the address is
// an IP or a name the certificate does not carry). All fields empty: plaintext (for loopback and
// tests; the coordinator logs which one it serves).
//
// Thread safety: plain functions. Lifetimes: nothing retained; the files are read once.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "quant/status.h"

namespace lowband::comm {

struct TlsServerFiles {
  std::string cert;       // PEM certificate chain
  std::string key;        // PEM private key
  std::string client_ca;  // PEM CA bundle: require client certificates signed by it ("" = don't)
  bool enabled() const { return !cert.empty() || !key.empty() || !client_ca.empty(); }
};

struct TlsClientFiles {
  std::string ca;           // PEM CA bundle that signed the server's certificate
  std::string cert;         // PEM client certificate (mutual TLS)
  std::string key;          // PEM client private key (mutual TLS)
  std::string server_name;  // name to check in the server's certificate ("" = the target's host)
  bool enabled() const { return !ca.empty() || !cert.empty() || !key.empty(); }
};

// The files of a directory in the kubernetes.io/tls layout, as deploy/make-certs.sh writes one for
// each role. Server: tls.crt and tls.key (its certificate and key) and, when the directory holds
// ca.crt, that CA for client certificates (mutual TLS). Client: ca.crt (the CA that signed the
// server's certificate) and, when the directory holds tls.crt, that certificate and tls.key as the
// client's own (mutual TLS). Files that must be there are not checked here: MakeServerCredentials
// and MakeChannelCredentials name the one that is missing.
TlsServerFiles ServerFilesFromDir(const std::string& dir);
TlsClientFiles ClientFilesFromDir(const std::string& dir);

// Insecure credentials when nothing is set; INVALID_ARGUMENT naming the missing or unreadable file
// or the field that must come with another (cert with key).
StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsServerFiles& files);
StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(const TlsClientFiles& files);
// Sets the channel arguments TLS needs (the server-name override).
void ApplyChannelArguments(const TlsClientFiles& files, grpc::ChannelArguments* args);
// "plaintext", "TLS" or "mutual TLS", for logs.
std::string Describe(const TlsServerFiles& files);
// What to check when a client cannot connect, for its error message: a failed TLS handshake looks
// like an unreachable server to gRPC, so this names the TLS setting on each side.
std::string ConnectHint(const TlsClientFiles& files);
// True when a server with these files would take plaintext connections from beyond this host (a
// listen address other than 127.0.0.0/8, localhost or [::1]): servers warn about it at start.
bool PlaintextBeyondLoopback(const TlsServerFiles& files, const std::string& listen_address);

}  // namespace lowband::comm
