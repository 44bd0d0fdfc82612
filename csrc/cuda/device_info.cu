#include <cuda_runtime.h>

#include "cuda/device_info.h"

namespace hassod::cuda {

DeviceInfo query_devices() {
  DeviceInfo info;
  cudaRuntimeGetVersion(&info.runtime_version);
  cudaDriverGetVersion(&info.driver_version);
  const cudaError_t status = cudaGetDeviceCount(&info.device_count);
  if (status != cudaSuccess) {
    info.device_count = 0;
    info.error = cudaGetErrorString(status);
  }
  return info;
}

}  // namespace hassod::cuda
