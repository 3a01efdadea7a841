#include "comm/wire.h"

#include <bit>

namespace lowband::comm {

static_assert(std::endian::native == std::endian::little,
              "the protocol sends fp32 values as little-endian bytes; a big-endian host needs byte swaps");

void ToProto(const ModelSignature& signature, v1::ModelSignature* out) {
  out->Clear();
  for (const TensorInfo& t : signature.tensors) {
    v1::TensorInfo* pt = out->add_tensors();
    pt->set_name(t.name);
    for (int64_t d : t.shape) {
      pt->add_shape(d);
    }
    pt->set_dtype(t.dtype);
  }
  out->set_hash(signature.hash);
}

ModelSignature FromProto(const v1::ModelSignature& signature) {
  ModelSignature s;
  s.tensors.reserve(static_cast<size_t>(signature.tensors_size()));
  for (const v1::TensorInfo& pt : signature.tensors()) {
    TensorInfo t;
    t.name = pt.name();
    t.shape.assign(pt.shape().begin(), pt.shape().end());
    t.dtype = pt.dtype();
    s.tensors.push_back(std::move(t));
  }
  s.hash = signature.hash();
  return s;
}

void ToProto(const quant::CodecSpec& spec, v1::CodecSpec* out) {
  out->set_format(std::string(quant::FormatName(spec.format)));
  out->set_block_size(spec.block_size);
  out->set_scale_type(std::string(quant::ScaleTypeName(spec.scale_type)));
  out->set_stochastic_rounding(spec.rounding == quant::Rounding::kStochastic);
}

StatusOr<quant::CodecSpec> FromProto(const v1::CodecSpec& spec) {
  quant::CodecSpec s;
  LOWBAND_ASSIGN_OR_RETURN(s.format, quant::ParseFormat(spec.format()));
  s.block_size = spec.block_size();
  LOWBAND_ASSIGN_OR_RETURN(s.scale_type, quant::ParseScaleType(spec.scale_type()));
  s.rounding = spec.stochastic_rounding() ? quant::Rounding::kStochastic : quant::Rounding::kNearest;
  return s;
}

grpc::Status ToGrpc(const Status& status) {
  if (status.ok()) {
    return grpc::Status::OK;
  }
  // lowband's StatusCode values are gRPC's canonical codes.
  return {static_cast<grpc::StatusCode>(status.code()), status.message()};
}

Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) {
    return Status::Ok();
  }
  const int code = status.error_code();
  switch (code) {
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::NOT_FOUND:
    case grpc::StatusCode::ALREADY_EXISTS:
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::ABORTED:
    case grpc::StatusCode::OUT_OF_RANGE:
    case grpc::StatusCode::UNIMPLEMENTED:
    case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DATA_LOSS:
    case grpc::StatusCode::UNAUTHENTICATED:
      return {static_cast<StatusCode>(code), status.error_message()};
    case grpc::StatusCode::CANCELLED:
      return Aborted("call cancelled: " + status.error_message());
    default:
      return Internal("gRPC status " + std::to_string(code) + ": " + status.error_message());
  }
}

}  // namespace lowband::comm
