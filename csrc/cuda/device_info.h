// What the CUDA runtime sees; the kernels of later stages live beside this file.
#pragma once

#include <string>

namespace hassod::cuda {

struct DeviceInfo {
  int device_count = 0;
  int runtime_version = 0;
  int driver_version = 0;
  std::string error;  // empty when the runtime answered
};

DeviceInfo query_devices();

}  // namespace hassod::cuda
