# The Streaming DiLoCo engine, the DDP baseline and the background fragment exchange (worker/engine*,
# collectives*, exchange*), added to lowband_worker. They need the gRPC client (lowband::comm with proto).
if(NOT TARGET lowband::proto)
  message(WARNING "lowband: gRPC not found; the training engine is not built")
  return()
endif()
target_sources(lowband_worker PRIVATE ${CMAKE_CURRENT_LIST_DIR}/engine.cc ${CMAKE_CURRENT_LIST_DIR}/collectives.cc
                                      ${CMAKE_CURRENT_LIST_DIR}/exchange.cc ${CMAKE_CURRENT_LIST_DIR}/fragment_codec.cc)
# quant_cuda is always a target: without CUDA its calls report FailedPrecondition and the fragment codec
# falls back to the CPU codec.
target_link_libraries(lowband_worker PUBLIC lowband::comm lowband::quant PRIVATE lowband::quant_cuda spdlog::spdlog
                                                                                  fmt::fmt)
target_compile_definitions(lowband_worker PUBLIC LOWBAND_HAVE_ENGINE=1)
