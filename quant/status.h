// Status and StatusOr: how every fallible lowband call reports failure.
//
// A Status is a copyable value (code + message) that can cross threads; an OK status carries no
// message. Messages say what was expected, what came, and what to do. StatusOr<T> holds either a
// value or a non-OK status. Both are [[nodiscard]]: a dropped error is a compile error under -Werror.
// Thread safety: values, no shared state.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace lowband {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 3,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
  kDeadlineExceeded = 4,
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "INVALID_ARGUMENT: message", or "OK".
  std::string ToString() const;
  // Returns a copy whose message is "context: message" (for adding where an error happened).
  Status WithContext(std::string_view context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status DataLoss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
inline Status FailedPrecondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status OutOfRange(std::string m) { return {StatusCode::kOutOfRange, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
inline Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status Unimplemented(std::string m) { return {StatusCode::kUnimplemented, std::move(m)}; }
inline Status PermissionDenied(std::string m) { return {StatusCode::kPermissionDenied, std::move(m)}; }
inline Status Aborted(std::string m) { return {StatusCode::kAborted, std::move(m)}; }
inline Status ResourceExhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
inline Status DeadlineExceeded(std::string m) { return {StatusCode::kDeadlineExceeded, std::move(m)}; }

template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(Status status) : status_(std::move(status)) {
    assert(!status_.ok());
  }                                                // NOLINT: implicit by design
  StatusOr(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() & {
    assert(ok());
    return *value_;
  }
  const T& value() const& {
    assert(ok());
    return *value_;
  }
  T&& value() && {
    assert(ok());
    return std::move(*value_);
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace lowband

// Returns early from the enclosing function with the status if it is not OK.
#define LOWBAND_RETURN_IF_ERROR(expr)        \
  do {                                       \
    ::lowband::Status _lb_status = (expr);   \
    if (!_lb_status.ok()) return _lb_status; \
  } while (0)

#define LOWBAND_CONCAT_INNER(a, b) a##b
#define LOWBAND_CONCAT(a, b) LOWBAND_CONCAT_INNER(a, b)
// Declares `lhs` from a StatusOr expression, or returns its status.
#define LOWBAND_ASSIGN_OR_RETURN(lhs, expr)                                                       \
  auto LOWBAND_CONCAT(_lb_or_, __LINE__) = (expr);                                                \
  if (!LOWBAND_CONCAT(_lb_or_, __LINE__).ok()) return LOWBAND_CONCAT(_lb_or_, __LINE__).status(); \
  lhs = std::move(LOWBAND_CONCAT(_lb_or_, __LINE__)).value()
