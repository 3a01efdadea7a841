# Helpers for declaring lowband's libraries, executables and tests with one set of flags.
#
#   lowband_library(NAME quant SOURCES a.cc b.cc DEPS lowband::x ...)   -> target lowband_quant, alias lowband::quant
#   lowband_test(NAME quant_codec SOURCES t.cc DEPS lowband::quant [LABELS unit] [TIMEOUT 120])
#   lowband_executable(NAME lowband SOURCES main.cc DEPS ...)

set(LOWBAND_WARNINGS -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wcast-align -Wunused
    -Wimplicit-fallthrough)
if(LOWBAND_WERROR)
  list(APPEND LOWBAND_WARNINGS -Werror)
endif()

set(LOWBAND_SAN_FLAGS "")
if(LOWBAND_SANITIZE STREQUAL "address")
  set(LOWBAND_SAN_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  # GCC 12's -Wmaybe-uninitialized gives false positives under ASan (in libstdc++'s <regex>, for one),
  # as GCC's manual warns for sanitizer builds; the plain build keeps the warning.
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    list(APPEND LOWBAND_WARNINGS -Wno-maybe-uninitialized)
  endif()
elseif(LOWBAND_SANITIZE STREQUAL "thread")
  set(LOWBAND_SAN_FLAGS -fsanitize=thread -fno-omit-frame-pointer)
  # GCC 12 warns (-Wtsan) that TSan does not model std::atomic_thread_fence, which Boost.Asio's
  # handler completion uses; Asio's queues are also mutex-protected, and TSan sees those.
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    list(APPEND LOWBAND_WARNINGS -Wno-tsan)
  endif()
elseif(NOT LOWBAND_SANITIZE STREQUAL "")
  message(FATAL_ERROR "LOWBAND_SANITIZE must be '', 'address' or 'thread', got '${LOWBAND_SANITIZE}'")
endif()

if(LOWBAND_FUZZ)
  # Coverage instrumentation for libFuzzer in every lowband target; fuzz executables add -fsanitize=fuzzer.
  list(APPEND LOWBAND_SAN_FLAGS -fsanitize=fuzzer-no-link)
endif()

function(_lowband_flags target)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${LOWBAND_WARNINGS}>
                                           $<$<NOT:$<COMPILE_LANGUAGE:CUDA>>:${LOWBAND_SAN_FLAGS}>)
  # Codecs must give the same bits on every path: no fused multiply-add contraction behind our back.
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-ffp-contract=off>)
  if(LOWBAND_SAN_FLAGS)
    target_link_options(${target} PRIVATE ${LOWBAND_SAN_FLAGS})
  endif()
endfunction()

function(lowband_library)
  cmake_parse_arguments(L "" "NAME" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(lowband_${L_NAME} ${L_SOURCES})
  add_library(lowband::${L_NAME} ALIAS lowband_${L_NAME})
  target_include_directories(lowband_${L_NAME} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(lowband_${L_NAME} PUBLIC ${L_DEPS} PRIVATE ${L_PRIVATE_DEPS})
  _lowband_flags(lowband_${L_NAME})
  if(LOWBAND_SAN_FLAGS)
    target_link_options(lowband_${L_NAME} INTERFACE ${LOWBAND_SAN_FLAGS})
  endif()
endfunction()

function(lowband_executable)
  cmake_parse_arguments(E "" "NAME" "SOURCES;DEPS" ${ARGN})
  add_executable(${E_NAME} ${E_SOURCES})
  target_link_libraries(${E_NAME} PRIVATE ${E_DEPS})
  _lowband_flags(${E_NAME})
endfunction()

function(lowband_test)
  cmake_parse_arguments(T "" "NAME;TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(test_${T_NAME} ${T_SOURCES})
  target_link_libraries(test_${T_NAME} PRIVATE ${T_DEPS} GTest::gtest GTest::gtest_main GTest::gmock)
  _lowband_flags(test_${T_NAME})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  if(LOWBAND_SANITIZE)
    # Sanitized builds run several times slower: three times the time limit.
    math(EXPR T_TIMEOUT "${T_TIMEOUT} * 3")
  endif()
  if(NOT T_LABELS)
    set(T_LABELS unit)
  endif()
  add_test(NAME ${T_NAME} COMMAND test_${T_NAME} --gtest_brief=1)
  set_tests_properties(${T_NAME} PROPERTIES TIMEOUT ${T_TIMEOUT} LABELS "${T_LABELS}"
                       ENVIRONMENT "LOWBAND_BIN=$<TARGET_FILE:lowband>")
endfunction()
