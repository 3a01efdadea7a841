// Conversions between lowband's plain C++ types and the lowband.v1 protocol messages, the mapping
// between lowband::Status and grpc::Status, and the protocol's constants. Used by the gRPC client
// (comm/coordinator_client) and the gRPC service (coordinator/service); nothing else should need
// proto types.
//
// Thread safety: stateless functions. Lifetimes: nothing is retained.
#pragma once

#include <cstdint>

#include <grpcpp/support/status.h>

#include "comm/signature.h"
#include "proto/lowband.pb.h"
#include "quant/codec.h"
#include "quant/status.h"

namespace lowband::comm {

// JoinRequest.protocol_version; see the rules at the top of lowband.proto.
inline constexpr uint32_t kProtocolVersion = 1;
// Largest chunk of a chunked stream (SeedState, Bootstrap, PushFragment, GetUpdate).
inline constexpr uint32_t kMaxChunkBytes = 1u << 20;
// gRPC message size limit on both sides: a chunk plus its envelope, with room for a JoinReply of
// a model with very many tensors.
inline constexpr int kMaxMessageBytes = 16 << 20;
// Call metadata that carries the run's token on every call (keys are lower case in gRPC).
inline constexpr const char* kTokenMetadataKey = "x-lowband-token";

void ToProto(const ModelSignature& signature, v1::ModelSignature* out);
ModelSignature FromProto(const v1::ModelSignature& signature);

void ToProto(const quant::CodecSpec& spec, v1::CodecSpec* out);
// Errors name the unknown format or scale type.
StatusOr<quant::CodecSpec> FromProto(const v1::CodecSpec& spec);

grpc::Status ToGrpc(const Status& status);
Status FromGrpc(const grpc::Status& status);

}  // namespace lowband::comm
