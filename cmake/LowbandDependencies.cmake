# Finds the Debian packages lowband builds against (deploy/install-deps.sh installs them all).
# Required: GoogleTest, CLI11, spdlog, fmt, nlohmann-json, yaml-cpp, Boost, Threads.
# Optional: gRPC/Protobuf (coordinator and split services), LibTorch (training), CUDA (GPU codecs),
# Google Benchmark (micro-benchmarks).
find_package(Threads REQUIRED)
find_package(GTest REQUIRED)
find_package(CLI11 CONFIG REQUIRED)
find_package(fmt CONFIG REQUIRED)
find_package(spdlog CONFIG REQUIRED)
find_package(nlohmann_json CONFIG REQUIRED)
find_package(yaml-cpp CONFIG REQUIRED)
# Asio and Beast are header-only (Boost.System too since 1.69): no compiled Boost component.
find_package(Boost 1.74 REQUIRED)
find_package(benchmark CONFIG QUIET)

find_package(Protobuf QUIET)
find_package(gRPC CONFIG QUIET)
if(gRPC_FOUND AND Protobuf_FOUND)
  message(STATUS "lowband: gRPC ${gRPC_VERSION}, Protobuf ${Protobuf_VERSION}")
else()
  message(WARNING "lowband: gRPC/Protobuf not found; the coordinator and split services are not built "
                  "(run deploy/install-deps.sh)")
endif()

set(LOWBAND_HAVE_TORCH OFF)
if(LOWBAND_WITH_TORCH)
  find_package(Torch QUIET)
  if(Torch_FOUND)
    set(LOWBAND_HAVE_TORCH ON)
    message(STATUS "lowband: LibTorch found (${TORCH_LIBRARIES})")
    # A CUDA build of LibTorch (its torch_cuda target also brings USE_C10D_NCCL): models and
    # optimizer state can live on GPUs and the data-parallel groups use NCCL there.
    set(LOWBAND_HAVE_TORCH_CUDA OFF)
    if(TARGET torch_cuda)
      set(LOWBAND_HAVE_TORCH_CUDA ON)
      message(STATUS "lowband: LibTorch has CUDA: GPU training and NCCL groups are built")
    endif()
  else()
    message(WARNING "lowband: LibTorch not found; training commands are not built (run deploy/install-deps.sh)")
  endif()
endif()

set(LOWBAND_HAVE_CUDA OFF)
if(LOWBAND_WITH_CUDA AND (LOWBAND_SANITIZE OR LOWBAND_FUZZ))
  # The sanitizers do not instrument device code, and no CI machine has a GPU to run it on.
  message(STATUS "lowband: CUDA kernels are not built in sanitizer or fuzz builds")
elseif(LOWBAND_WITH_CUDA)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # Machine code for Ampere and Hopper, and PTX from Turing up that the driver compiles for any
      # newer GPU (Ada, Blackwell). Set CMAKE_CUDA_ARCHITECTURES=native to build for this machine's GPU.
      set(CMAKE_CUDA_ARCHITECTURES "80-real;90-real;75-virtual")
    endif()
    enable_language(CUDA)
    if(NOT DEFINED CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
      # CMake before 3.27 does not know nvcc's C++20 flag (nvcc has had it since CUDA 12.0).
      set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
      set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
    endif()
    set(CMAKE_CUDA_STANDARD 20)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(LOWBAND_HAVE_CUDA ON)
    message(STATUS "lowband: CUDA ${CUDAToolkit_VERSION} (${CMAKE_CUDA_COMPILER}, architectures "
                   "${CMAKE_CUDA_ARCHITECTURES}); GPU codecs are built")
  else()
    message(STATUS "lowband: no CUDA compiler; GPU codecs are not built (their tests skip)")
  endif()
endif()
